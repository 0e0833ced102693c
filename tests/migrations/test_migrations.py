"""Migrations produce exactly the schema the code declares."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, inspect, select, table
from sqlalchemy.sql.expression import ColumnClause

from ephemera import Settings, Store
from ephemera.catalog import Catalog
from ephemera.catalog.migrate import MIGRATIONS, alembic_config, head_revision
from ephemera.catalog.schema import metadata
from ephemera.errors import Conflict, SchemaOutOfDate
from tests.databases import PostgresDatabases

# The newest revision: every migration test upgrades to it.
HEAD = "0012"


def schema_differences(catalog: Catalog) -> list[object]:
    """What separates the database's schema from the one the code declares."""
    with catalog.engine.connect() as conn:
        options = {"compare_type": True, "include_object": declared_for(conn.dialect.name)}
        context = MigrationContext.configure(conn, opts=options)
        return list(compare_metadata(context, metadata))


def declared_for(dialect: str) -> Callable[..., bool]:
    """Alembic's comparison ignores ``ddl_if``: what the schema declares for another
    database only (an index PostgreSQL needs and SQLite does not) is not expected here."""

    def include(item: object, name: str, kind: str, reflected: bool, compare_to: object) -> bool:
        condition = getattr(item, "_ddl_if", None)
        wanted = getattr(condition, "dialect", None)
        return (
            reflected
            or wanted is None
            or dialect in ([wanted] if isinstance(wanted, str) else wanted)
        )

    return include


def test_the_head_read_from_the_revision_files_is_alembics(tmp_path: Path) -> None:
    """Checking a store's revision does without alembic; it must name the same head."""
    assert head_revision() == ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD


def test_the_migrated_schema_equals_the_declared_one(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert catalog.revisions() == (None, HEAD)
        catalog.migrate()
        assert catalog.revisions() == (HEAD, HEAD)
        assert schema_differences(catalog) == []
    finally:
        catalog.dispose()


def test_the_migrated_schema_equals_the_declared_one_on_postgresql(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.empty()
    catalog = Catalog.open(url)
    try:
        assert catalog.revisions() == (None, HEAD)
        catalog.migrate()
        assert catalog.revisions() == (HEAD, HEAD)
        catalog.migrate()
        assert schema_differences(catalog) == []
    finally:
        catalog.dispose()
        postgres_databases.drop(url)


def test_an_empty_database_is_migrated_on_open_and_an_outdated_one_refused(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    with Store.open(settings) as store:
        assert store.catalog.revisions() == (HEAD, HEAD)
        with store.catalog.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutOfDate, match="ephemera migrate"):
        Store.open(settings)


def test_upgrading_a_populated_first_schema_keeps_its_rows(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with catalog.engine.connect() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.commit()
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO sessions (id, token_hash, metadata, state, created_at,"
                " last_activity_at) VALUES ('s1', 'h', '{}', 'open', '2026-01-01 00:00:00',"
                " '2026-01-01 00:00:00')"
            )
        catalog.migrate()
        assert catalog.revisions() == (HEAD, HEAD)
        assert catalog.get_session_row("s1") is not None
        assert schema_differences(catalog) == []
    finally:
        catalog.dispose()


def keys_table_round_trip(catalog: Catalog) -> None:
    """0006 renames ``admin_keys`` to ``api_keys`` with its rows; its downgrade undoes it."""
    catalog.migrate()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    catalog.insert_key("ops", "h" * 64, at, role="worker")
    catalog.insert_key("root", "g" * 64, at, role="admin", expires_at=at + timedelta(days=30))
    catalog.touch_key("root", at + timedelta(hours=1), at + timedelta(hours=1))
    columns = ("name", "key_hash", "created_at", "last_used_at", "role", "expires_at")

    def rows(conn: Connection, name: str) -> list[Any]:
        selected: list[ColumnClause[Any]] = [column(c) for c in columns]
        return list(conn.execute(select(*selected).select_from(table(name)).order_by("name")))

    with catalog.engine.connect() as conn:
        before = rows(conn, "api_keys")
    assert [r[0] for r in before] == ["ops", "root"]
    assert all(value is not None for value in before[1])  # every column of "root" is set
    with catalog.engine.connect() as conn:
        command.downgrade(alembic_config(conn), "0005")
        conn.commit()
        assert "admin_keys" in inspect(conn).get_table_names()
        assert "api_keys" not in inspect(conn).get_table_names()
        assert rows(conn, "admin_keys") == before
        assert inspect(conn).get_pk_constraint("admin_keys")["name"] == "pk_admin_keys"
        unique = inspect(conn).get_unique_constraints("admin_keys")
        assert [u["name"] for u in unique] == ["uq_admin_keys_key_hash"]
    catalog.migrate()
    assert catalog.revisions() == (HEAD, HEAD)
    with catalog.engine.connect() as conn:
        assert rows(conn, "api_keys") == before
        assert inspect(conn).get_pk_constraint("api_keys")["name"] == "pk_api_keys"
        unique = inspect(conn).get_unique_constraints("api_keys")
        assert [u["name"] for u in unique] == ["uq_api_keys_key_hash"]
    with pytest.raises(Conflict):  # the unique key hash still holds
        catalog.insert_key("other", "h" * 64, at)
    assert schema_differences(catalog) == []


def test_the_keys_table_rename_upgrades_and_downgrades(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        keys_table_round_trip(catalog)
    finally:
        catalog.dispose()


def test_the_keys_table_rename_upgrades_and_downgrades_on_postgresql(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.empty()
    catalog = Catalog.open(url)
    try:
        keys_table_round_trip(catalog)
    finally:
        catalog.dispose()
        postgres_databases.drop(url)


def import_ledger_round_trip(catalog: Catalog) -> None:
    """0007 adds the import ledger; its downgrade drops it, and upgrading again restores it."""
    catalog.migrate()
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO sessions (id, token_hash, metadata, state, created_at,"
            " last_activity_at) VALUES ('s1', 'h', '{}', 'open', '2026-01-01 00:00:00',"
            " '2026-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO import_ledger (session_id, source, path, size, mtime_ns, origin_key,"
            " source_key, path_key, artifact_id, sha256, imported_at) VALUES ('s1', 'src',"
            " 'a.txt', 1, 2, 'o', 's', 'p', 'a', 'h', '2026-01-01 00:00:00')"
        )
    with catalog.engine.connect() as conn:
        command.downgrade(alembic_config(conn), "0006")
        conn.commit()
        assert "import_ledger" not in inspect(conn).get_table_names()
    assert catalog.get_session_row("s1") is not None
    catalog.migrate()
    assert catalog.revisions() == (HEAD, HEAD)
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM import_ledger").scalar() == 0
    assert schema_differences(catalog) == []


def test_the_import_ledger_upgrades_and_downgrades(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        import_ledger_round_trip(catalog)
    finally:
        catalog.dispose()


def test_the_import_ledger_upgrades_and_downgrades_on_postgresql(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.empty()
    catalog = Catalog.open(url)
    try:
        import_ledger_round_trip(catalog)
    finally:
        catalog.dispose()
        postgres_databases.drop(url)
