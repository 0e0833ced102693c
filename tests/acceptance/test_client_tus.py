"""The client's uploads over tus against a real `ephemera serve`: chunks with checksums, a
cut connection resumed by the same call, a killed process resumed by the next, asyncio."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest

from ephemera.client import AsyncClient, Client
from ephemera.client.resume import ResumeStore, body_of
from ephemera.client.tus import TusOptions, tus_upload
from ephemera.errors import ChecksumMismatch, NotFound, TooLarge, UploadExpired
from tests.conftest import Server
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LIMIT = 100 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("client-tus") / "data"
    running = Server(data_dir, env={"EPHEMERA_MAX_UPLOAD_BYTES": str(LIMIT)}).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def session(server: Server) -> tuple[str, str]:
    with Client(server.url, server.admin_key) as admin:
        created = admin.create_session()
    return created.session.id, created.token


def random_file(path: Path, size: int, seed: int = 5) -> str:
    """A file of ``size`` random bytes; its sha256."""
    generator, digest = random.Random(seed), hashlib.sha256()
    with path.open("wb") as f:
        for start in range(0, size, 4 * MiB):
            block = generator.randbytes(min(4 * MiB, size - start))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


class Recorded(httpx2.HTTPTransport):
    """A real transport that notes each request (method, Upload-Offset, Upload-Checksum)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.urls: list[str] = []
        self.answered_offsets: list[str | None] = []  # each answer's Upload-Offset

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        headers = request.headers
        self.urls.append(str(request.url))
        entry = (request.method, headers.get("upload-offset"), headers.get("upload-checksum"))
        self.requests.append(entry)
        response = super().handle_request(request)
        self.answered_offsets.append(response.headers.get("upload-offset"))
        return response

    def methods(self) -> list[str]:
        return [method for method, _offset, _checksum in self.requests]

    def patch_offsets(self) -> list[int]:
        return [int(offset or -1) for method, offset, _ in self.requests if method == "PATCH"]


