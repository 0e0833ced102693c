"""Schema migrations (alembic revisions in ``migrations/versions``), and preparing a store.

Alembic is imported only to migrate: checking a store's revision (what every command and
``Store.open`` does) reads ``alembic_version`` with a plain query and takes the newest
revision from the revision files, so a command with nothing to migrate starts without it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, column, inspect, select, table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ephemera.catalog.db import Database, translate
from ephemera.errors import SchemaOutOfDate, StorageError, StoreMissing
from ephemera.urls import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r'^revision = "(\w+)"$', re.M)
_DOWN_REVISION = re.compile(r'^down_revision = "(\w+)"$', re.M)
_ALEMBIC_VERSION = table("alembic_version", column("version_num"))


def alembic_config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision: the one no other revision names as the one it follows."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if found := _REVISION.search(text):
            revisions.add(found.group(1))
        if down := _DOWN_REVISION.search(text):
            followed.add(down.group(1))
    (head,) = revisions - followed
    return head


def revisions(db: Database) -> tuple[str | None, str]:
    """(the database's revision, the newest revision this code knows)."""
    head = head_revision()
    try:
        with db.engine.connect() as conn:
            current = None
            if inspect(conn).has_table("alembic_version"):
                current = conn.scalars(select(_ALEMBIC_VERSION.c.version_num)).one_or_none()
    except OperationalError as exc:
        # Drivers explain over several lines; callers print one.
        reason = " ".join(str(exc.orig).split())
        shown = redact_url(db.url)
        raise StorageError(f"cannot reach the database {shown}: {reason}") from exc
    except SQLAlchemyError as exc:
        raise translate(exc) from exc
    return current, head


def migrate(db: Database) -> None:
    from alembic import command

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
