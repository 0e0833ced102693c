"""The catalog itself: opening, error translation, and how many queries a read takes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from ephemera import extras
from ephemera.catalog import Catalog
from ephemera.errors import Conflict, MissingExtra, StorageError
from ephemera.models import Lease, SessionState

CONTRACT = True

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def catalog(database: str | None, tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(database or f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        opened.prepare()
        yield opened
    finally:
        opened.dispose()


def session_values(session_id: str) -> dict[str, Any]:
    return {
        "id": session_id,
        "token_hash": "0" * 64,
        "label": None,
        "metadata": {},
        "state": SessionState.OPEN,
        "created_at": NOW,
        "last_activity_at": NOW,
        "idle_timeout_s": None,
        "max_age_s": None,
        "expires_at": None,
    }


def artifact_values(artifact_id: str, session_id: str) -> dict[str, Any]:
    return {
        "id": artifact_id,
        "session_id": session_id,
        "created_at": NOW,
        "name": f"{artifact_id}.bin",
        "kind": "input",
        "content_type": "application/octet-stream",
        "storage_class": "persistent",
    }


def test_a_duplicate_the_caller_expects_is_a_conflict(catalog: Catalog) -> None:
    catalog.insert_session(session_values("s1"))
    with pytest.raises(Conflict, match="session s1 already exists"):
        catalog.insert_session(session_values("s1"))
    catalog.insert_key("ops", "1" * 64, NOW)
    with pytest.raises(Conflict, match="a key named 'ops' already exists"):
        catalog.insert_key("ops", "2" * 64, NOW)


def test_any_other_database_error_is_a_storage_error(catalog: Catalog) -> None:
    """No SQLAlchemy error leaves the catalog: a duplicate nobody expects is a StorageError."""
    catalog.insert_session(session_values("s1"))
    assert catalog.insert_pending_artifact(artifact_values("a1", "s1"))
    with pytest.raises(StorageError, match="database error: IntegrityError"):
        catalog.insert_pending_artifact(artifact_values("a1", "s1"))
    lease = Lease("l1", "s1", "me", (), NOW, NOW + timedelta(hours=1))
    catalog.insert_lease(lease)
    with pytest.raises(StorageError, match="database error: IntegrityError"):
        catalog.insert_lease(lease)


def test_list_leases_reads_every_lease_in_one_query(catalog: Catalog) -> None:
    catalog.insert_session(session_values("s1"))
    artifacts = ["a1", "a2"]
    for artifact_id in artifacts:
        assert catalog.insert_pending_artifact(artifact_values(artifact_id, "s1"))
        catalog.finalize_artifact(
            artifact_id, "s1", {"size": 1, "sha256": "0" * 64}, None, lambda: None
        )
    later = NOW + timedelta(hours=1)
    leases = [
        Lease("l1", "s1", "whole", (), NOW, later),
        Lease("l2", "s1", "both", ("a1", "a2"), NOW, later),
        Lease("l3", "s1", "one", ("a2",), NOW, later),
    ]
    for lease in leases:
        catalog.insert_lease(lease)
    selects: list[str] = []

    def seen(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("SELECT"):
            selects.append(args[2])

    event.listen(catalog.engine, "before_cursor_execute", seen)
    try:
        assert catalog.list_leases("s1") == leases
    finally:
        event.remove(catalog.engine, "before_cursor_execute", seen)
    assert len(selects) == 1
    assert catalog.get_lease("s1", "l2") == leases[1]
    assert catalog.get_lease("s1", "nope") is None


def test_only_open_creates_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "catalog.db"
    Catalog.open(f"sqlite:///{path}", create=False).dispose()
    assert not path.parent.exists()
    Catalog.open(f"sqlite:///{path}", file_mode=0o640).dispose()
    assert path.stat().st_mode & 0o777 == 0o640


def test_postgresql_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "postgres", ("ephemera_no_such_driver",))
    with pytest.raises(MissingExtra, match=r"pip install 'ephemera\[postgres\]'"):
        Catalog.open("postgresql+psycopg://user@127.0.0.1:5432/nothing")
