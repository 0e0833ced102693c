"""Schema migrations (alembic revisions in ``migrations/versions``), and preparing a store."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ephemera.catalog.db import Database, translate
from ephemera.errors import SchemaOutOfDate, StorageError, StoreMissing
from ephemera.urls import redact_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def revisions(db: Database) -> tuple[str | None, str]:
    """(the database's revision, the newest revision this code knows)."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    try:
        with db.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        # Drivers explain over several lines; callers print one.
        reason = " ".join(str(exc.orig).split())
        shown = redact_url(db.url)
        raise StorageError(f"cannot reach the database {shown}: {reason}") from exc
    except SQLAlchemyError as exc:
        raise translate(exc) from exc
    return current, head


def migrate(db: Database) -> None:
    try:
        with db.engine.connect() as conn:
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
    except SQLAlchemyError as exc:
        raise translate(exc) from exc


def prepare(db: Database, *, migrate_empty: bool = True) -> None:
    """Migrate an empty database; refuse one that is behind (that takes ``migrate``)."""
    missing = (
        f"no ephemera store in {redact_url(db.url)}: "
        "create one with `ephemera migrate` or `ephemera serve`"
    )
    # Connecting would create the file: look first.
    if not db.create and db.sqlite_file and not db.sqlite_file.exists():
        raise StoreMissing(missing)
    current, head = revisions(db)
    if current == head:
        return
    with db.read() as conn:
        has_tables = bool(inspect(conn).get_table_names())
    if current is None and not has_tables and not db.create:
        raise StoreMissing(missing)
    if current is None and not has_tables and migrate_empty:
        migrate(db)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, this version needs {head}: "
        "run `ephemera migrate`"
    )
