"""ephemera.client.Client against a real `ephemera serve`: records in, library errors out."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ephemera.client import Client, ServerUnreachable, WaitTimeout
from ephemera.errors import (
    ChecksumMismatch,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
    Unauthenticated,
)
from ephemera.importer import Importer, Plan
from ephemera.importer.targets import HttpTarget
from ephemera.models import FollowUp, Imported, ImportOrigin, SessionState, TaskState
from tests.conftest import WITH_SAMPLES_ENV, Server, free_port, serving

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024
EXTERNAL = "copy-ext"  # run by the test itself, through the worker API


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("client") / "data"
    env = {
        **WITH_SAMPLES_ENV,
        "EPHEMERA_MAX_UPLOAD_BYTES": str(LIMIT),
        "EPHEMERA_EXTERNAL_PROCESSORS": json.dumps([EXTERNAL]),
    }
    with serving(data_dir, env) as running:
        yield running


class Boom(Exception):
    pass


def chunks_then_fail() -> Iterator[bytes]:
    yield b"x" * 100_000
    raise Boom


def test_sessions_and_uploads_round_trip_as_records(server: Server, admin: Client) -> None:
    created = admin.create_session(label="cam", idle_timeout_s=600)
    assert created.session.label == "cam"
    assert created.session.idle_timeout_s == 600
    with Client(server.url, created.token) as own:
        session = own.get_session(created.session.id)
        assert session.state is SessionState.OPEN
        data = os.urandom(300_000)
        path = server.data_dir.parent / "upload.png"
        path.write_bytes(data)
        with path.open("rb") as f:
            artifact = own.upload_artifact(
                session.id, f, name="a.png", sha256=hashlib.sha256(data).hexdigest()
            )
        assert (artifact.size, artifact.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert artifact.content_type == "image/png"
        assert [a.id for a in own.list_artifacts(session.id)] == [artifact.id]


def test_error_answers_raise_the_library_errors_and_store_nothing(
    server: Server, admin: Client
) -> None:
    created = admin.create_session()
    sid = created.session.id
    with pytest.raises(ChecksumMismatch):
        admin.upload_artifact(sid, b"data", name="a.bin", sha256="0" * 64)
    with pytest.raises(TooLarge):
        admin.upload_artifact(sid, iter([b"x" * LIMIT, b"x"]), name="big.bin")
    with Client(server.url, "eps_wrong") as wrong, pytest.raises(NotFound):
        wrong.get_session(sid)
    with Client(server.url, "epa_not-a-key") as bad_key, pytest.raises(Unauthenticated):
        bad_key.get_session(sid)
    with Client(server.url, created.token) as own, pytest.raises(Forbidden):
        own.create_session()
    assert list(admin.list_artifacts(sid)) == []


def test_an_exception_raised_by_the_data_aborts_the_upload(admin: Client) -> None:
    sid = admin.create_session().session.id
    origin = ImportOrigin("host:/x", "a.bin", 100_001, 1)
    with pytest.raises(Boom):
        admin.upload_artifact(sid, chunks_then_fail(), name="a.bin")
    with pytest.raises(Boom):
        admin.import_file(sid, chunks_then_fail(), origin=origin, name="a.bin")
    assert list(admin.list_artifacts(sid)) == []
    assert list(admin.list_imports(sid)) == []


def test_imports_once_follow_ups_and_listing_across_pages(admin: Client) -> None:
    sid = admin.create_session().session.id
    origins = [ImportOrigin("host:/cam", f"d/{i}.txt", 2, 1000 + i) for i in range(5)]
    for origin in origins:
        first = admin.import_file(sid, b"ab", origin=origin, name="f.txt")
        assert first.created
    # The ledger holds it: the existing entry, no second artifact (HTTP/1.1 still sends the
    # body; the importer sends nothing for files its loaded ledger lists).
    again = admin.import_file(sid, b"ab", origin=origins[0], name="f.txt")
    assert not again.created
    assert len(list(admin.list_artifacts(sid))) == 5

    listed = list(admin.list_imports(sid, "host:/cam", page_size=2))
    assert [e.origin for e in listed] == origins
    assert list(admin.list_imports(sid, "elsewhere")) == []

    then = FollowUp("sample-upper", {"suffix": ".up"})
    entry = admin.follow_up_import(sid, listed[0].artifact_id, then)
    assert entry.task_id is not None
    assert admin.follow_up_import(sid, listed[0].artifact_id, then).task_id == entry.task_id
    task = admin.get_task(sid, entry.task_id)
    assert task.processor == "sample-upper"
    assert task.state in (TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCEEDED)
    submitted = admin.submit_task(sid, "sample-upper", [listed[1].artifact_id])
    assert [i.artifact_id for i in submitted.inputs] == [listed[1].artifact_id]

    with_then = admin.import_file(
        sid, b"cd", origin=ImportOrigin("host:/cam", "e.txt", 2, 7), name="e.txt", then=then
    )
    assert with_then.entry.task_id is not None
    assert admin.get_task(sid, with_then.entry.task_id).params == {"suffix": ".up"}


class CorruptingTarget(HttpTarget):
    """The HTTP path with a transport that flips bytes on the way to the server."""

    def put(self, session_id: str, data: Iterable[bytes], **kwargs: Any) -> Imported:
        flipped = (chunk.replace(b"photo", b"PHOTO") for chunk in data)
        return super().put(session_id, flipped, **kwargs)


def test_an_import_corrupted_in_transit_is_refused_by_the_server_and_nothing_stored(
    tmp_path: Path, admin: Client
) -> None:
    sid = admin.create_session().session.id
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"a photo" * 1000)
    (root / "b.png").write_bytes(b"an image" * 1000)
    plan = Plan(root=root, session_id=sid, source="host:/photos")

    summary = Importer(CorruptingTarget(admin), plan).run()

    assert (summary.imported, summary.failed) == (1, 1)
    [error] = summary.errors
    assert error.path == "a.png"
    assert "sha256 mismatch" in error.error
    assert error.error.endswith("nothing stored")
    assert [a.name for a in admin.list_artifacts(sid)] == ["b.png"]
    assert [e.origin.path for e in admin.list_imports(sid)] == ["b.png"]


def test_a_server_that_is_not_there_is_server_unreachable(tmp_path: Path) -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "t") as client, pytest.raises(ServerUnreachable):
        client.get_session("s")


class Flip(httpx2.SyncByteStream):
    """A body stream with the first byte of its first chunk changed: corruption in transit
    that TCP did not catch (a proxy, a broken NIC offload)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        first = True
        for chunk in self.stream:
            if first and chunk:
                chunk, first = bytes([chunk[0] ^ 1]) + chunk[1:], False
            yield chunk

    def close(self) -> None:
        self.stream.close()


