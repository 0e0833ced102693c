"""Artifact passes over several chunks and batches: everything selected is deleted, a batch
goes session by session, and a dry run reports the same."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import pytest

from ephemera import Store
from ephemera.catalog import ArtifactSweep, Candidate, Catalog
from ephemera.cleanup import engine
from ephemera.cleanup.run import Run
from ephemera.testing import ManualClock
from tests.integration.test_cleanup import dry_then_real, stored_keys

CONTRACT = True  # every database and blob store

HOUR = 3600


def test_expired_over_many_chunks_deletes_each_batch_in_session_order(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 7 candidates, batches of 3: a chunk is cut into batches, a pass into chunks.
    monkeypatch.setattr(engine, "Run", functools.partial(Run, sweep_chunk=7, delete_batch=3))
    sessions = ["s1", "s2", "s3"]
    for sid in sessions:
        store.create_session(sid, idle_timeout_s=None)
    session_of: dict[str, str] = {}
    kept: list[str] = []
    # Expiry interleaves the sessions: the sweep's own order jumps between them.
    for i in range(20):
        sid = sessions[i % 3]
        artifact = store.put_artifact(sid, b"x" * (i + 1), name=f"{i}.bin", expires_in_s=60 + i)
        session_of[artifact.id] = sid
    for sid in sessions:
        kept.append(store.put_artifact(sid, b"keep", name="kept.bin").id)
    claimed: list[list[tuple[str, str]]] = []
    claim = Catalog.claim_artifacts

    def spy(self: Catalog, sweep: ArtifactSweep, ids: Sequence[str]) -> list[Candidate]:
        claimed.append([(session_of[i], i) for i in ids])
        return claim(self, sweep, ids)

    monkeypatch.setattr(Catalog, "claim_artifacts", spy)
    clock.advance(HOUR)
    report = dry_then_real(store, "expired")
    assert sorted(i.id for i in report.items) == sorted(session_of)
    assert report.deleted_size_bytes == sum(range(1, 21))
    assert [len(batch) for batch in claimed] == [3, 3, 1, 3, 3, 1, 3, 3]
    for batch in claimed:
        assert batch == sorted(batch), claimed
    assert sorted(stored_keys(store)) == sorted(
        f"sessions/{sid}/{aid}" for sid, aid in zip(sessions, kept, strict=True)
    )
