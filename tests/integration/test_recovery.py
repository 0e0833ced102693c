"""Recovery at start-up: interrupted closes and deletes finished in pages, a blob that will
not go reported and left for the next run, never fatal."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from ephemera import Store
from ephemera.blobs import BlobStore, artifact_key, session_prefix
from ephemera.errors import StorageError
from ephemera.hooks import ArtifactDeleted, SessionClosed
from ephemera.recovery import recover


class Refusing:
    """A blob store that will not remove some keys (a failing disk, a bucket policy)."""

    def __init__(self, blobs: BlobStore, refused: set[str]) -> None:
        self._blobs = blobs
        self.refused = refused

    def delete_prefix(self, prefix: str) -> int:
        if prefix in self.refused:
            raise StorageError(f"cannot remove {prefix}")
        return self._blobs.delete_prefix(prefix)

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        failed = {k: f"cannot remove {k}" for k in keys if k in self.refused}
        failed |= self._blobs.delete_many([k for k in keys if k not in self.refused])
        return failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


def interrupted(store: Store) -> tuple[list[str], list[tuple[str, str]]]:
    """Three sessions left closing and three artifacts left deleting, as a crash leaves them."""
    closing = [f"closing-{i}" for i in range(3)]
    for sid in closing:
        store.create_session(sid)
        store.put_artifact(sid, b"abc", name="a.bin")
        store.catalog.begin_close(sid, store.clock.now())
    store.create_session("kept")
    deleting = []
    for i in range(3):
        artifact = store.put_artifact("kept", b"xy", name=f"{i}.bin")
        store.catalog.mark_artifact_deleting("kept", artifact.id, store.clock.now())
        deleting.append(("kept", artifact.id))
    return closing, deleting


def stored(store: Store) -> set[str]:
    return {s.key for s in store.blobs.list("sessions/")}


def test_recovery_finishes_the_others_reports_the_refused_and_a_later_run_finishes_it(
    store: Store,
) -> None:
    closing, deleting = interrupted(store)
    stuck_session = closing[1]
    stuck_artifact = deleting[2][1]
    refused = {session_prefix(stuck_session), artifact_key(*deleting[2])}
    failing = dataclasses.replace(store.context, blobs=Refusing(store.blobs, refused))
    left = {k for k in stored(store) if k.startswith(session_prefix(stuck_session))}
    left.add(artifact_key(*deleting[2]))
    closed: list[SessionClosed] = []
    deleted: list[ArtifactDeleted] = []
    store.hooks.on_session_closed(closed.append)
    store.hooks.on_artifact_deleted(deleted.append)

    result = recover(failing, batch_size=2)  # pages of two: a refusal mid-page and across pages

    assert (result.closed, result.deleted) == (2, 2)
    assert set(result.failed) == {f"session {stuck_session}", f"artifact {stuck_artifact}"}
    assert all("cannot remove" in why for why in result.failed.values())
    assert stored(store) == left
    assert store.catalog.closing_session_ids(None, 10) == [stuck_session]
    assert store.catalog.deleting_artifacts(None, 10) == [deleting[2]]
    assert sorted((e.session_id, e.reason) for e in closed) == [
        (sid, "closing") for sid in closing if sid != stuck_session
    ]
    assert sorted(e.artifact_id for e in deleted) == sorted(a for _, a in deleting[:2])
    assert {e.reason for e in deleted} == {"interrupted-delete"}

    # The store comes back: the next start-up finishes what was left.
    assert store.recover() == (1, 1)
    assert stored(store) == set()
    assert store.catalog.closing_session_ids(None, 10) == []
    assert store.catalog.deleting_artifacts(None, 10) == []
    assert store.catalog.table_row_counts()["sessions"] == 1  # "kept"


def test_a_blob_store_refusing_everything_does_not_stop_start_up(store: Store) -> None:
    closing, deleting = interrupted(store)
    refused = {session_prefix(sid) for sid in closing} | {artifact_key(*d) for d in deleting}
    starting = Store(store.catalog, Refusing(store.blobs, refused), store.settings, store.clock)

    assert starting.recover() == (0, 0)  # logged and left, not raised

    assert sorted(store.catalog.closing_session_ids(None, 10)) == closing
    assert store.recover() == (3, 3)


def test_a_database_error_on_one_page_is_reported_and_the_rest_recovered(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing, _deleting = interrupted(store)
    drop_sessions = store.catalog.drop_sessions
    refusals: list[Sequence[str]] = []

    def unwilling_once(session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not refusals:  # a deadlock, a dropped connection: the first page's removal fails
            refusals.append(session_ids)
            raise StorageError("database error: OperationalError")
        return drop_sessions(session_ids)

    monkeypatch.setattr(store.catalog, "drop_sessions", unwilling_once)

    result = recover(store.context, batch_size=2)

    assert refusals == [closing[:2]]
    assert (result.closed, result.deleted) == (1, 3)
    assert set(result.failed) == {f"session {sid}" for sid in closing[:2]}
    assert store.catalog.closing_session_ids(None, 10) == closing[:2]
    assert store.recover() == (2, 0)
    assert store.catalog.closing_session_ids(None, 10) == []