class Corrupting(httpx2.HTTPTransport):
    """The real transport, flipping a byte of every upload or of every download."""

    def __init__(self, *, uploads: bool) -> None:
        super().__init__()
        self.uploads = uploads

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.uploads and request.method == "POST":
            request.stream = Flip(request.stream)
        response = super().handle_request(request)
        if not self.uploads and request.url.path.endswith("/content"):
            response.stream = Flip(response.stream)
        return response


class OneWay(io.RawIOBase):
    """A pipe-like file: readable once, not seekable."""

    def __init__(self, data: bytes) -> None:
        self.left = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self.left), 7000)
        buffer[:n], self.left = self.left[:n], self.left[n:]
        return n


def test_every_kind_of_source_uploads_with_its_sha256_and_downloads_verified(
    tmp_path: Path, admin: Client
) -> None:
    sid = admin.create_session().session.id
    data = os.urandom(3 * 1024 * 1024 // 4)  # several chunks
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    with source.open("rb") as seekable:
        uploaded = [
            admin.upload_artifact(sid, source),  # a path brings its name
            admin.upload_artifact(sid, str(source), name="by-str.bin"),
            admin.upload_artifact(sid, seekable, name="file.bin"),
            admin.upload_artifact(sid, data, name="bytes.bin"),
            admin.upload_artifact(sid, OneWay(data), name="pipe.bin"),
            admin.upload_artifact(sid, iter([data[:10], data[10:]]), name="chunks.bin"),
        ]
    sha = hashlib.sha256(data).hexdigest()
    assert {(a.size, a.sha256) for a in uploaded} == {(len(data), sha)}
    assert uploaded[0].name == "source.bin"
    for artifact in uploaded:
        target = tmp_path / f"copy-{artifact.name}"
        assert admin.download_artifact(sid, artifact.id, target) == target
        assert target.read_bytes() == data
        assert b"".join(admin.iter_artifact(sid, artifact.id)) == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bytes_changed_on_the_way_up_are_refused_and_nothing_is_stored(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    sid = admin.create_session().session.id
    source = tmp_path / "a.bin"
    source.write_bytes(b"exact bytes" * 1000)
    with Client(server.url, server.admin_key, transport=Corrupting(uploads=True)) as bad:
        # Hashed before sending: the server checks the sha256 and stores nothing.
        with pytest.raises(ChecksumMismatch):
            bad.upload_artifact(sid, source)
        with pytest.raises(ChecksumMismatch):
            bad.upload_artifact(sid, b"exact bytes", name="b.bin")
        # A one-pass source is hashed on the way: what the server recorded is not what left.
        with pytest.raises(ChecksumMismatch):
            bad.upload_artifact(sid, iter([b"exact bytes"]), name="c.bin")
        # ... and the client deleted what the server stored.
    assert list(admin.list_artifacts(sid)) == []


def test_bytes_changed_on_the_way_down_raise_and_leave_no_file(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    sid = admin.create_session().session.id
    artifact = admin.upload_artifact(sid, os.urandom(900_000), name="a.bin")
    target = tmp_path / "copy.bin"
    target.write_bytes(b"what was there before")
    with Client(server.url, server.admin_key, transport=Corrupting(uploads=False)) as bad:
        with pytest.raises(ChecksumMismatch):
            bad.download_artifact(sid, artifact.id, target)
        with pytest.raises(ChecksumMismatch):
            bad.download_artifact(sid, artifact.id, tmp_path / "new.bin")
        received: list[bytes] = []
        with pytest.raises(ChecksumMismatch):
            received.extend(bad.iter_artifact(sid, artifact.id))
        # Chunks came before the last, which was held back: never the complete wrong body.
        assert 0 < sum(map(len, received)) < artifact.size
    assert target.read_bytes() == b"what was there before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin"]


def test_sessions_leases_tasks_and_administration_through_the_client(
    server: Server, admin: Client
) -> None:
    created = admin.create_session(label="before", idle_timeout_s=600)
    sid = created.session.id
    with Client(server.url, created.token) as own:
        changed = own.update_session(sid, label="after", metadata={"line": 3}, max_age_s=None)
        assert (changed.label, changed.metadata, changed.idle_timeout_s) == (
            "after",
            {"line": 3},
            600,
        )
        artifact = own.upload_artifact(sid, b"abc", name="a.txt")
        assert own.get_artifact(sid, artifact.id) == artifact
        until = datetime.now(UTC) + timedelta(days=1)
        assert own.retain_artifact(sid, artifact.id, until).retain_until == until
        lease = own.take_lease(sid, ttl_s=60, artifact_ids=[artifact.id], holder="me")
        assert own.get_lease(sid, lease.id) == lease
        assert own.renew_lease(sid, lease.id, ttl_s=120).expires_at > lease.expires_at
        assert own.list_leases(sid) == [own.get_lease(sid, lease.id)]
        with pytest.raises(Conflict):
            own.delete_artifact(sid, artifact.id)
        own.release_lease(sid, lease.id)
        assert own.delete_artifact(sid, artifact.id).id == artifact.id

        # A task with progress, waited for; another cancelled.
        steps: list[tuple[str, int]] = []
        task = own.submit_task(sid, "sample-sleep", params={"seconds": 1.5})
        done = own.wait_task(
            sid,
            task.id,
            timeout_s=30,
            poll_s=0.1,
            on_progress=lambda t: steps.append((t.state, t.progress_done)),
        )
        assert done.state is TaskState.SUCCEEDED
        assert steps[-1] == ("succeeded", 1000)
        assert len(steps) >= 3  # running steps seen between pending and the end
        slow = own.submit_task(sid, "sample-sleep", params={"seconds": 60})
        with pytest.raises(WaitTimeout):
            own.wait_task(sid, slow.id, timeout_s=0.3, poll_s=0.1)
        assert own.cancel_task(sid, slow.id).state is TaskState.CANCELLED
        assert {t.id for t in own.list_tasks(sid)} == {task.id, slow.id}
        assert [t.id for t in own.list_tasks(sid, state="cancelled", page_size=1)] == [slow.id]
        assert "sample-sleep" in {p["name"] for p in own.list_processors()}

    # Administration.
    assert sid in {s.session.id for s in admin.list_all_sessions(page_size=2)}
    dry = admin.cleanup("all", dry_run=True, details=True)
    assert dry["dry_run"]
    assert "totals" in dry
    assert admin.cleanup_session(sid, dry_run=True)["deleted_count"] == 1
    assert "sessions" in admin.cleanup_stats()
    assert admin.verify(session_id=sid)["checked_count"] >= 1  # the task's output
    assert any(e.target == sid for e in admin.audit_log(action="session.create"))
    report = admin.close_session(sid)
    assert report.closed
    with pytest.raises(NotFound):
        admin.get_session(sid)
    assert (admin.health(), admin.ready()) == ("ok", "ready")
    assert "ephemera_" in admin.metrics()


def test_an_external_worker_through_the_client(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    created = admin.create_session()
    sid = created.session.id
    source = admin.upload_artifact(sid, b"copy me", name="in.txt")
    task = admin.submit_task(sid, EXTERNAL, [source.id])
    claim = admin.claim_task("test-worker", [EXTERNAL], wait_s=5)
    assert claim is not None
    assert claim.task.id == task.id
    assert [a.id for a in claim.inputs] == [source.id]
    assert admin.heartbeat(task.id, claim.claim_id, progress=(1, 2)) > datetime.now(UTC)
    copied = admin.download_task_input(task.id, claim.claim_id, source.id, tmp_path / "in")
    output = admin.upload_task_output(task.id, claim.claim_id, copied, name="out.txt")
    finished = admin.complete_task(task.id, claim.claim_id, {"copied": True})
    assert finished.state is TaskState.SUCCEEDED
    assert [o.artifact_id for o in finished.outputs] == [output.id]
    assert admin.read_artifact(sid, output.id) == b"copy me"
    assert admin.claim_task("test-worker", [EXTERNAL]) is None  # nothing waits

    again = admin.submit_task(sid, EXTERNAL, [source.id], max_attempts=1)
    claim = admin.claim_task("test-worker", [EXTERNAL], wait_s=5)
    assert claim is not None
    failed = admin.fail_task(again.id, claim.claim_id, "no disk", retry=True)
    assert (failed.state, failed.error) == (TaskState.FAILED, "no disk")
    with pytest.raises(Conflict):
        admin.complete_task(again.id, claim.claim_id)
