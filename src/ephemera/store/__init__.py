"""The library API: :class:`Store` (see :mod:`ephemera.store.facade` for the map of modules)."""

from ephemera.store.facade import Store
from ephemera.store.schema import migrate_schema
from ephemera.store.sessions import DEFAULT, UNCHANGED
from ephemera.store.uploads import Upload

__all__ = ["DEFAULT", "UNCHANGED", "Store", "Upload", "migrate_schema"]
