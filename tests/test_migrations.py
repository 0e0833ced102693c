"""Migrations produce exactly the schema the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ephemera import Settings, Store
from ephemera.catalog import Catalog
from ephemera.catalog.migrate import alembic_config
from ephemera.catalog.schema import metadata
from ephemera.errors import SchemaOutOfDate
from tests.databases import PostgresDatabases


def schema_differences(catalog: Catalog) -> list[object]:
    """What separates the database's schema from the one the code declares."""
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_the_migrated_schema_equals_the_declared_one(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert catalog.revisions() == (None, "0005")
        catalog.migrate()
        assert catalog.revisions() == ("0005", "0005")
        assert schema_differences(catalog) == []
    finally:
        catalog.dispose()


def test_the_migrated_schema_equals_the_declared_one_on_postgresql(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.empty()
    catalog = Catalog.open(url)
    try:
        assert catalog.revisions() == (None, "0005")
        catalog.migrate()
        assert catalog.revisions() == ("0005", "0005")
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
        assert store.catalog.revisions() == ("0005", "0005")
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
        assert catalog.revisions() == ("0005", "0005")
        assert catalog.get_session_row("s1") is not None
        assert schema_differences(catalog) == []
    finally:
        catalog.dispose()
