"""Creating a store or bringing its schema up to date, without opening it (``ephemera migrate``).

``Store.open`` refuses an outdated schema; this is the one way past that, kept in the library
so that the CLI never holds the catalog itself.
"""

from __future__ import annotations

from ephemera.catalog import Catalog


def migrate_schema(url: str, *, file_mode: int, dir_mode: int) -> tuple[str | None, str]:
    """Upgrade the database at ``url`` to the newest revision (an SQLite file is created, in
    these modes). Returns the revision it was at (None: empty) and the one it is at now."""
    catalog = Catalog.open(url, file_mode=file_mode, dir_mode=dir_mode)
    try:
        before, head = catalog.revisions()
        catalog.migrate()
    finally:
        catalog.dispose()
    return before, head
