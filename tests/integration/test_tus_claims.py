"""One writer per resumable upload, on every blob store: a writer that lost its claim (and
goes on writing) never changes a byte the next writer relies on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.errors import Conflict, Locked
from ephemera.store.resumable import Appender
from ephemera.testing import ManualClock

MiB = 1024 * 1024


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, data_dir: Path, clock: ManualClock) -> Iterator[Store]:
    blob_url = {"local": None, "memory": "memory://"}.get(request.param)
    if request.param == "s3":
        blob_url = str(request.getfixturevalue("s3_url"))
    with Store.open(Settings(data_dir=data_dir, blob_url=blob_url), clock=clock) as opened:
        clock.catch_up()
        yield opened


def write_and_finish(appender: Appender, data: bytes) -> None:
    appender.write([data])
    appender.finish()


def test_a_writer_that_lost_its_claim_changes_nothing_the_next_one_relies_on(
    store: Store, clock: ManualClock
) -> None:
    sid = store.create_session(idle_timeout_s=86400).session.id
    resumable = store.resumable
    upload = resumable.create(sid, 4 * MiB, {"filename": "claimed.bin"})

    first = resumable.begin_append(sid, upload.id, 0)
    first.write([b"x" * MiB])
    assert first.finish().offset == MiB

    # A writer that continues the upload, then goes silent past the claim timeout...
    stuck = resumable.begin_append(sid, upload.id, MiB)
    stuck.write([b"s" * MiB])
    clock.advance(store.settings.tus_claim_timeout_s + 1)
    # ...is taken over: the next PATCH does not wait for it forever.
    taker = resumable.begin_append(sid, upload.id, MiB)
    taker.write([b"b" * 2 * MiB])
    # The old writer wakes up and writes on: nothing of it may count or land anywhere.
    with pytest.raises(Locked):
        write_and_finish(stuck, b"S" * MiB)
    stuck.close()
    taker.write([b"b" * MiB])
    done = taker.finish()

    expected = b"x" * MiB + b"b" * 3 * MiB
    assert done.offset == 4 * MiB
    assert done.artifact_id is not None
    artifact = store.get_artifact(sid, done.artifact_id)
    assert artifact.sha256 == hashlib.sha256(expected).hexdigest()
    assert store.read_artifact(sid, done.artifact_id) == expected
    # Finished: every later PATCH is refused, and changes nothing.
    with pytest.raises(Conflict):
        resumable.begin_append(sid, upload.id, 4 * MiB)
    assert store.read_artifact(sid, done.artifact_id) == expected


def test_a_live_writer_keeps_its_upload(store: Store) -> None:
    sid = store.create_session(idle_timeout_s=86400).session.id
    upload = store.resumable.create(sid, MiB, {"filename": "busy.bin"})
    holder = store.resumable.begin_append(sid, upload.id, 0)
    holder.write([b"h" * 1000])
    store.settings.tus_claim_timeout_s = 0.2  # wait briefly: the holder stays live meanwhile
    with pytest.raises(Locked):
        store.resumable.begin_append(sid, upload.id, 0)
    holder.write([b"h" * (MiB - 1000)])
    assert holder.finish().artifact_id is not None


def test_a_stale_writer_is_never_continued_after_a_takeover_that_failed(
    store: Store, clock: ManualClock
) -> None:
    """A request takes over a stale claim, fails before writing a byte (a wrong offset) and
    lets go cleanly: the next writer must still not continue the stale writer's piece,
    which that writer may go on writing, before and after the commit."""
    sid = store.create_session(idle_timeout_s=86400).session.id
    resumable = store.resumable
    upload = resumable.create(sid, 4 * MiB, {"filename": "laundered.bin"})

    stuck = resumable.begin_append(sid, upload.id, 0)
    stuck.write([b"a" * MiB])
    stuck._record(final=True)  # a checkpoint, as every 32 MiB of a long body
    stuck.write([b"a" * MiB])  # then more of its body, unrecorded
    clock.advance(store.settings.tus_claim_timeout_s + 1)
    with pytest.raises(Conflict):
        resumable.begin_append(sid, upload.id, 0)  # takes over, then 409, released cleanly

    resumer = resumable.begin_append(sid, upload.id, MiB)
    resumer.write([b"c" * 2 * MiB])
    stuck._beat -= 2  # the stale writer's body flows again: its heartbeat is due
    with pytest.raises(Locked):
        stuck.write([b"A" * MiB])
    resumer.write([b"c" * MiB])
    done = resumer.finish()
    assert done.artifact_id is not None

    expected = b"a" * MiB + b"c" * 3 * MiB
    assert store.read_artifact(sid, done.artifact_id) == expected
    assert store.get_artifact(sid, done.artifact_id).sha256 == hashlib.sha256(expected).hexdigest()
    # After the commit, the stale writer's open piece is still nothing the artifact holds.
    stuck._writer.write(b"Z" * 1000)
    stuck.close()
    assert store.read_artifact(sid, done.artifact_id) == expected


def test_an_uploads_staging_folder_is_durable_before_its_first_checkpoint(
    data_dir: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss after an offset was recorded must not lose the folder holding the bytes:
    its entry in staging is synced when it is created."""
    import ephemera.blobs.local_resumable as local_resumable
    from ephemera import fsutil

    synced: list[Path] = []
    real = fsutil.fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(local_resumable, "fsync_dir", fsync_dir)
    with Store.open(Settings(data_dir=data_dir), clock=clock) as store:
        sid = store.create_session(idle_timeout_s=86400).session.id
        upload = store.resumable.create(sid, 10, {"filename": "durable.bin"})
        appender = store.resumable.begin_append(sid, upload.id, 0)
        folder = local_resumable.upload_dir(store.blobs, upload.id)  # type: ignore[arg-type]
        assert folder.parent in synced
        appender.write([b"d" * 5])
        assert appender.finish().offset == 5
