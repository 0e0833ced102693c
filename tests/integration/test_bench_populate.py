"""The benchmarks' population tool builds a store ephemera accepts as its own: every record's
size and sha256 match its file, tree B holds the same bytes, and exactly the expired half is
what cleanup would take. Run on SQLite (rows by executemany) and PostgreSQL (rows by COPY)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.populate import EXPIRED_SUFFIX, PER_SESSION, StoreA, blob_path, make_layout, populate
from ephemera import StorageClass, Store
from ephemera.ids import is_artifact_id

CONTRACT = True  # every database; the tool writes files itself, so the blob store is local
N = 3 * PER_SESSION + 40  # a last session that is not full


def test_the_population_tool_builds_a_store_whose_records_match_their_files(
    tmp_path: Path, database: str | None
) -> None:
    layout = make_layout(N)
    store_a = StoreA(tmp_path / "A", database)
    populated = populate(layout, store_a, tmp_path / "B")
    assert populated.files == 2 * N

    with Store.open(store_a.settings()) as store:
        sessions = store.list_sessions(limit=1000).items
        assert sorted(s.id for s in sessions) == [layout.session_id(s) for s in range(4)]
        seen: dict[str, tuple[int, str, StorageClass]] = {}
        for session in sessions:
            page = store.list_artifacts(session.id, limit=1000)
            assert not page.next_cursor
            for artifact in page.items:
                data = store.read_artifact(session.id, artifact.id)
                assert len(data) == artifact.size
                assert hashlib.sha256(data).hexdigest() == artifact.sha256
                seen[artifact.id] = (artifact.size, artifact.sha256, artifact.storage_class)
        assert len(seen) == N

        expired = layout.expired_indices()
        assert len(expired) == N // 2
        for i in range(N):
            size, sha256, storage = seen[layout.artifact_id(i)]
            assert size == layout.sizes[i]
            assert sha256 == hashlib.sha256(layout.data(i)).hexdigest()
            assert storage is (
                StorageClass.TEMPORARY if layout.expired[i] else StorageClass.PERSISTENT
            )
            marked = blob_path(tmp_path / "B", layout, i, marked=True)
            assert marked.name.endswith(EXPIRED_SUFFIX) == bool(layout.expired[i])
            assert marked.read_bytes() == layout.data(i)

        report = store.cleanup("expired", dry_run=True)
        assert report.deleted_count == N // 2
        assert report.deleted_size_bytes == sum(layout.sizes[i] for i in expired)


def test_the_layout_has_unique_artifact_ids_and_the_same_data_for_the_same_size() -> None:
    first, second = make_layout(N), make_layout(N)
    ids = [first.artifact_id(i) for i in range(N)]
    assert len(set(ids)) == N
    assert all(is_artifact_id(a) for a in ids)
    assert first.sizes == second.sizes
    assert first.expired == second.expired
    assert [first.data(i) for i in range(N)] == [second.data(i) for i in range(N)]
