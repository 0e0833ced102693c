"""Committing a resumable upload, on every blob store: a commit that fails keeps the bytes for
the next attempt, a slow commit keeps its claim, a close is never followed by bytes."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.blobs import artifact_key
from ephemera.errors import BlobNotFound, EphemeraError, NotFound, StorageError
from ephemera.store.resumable import UploadStatus
from ephemera.testing import ManualClock

MiB = 1024 * 1024
# On S3: one 8 MiB part and a tail, so the commit completes a multipart upload.
BODY = b"".join(bytes([n]) * MiB for n in range(9))


@pytest.fixture(params=["local", "memory", "s3"])
def blob_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "s3":
        return str(request.getfixturevalue("s3_url"))
    return {"local": None, "memory": "memory://"}[request.param]


@pytest.fixture
def store(data_dir: Path, blob_url: str | None, clock: ManualClock) -> Iterator[Store]:
    settings = Settings(data_dir=data_dir, blob_url=blob_url, scheduled_cleanup=False)
    with Store.open(settings, clock=clock) as opened:
        clock.catch_up()
        yield opened


def failing_once_in_place(real: Callable[..., Any]) -> Callable[..., Any]:
    """The commit transaction fails once, after the bytes were put at their key (on S3: the
    multipart upload completed): the worst moment."""
    failed: list[bool] = []

    def finalize(*args: Any) -> Any:
        if failed:
            return real(*args)
        failed.append(True)
        *rest, commit_bytes = args

        def commit_then_fail() -> None:
            commit_bytes()
            raise StorageError("database is locked")

        return real(*rest, commit_then_fail)

    return finalize


def sent_whole_but_not_committed(store: Store, monkeypatch: pytest.MonkeyPatch) -> UploadStatus:
    """An upload whose last PATCH recorded every byte, then whose commit failed once."""
    sid = store.create_session(idle_timeout_s=86400).session.id
    upload = store.resumable.create(sid, len(BODY), {"filename": "whole.bin"})
    catalog = store.catalog
    monkeypatch.setattr(catalog, "finalize_upload", failing_once_in_place(catalog.finalize_upload))
    appender = store.resumable.begin_append(sid, upload.id, 0)
    appender.write([BODY])
    with pytest.raises(StorageError):
        appender.finish()
    status = store.resumable.status(sid, upload.id)
    assert (status.offset, status.finished) == (len(BODY), False)
    return status


def test_a_commit_that_failed_once_is_completed_by_the_next_attempt(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = sent_whole_but_not_committed(store, monkeypatch)
    # Nothing is visible meanwhile.
    assert store.list_artifacts(upload.session_id).items == []

    done = store.resumable.finish(upload.session_id, upload.id)  # what a HEAD does
    assert done.finished
    assert done.artifact_id is not None
    assert store.read_artifact(upload.session_id, done.artifact_id) == BODY
    artifact = store.get_artifact(upload.session_id, done.artifact_id)
    assert artifact.sha256 == hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("killed", [False, True], ids=["failed", "killed"])
def test_orphan_cleanup_spares_the_bytes_of_an_open_upload_whose_commit_failed(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, killed: bool
) -> None:
    """A commit that failed (its pending record removed) or whose process was killed in it
    (its pending record left): hours later, still within the upload's life, orphan cleanup
    leaves its bytes, and the client's return completes it."""
    if killed:
        monkeypatch.setattr(store.resumable, "_abandon", lambda row, key: None)
    upload = sent_whole_but_not_committed(store, monkeypatch)
    clock.advance(2 * 3600)
    report = store.cleanup("orphaned", details=True)
    assert report.errors == []
    assert [item.id for item in report.items if upload.id in item.id] == []

    done = store.resumable.finish(upload.session_id, upload.id)
    assert done.artifact_id is not None
    assert store.read_artifact(upload.session_id, done.artifact_id) == BODY


def test_an_expired_upload_whose_commit_failed_leaves_nothing(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.resumable, "_abandon", lambda row, key: None)
    upload = sent_whole_but_not_committed(store, monkeypatch)
    clock.advance(store.settings.tus_upload_ttl_s + 1)
    store.cleanup("expired")
    with pytest.raises(BlobNotFound):
        store.blobs.stat(artifact_key(upload.session_id, upload.id))
    assert store.catalog.artifact_states([upload.session_id])[upload.session_id] == {}


def test_a_terminated_upload_whose_commit_failed_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = sent_whole_but_not_committed(store, monkeypatch)
    store.resumable.terminate(upload.session_id, upload.id)
    with pytest.raises(BlobNotFound):
        store.blobs.stat(artifact_key(upload.session_id, upload.id))
    with pytest.raises(NotFound):
        store.resumable.status(upload.session_id, upload.id)


def test_a_close_during_a_commit_is_never_followed_by_the_bytes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session closes between the gathering of the upload's bytes and their commit: once
    the close returned, no byte of the upload appears at its key, then or later."""
    sid = store.create_session(idle_timeout_s=86400).session.id
    upload = store.resumable.create(sid, len(BODY), {"filename": "late.bin"})
    key = artifact_key(sid, upload.id)
    blobs: Any = store.blobs
    real_assemble = blobs.assemble
    real_finalize = store.catalog.finalize_upload
    seen: list[bool] = []

    def close_first(*args: Any, **kwargs: Any) -> Any:
        assembled = real_assemble(*args, **kwargs)
        store.close_session(sid)  # while the gathered body is hashed, say
        return assembled

    def finalize(*args: Any, **kwargs: Any) -> Any:
        seen.append(has(key))
        return real_finalize(*args, **kwargs)

    def has(key: str) -> bool:
        try:
            store.blobs.stat(key)
        except BlobNotFound:
            return False
        return True

    monkeypatch.setattr(blobs, "assemble", close_first)
    monkeypatch.setattr(store.catalog, "finalize_upload", finalize)
    appender = store.resumable.begin_append(sid, upload.id, 0)
    appender.write([BODY])
    with pytest.raises(EphemeraError):
        appender.finish()
    assert True not in seen
    assert not has(key)


def test_a_slow_commit_keeps_its_claim_and_a_head_meanwhile_tells_the_truth(
    data_dir: Path, blob_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit outlasts the claim timeout (a long re-hash): it heartbeats, so a HEAD
    meanwhile neither takes it over nor undoes it; it answers offset = length, unfinished."""
    settings = Settings(
        data_dir=data_dir, blob_url=blob_url, scheduled_cleanup=False, tus_claim_timeout_s=0.4
    )
    with Store.open(settings) as store:  # the real clock: heartbeats are real time
        sid = store.create_session(idle_timeout_s=86400).session.id
        upload = store.resumable.create(sid, len(BODY), {"filename": "slow.bin"})
        real = store.catalog.finalize_upload
        heads: list[UploadStatus] = []

        def head() -> None:
            heads.append(store.resumable.finish(sid, upload.id))

        def slow(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                time.sleep(1.5)  # several claim timeouts
                asked = threading.Thread(target=head)
                asked.start()
                asked.join(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(store.catalog, "finalize_upload", slow)
        appender = store.resumable.begin_append(sid, upload.id, 0)
        appender.write([BODY])
        done = appender.finish()

        assert [(h.offset, h.finished) for h in heads] == [(len(BODY), False)]
        assert done.artifact_id is not None
        assert store.read_artifact(sid, done.artifact_id) == BODY