class Proxy:
    """A TCP proxy to the server that counts the bytes clients send through it, can cut the
    connection that carries byte ``cut_after`` (once), and can hold the first ``slow_for``
    bytes to a rate."""

    def __init__(
        self,
        port: int,
        cut_after: int | None = None,
        bytes_per_s: float = 0,
        slow_for: float = float("inf"),
    ) -> None:
        self.upstream_port = port
        self.cut_after = cut_after
        self.bytes_per_s = bytes_per_s
        self.slow_for = slow_for
        self.sent = 0  # client-to-server bytes forwarded
        self.by_connection: list[int] = []  # the same, per connection in the order accepted
        self.open_connections = 0
        self.sent_at_cut: int | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            pair = (client, upstream)
            with self._lock:
                self.by_connection.append(0)
                self.open_connections += 1
                number = len(self.by_connection) - 1
            threading.Thread(
                target=self._pump, args=(client, upstream, pair, number), daemon=True
            ).start()
            threading.Thread(target=self._back, args=(upstream, client), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, ...], number: int
    ) -> None:
        try:
            while data := src.recv(256 * 1024):
                with self._lock:
                    if self.cut_after is not None and self.sent + len(data) > self.cut_after:
                        self.cut_after, self.sent_at_cut = None, self.sent
                        for sock in pair:
                            sock.shutdown(socket.SHUT_RDWR)
                            sock.close()
                        return
                    self.sent += len(data)
                    self.by_connection[number] += len(data)
                dst.sendall(data)
                if self.bytes_per_s and self.sent < self.slow_for:
                    time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            for sock in pair:
                sock.close()
            with self._lock:
                self.open_connections -= 1

    @staticmethod
    def _back(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(256 * 1024):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()


def test_a_64_mib_file_goes_over_tus_in_checksummed_chunks_and_arrives_whole(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    source = tmp_path / "scan.tiff"
    sha256 = random_file(source, 64 * MiB)
    transport = Recorded()
    with Client(server.url, token, transport=transport) as client:
        artifact = client.upload_artifact(sid, source, kind="input", resumable=True)
        assert client.get_artifact(sid, artifact.id) == artifact

    assert (artifact.name, artifact.size, artifact.sha256) == ("scan.tiff", 64 * MiB, sha256)
    assert artifact.content_type == "image/tiff"
    # One creation, eight PATCHes of 8 MiB from the offsets in order, each with its
    # checksum, then the artifact fetched.
    assert transport.methods() == ["POST"] + ["PATCH"] * 8 + ["GET", "GET"]
    assert transport.patch_offsets() == [i * 8 * MiB for i in range(8)]
    with source.open("rb") as f:
        for _method, offset, checksum in transport.requests[1:9]:
            f.seek(int(offset or 0))
            chunk_sha256 = hashlib.sha256(f.read(8 * MiB)).digest()
            assert checksum == "sha256 " + base64.b64encode(chunk_sha256).decode()


def test_a_connection_cut_mid_patch_is_resumed_by_the_same_call_from_the_servers_offset(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    size = 40 * MiB
    source = tmp_path / "capture.bin"
    sha256 = random_file(source, size)
    # Cut inside the third PATCH (16 to 24 MiB): the first two are acknowledged.
    proxy = Proxy(server.port, cut_after=20 * MiB)
    transport = Recorded()
    try:
        with Client(proxy.url, token, transport=transport) as client:
            artifact = client.upload_artifact(sid, source, resumable=True)
    finally:
        proxy.close()

    assert (artifact.size, artifact.sha256) == (size, sha256)
    assert proxy.sent_at_cut is not None, "the connection was never cut"
    # The cut PATCH at 16 MiB, then HEAD for the true offset, then PATCH from there.
    assert transport.methods()[:5] == ["POST", "PATCH", "PATCH", "PATCH", "HEAD"]
    assert transport.patch_offsets() == [0, 8 * MiB, 16 * MiB, 16 * MiB, 24 * MiB, 32 * MiB]
    # Only what the server lacked went through again (and a few request headers).
    resent = proxy.sent - proxy.sent_at_cut
    assert size - 16 * MiB <= resent < size - 16 * MiB + 64 * 1024


def test_a_one_pass_source_cut_mid_patch_is_resumed_from_the_chunk_it_still_holds(
    server: Server, session: tuple[str, str]
) -> None:
    sid, token = session
    data = random.Random(9).randbytes(20 * MiB + 123)

    def chunks() -> Iterator[bytes]:  # read once, like a pipe
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    proxy = Proxy(server.port, cut_after=6 * MiB)
    transport = Recorded()
    try:
        with Client(proxy.url, token, transport=transport) as client:
            artifact = client.upload_artifact(
                sid, chunks(), name="pipe.bin", resumable=True, chunk_size=4 * MiB
            )
    finally:
        proxy.close()

    assert (artifact.size, artifact.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert transport.patch_offsets() == [0, 4 * MiB, 4 * MiB, 8 * MiB, 12 * MiB, 16 * MiB, 20 * MiB]


KILLED_UPLOADER = """
import sys
from ephemera.client import Client
url, token, sid, path, store = sys.argv[1:]
with Client(url, token) as client:
    client.upload_artifact(sid, path, resumable=True, chunk_size=4 * 1024 * 1024,
                           resume_store=store)
print("finished")
"""


def test_a_new_client_with_the_same_resume_store_continues_an_upload_left_by_a_killed_process(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    size = 48 * MiB
    source = tmp_path / "night-run.bin"
    sha256 = random_file(source, size)
    store = tmp_path / "uploads.json"
    proxy = Proxy(server.port, bytes_per_s=12 * MiB)  # slow enough to be killed part-way
    try:
        first = subprocess.Popen(
            [sys.executable, "-c", KILLED_UPLOADER, proxy.url, token, sid, str(source), str(store)]
        )
        try:
            wait_for(lambda: store.exists() and proxy.sent >= 12 * MiB, 30, "12 MiB sent")
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait(10)
        assert first.returncode == -signal.SIGKILL
        # What the killed process had handed to the network still arrives: then it is over.
        wait_for(lambda: proxy.open_connections == 0, 30, "the killed process's connections")
        [url] = [entry["url"] for entry in json.loads(store.read_text()).values()]
        offset = int(
            httpx2.head(
                url, headers={"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
            ).headers["Upload-Offset"]
        )
        assert 8 * MiB <= offset < size, "not killed part-way"

        proxy.bytes_per_s, first_connections = 0, len(proxy.by_connection)
        transport = Recorded()
        with Client(proxy.url, token, transport=transport) as client:
            artifact = client.upload_artifact(
                sid, source, resumable=True, chunk_size=4 * MiB, resume_store=store
            )
    finally:
        proxy.close()

    assert (artifact.size, artifact.sha256) == (size, sha256)
    # No new upload: the stored one's offset asked (what the killed process's last bytes
    # completed may have come in since), then only the rest sent.
    assert transport.methods()[0] == "HEAD"
    resumed_at = int(transport.answered_offsets[0] or -1)
    assert offset <= resumed_at < size
    assert "POST" not in transport.methods()
    assert transport.patch_offsets()[0] == resumed_at
    resent = sum(proxy.by_connection[first_connections:])
    assert size - resumed_at <= resent < size - resumed_at + 64 * 1024, transport.methods()
    assert json.loads(store.read_text()) == {}, "a finished upload stays in the store"


def test_the_async_client_uploads_over_tus_from_a_file_and_from_an_async_source(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    source = tmp_path / "frames.bin"
    sha256 = random_file(source, 12 * MiB)
    data = random.Random(3).randbytes(9 * MiB)

    async def produced() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MiB):
            await asyncio.sleep(0)
            yield data[start : start + MiB]

    class AsyncRecorded(httpx2.AsyncHTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            self.methods: list[str] = []

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            self.methods.append(request.method)
            return await super().handle_async_request(request)

    async def both() -> tuple[object, object, list[str]]:
        transport = AsyncRecorded()
        async with AsyncClient(server.url, token, transport=transport) as client:
            from_file = await client.upload_artifact(
                sid, source, resumable=True, chunk_size=4 * MiB
            )
            from_stream = await client.upload_artifact(
                sid, produced(), name="stream.bin", resumable=True, chunk_size=4 * MiB
            )
        return from_file, from_stream, transport.methods

    from_file, from_stream, methods = asyncio.run(both())
    assert (from_file.size, from_file.sha256) == (12 * MiB, sha256)  # type: ignore[attr-defined]
    assert (from_stream.size, from_stream.sha256) == (  # type: ignore[attr-defined]
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert methods == ["POST", "PATCH", "PATCH", "PATCH", "GET"] * 2


def test_refusals_raise_the_library_errors_and_leave_nothing(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    big = tmp_path / "too-big.bin"
    with big.open("wb") as f:
        f.truncate(LIMIT + 1)  # sparse: nothing of it is read before the refusal
    with Client(server.url, token) as client:
        with pytest.raises(TooLarge):
            client.upload_artifact(sid, big, resumable=True, sha256="0" * 64)
        with pytest.raises(ChecksumMismatch):
            client.upload_artifact(sid, b"x" * MiB, name="a.bin", resumable=True, sha256="0" * 64)
        with pytest.raises(NotFound):
            client.upload_artifact("no-such-session", b"x", name="a.bin", resumable=True)
        assert list(client.list_artifacts(sid)) == []


def test_a_stored_upload_the_server_no_longer_has_is_started_anew(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    source = tmp_path / "again.bin"
    sha256 = random_file(source, 3 * MiB)
    store = ResumeStore(tmp_path / "uploads.json")
    upload = tus_upload(
        f"{server.api}",
        sid,
        body_of(source, None),
        TusOptions(store=store),
        name=None,
        kind="input",
        content_type=None,
        storage=None,
        expires_in_s=None,
    )
    assert upload.key is not None
    upload.body.close()
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    created = httpx2.post(
        upload.endpoint, headers={**auth, "Upload-Length": "1", "Upload-Metadata": upload.metadata}
    )
    # The server answers a Location relative to itself, as tus allows.
    url = str(httpx2.URL(upload.endpoint).join(created.headers["Location"]))
    assert httpx2.delete(url, headers=auth).status_code == 204
    store.put(upload.key, url)  # as a run before the termination left it

    transport = Recorded()
    with Client(server.url, token, transport=transport) as client:
        artifact = client.upload_artifact(sid, source, resumable=True, resume_store=store)

    assert (artifact.size, artifact.sha256) == (3 * MiB, sha256)
    assert transport.methods() == ["HEAD", "POST", "PATCH", "GET"]
    assert store.get(upload.key) is None


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("client-tus-ttl") / "data"
    running = Server(data_dir, env={"EPHEMERA_TUS_UPLOAD_TTL_S": "2"}).start()
    try:
        yield running
    finally:
        running.stop()


def test_an_upload_that_expires_while_sent_is_started_over_once(
    short_lived: Server, tmp_path: Path
) -> None:
    with Client(short_lived.url, short_lived.admin_key) as admin:
        sid = admin.create_session().session.id
    source = tmp_path / "slow.bin"
    sha256 = random_file(source, 6 * MiB)
    # The first attempt crawls past the upload's 2 s of life; the second goes at full speed.
    proxy = Proxy(short_lived.port, bytes_per_s=MiB, slow_for=3 * MiB)
    transport = Recorded()
    try:
        with Client(proxy.url, short_lived.admin_key, transport=transport) as client:
            artifact = client.upload_artifact(sid, source, resumable=True, chunk_size=MiB)
            # Slow all the way: the second attempt expires too, and the error is raised.
            proxy.slow_for = float("inf")
            with pytest.raises(UploadExpired):
                client.upload_artifact(
                    sid, source, name="never.bin", resumable=True, chunk_size=MiB
                )
            assert [a.name for a in client.list_artifacts(sid)] == ["slow.bin"]
    finally:
        proxy.close()

    assert (artifact.size, artifact.sha256) == (6 * MiB, sha256)
    first_run = transport.methods()[: transport.methods().index("GET") + 1]
    assert first_run.count("POST") == 2
    assert first_run[-2:] == ["PATCH", "GET"]


class Boom(Exception):
    pass


def test_resumable_none_goes_over_tus_from_the_threshold_when_the_size_is_known(
    server: Server, session: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, token = session
    monkeypatch.setattr("ephemera.client.tus.TUS_THRESHOLD", MiB)
    transport = Recorded()
    with Client(server.url, token, transport=transport) as client:
        client.upload_artifact(sid, b"t" * MiB, name="at.bin")
        assert transport.methods() == ["POST", "PATCH", "GET"]
        assert transport.urls[0].endswith(f"/sessions/{sid}/uploads")
        transport.requests.clear()
        transport.urls.clear()
        client.upload_artifact(sid, b"t" * (MiB - 1), name="below.bin")
        client.upload_artifact(sid, iter([b"t" * MiB, b"t"]), name="unknown-size.bin")
        client.upload_artifact(sid, b"t" * MiB, name="refused.bin", resumable=False)
        assert transport.methods() == ["POST"] * 3
        assert all(url.split("?")[0].endswith("/artifacts") for url in transport.urls)


def test_empty_sources_complete_over_tus(server: Server, session: tuple[str, str]) -> None:
    sid, token = session
    empty_sha256 = hashlib.sha256(b"").hexdigest()
    with Client(server.url, token) as client:
        known = client.upload_artifact(sid, b"", name="known.bin", resumable=True)
        deferred = client.upload_artifact(sid, iter([]), name="deferred.bin", resumable=True)
    assert (known.size, known.sha256) == (0, empty_sha256)
    assert (deferred.size, deferred.sha256) == (0, empty_sha256)


def test_a_source_that_fails_ends_its_upload_on_the_server(
    server: Server, session: tuple[str, str]
) -> None:
    sid, token = session

    def chunks_then_fail() -> Iterator[bytes]:
        yield b"x" * (2 * MiB)
        raise Boom

    transport = Recorded()
    with Client(server.url, token, transport=transport) as client:
        with pytest.raises(Boom):
            client.upload_artifact(
                sid, chunks_then_fail(), name="a.bin", resumable=True, chunk_size=MiB
            )
        assert list(client.list_artifacts(sid)) == []
    assert transport.methods() == ["POST", "PATCH", "DELETE", "GET"]
    upload_url = transport.urls[2]
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    assert httpx2.head(upload_url, headers=auth).status_code == 404
