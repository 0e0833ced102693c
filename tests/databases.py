"""Fresh PostgreSQL databases for tests: one migrated template, cloned per test.

``EPHEMERA_TEST_POSTGRES`` names the server (default: the local one, database ``test``).
Outside CI an unreachable server skips the PostgreSQL tests with the reason; under
``CI=true`` it fails them, so a CI run never passes without having run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from ephemera.catalog import Catalog

POSTGRES = os.environ.get("EPHEMERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _url(database: str) -> str:
    base, _, _ = POSTGRES.rpartition("/")
    return f"{base}/{database}"


@contextmanager
def _admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at {POSTGRES}: {exc}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with conn:
        yield conn


class PostgresDatabases:
    """Creates the template on first use; hands out clones; drops everything at the end."""

    def __init__(self) -> None:
        self.template = f"ephemera_template_{uuid.uuid4().hex[:10]}"
        self._ready = False
        self._made: list[str] = []

    def _prepare(self) -> None:
        with _admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        catalog = Catalog.open(_url(self.template))
        try:
            catalog.migrate()
        finally:
            catalog.dispose()
        self._ready = True

    def fresh(self) -> str:
        """The URL of a new, migrated, empty database."""
        if not self._ready:
            self._prepare()
        name = f"ephemera_test_{uuid.uuid4().hex[:12]}"
        with _admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        self._made.append(name)
        return _url(name)

    def empty(self, icu_locale: str | None = None) -> str:
        """The URL of a new database with no schema at all; given an ICU locale (``en-US``),
        one whose text collates by it, as production databases often do."""
        name = f"ephemera_test_{uuid.uuid4().hex[:12]}"
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if icu_locale is not None:
            create += sql.SQL(
                " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE {} LOCALE 'C.UTF-8'"
            ).format(sql.Literal(icu_locale))
        with _admin() as conn:
            conn.execute(create)
        self._made.append(name)
        return _url(name)

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        with _admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self._made:
            self._made.remove(name)

    def close(self) -> None:
        if not (self._ready or self._made):
            return
        with _admin() as conn:
            for name in [*self._made, self.template]:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
