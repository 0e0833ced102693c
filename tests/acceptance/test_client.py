"""ephemera.client.Client against a real `ephemera serve`: records in, library errors out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemera.client import Client, ServerUnreachable
from ephemera.errors import ChecksumMismatch, Forbidden, NotFound, TooLarge, Unauthenticated
from ephemera.importer import Importer, Plan
from ephemera.importer.targets import HttpTarget
from ephemera.models import FollowUp, Imported, ImportOrigin, SessionState, TaskState
from tests.conftest import WITH_SAMPLES_ENV, Server, free_port

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("client") / "data"
    env = {**WITH_SAMPLES_ENV, "EPHEMERA_MAX_UPLOAD_BYTES": str(LIMIT)}
    running = Server(data_dir, env=env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def admin(server: Server) -> Iterator[Client]:
    with Client(server.url, server.admin_key) as client:
        yield client


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
