"""What the engine works with, as one record: the catalog, the blob store, the policy, the
clock, the hooks and the volume.

The Store builds one and hands it down; the engine's functions (cleanup, verification,
removal, recovery) take it instead of the Store, so every import arrow points down.
"""

from __future__ import annotations

from dataclasses import dataclass

from ephemera.blobs import BlobStore
from ephemera.catalog import Catalog
from ephemera.clock import Clock
from ephemera.config import Settings
from ephemera.hooks import Hooks
from ephemera.volume import Volume


@dataclass(frozen=True, slots=True)
class Context:
    catalog: Catalog
    blobs: BlobStore
    settings: Settings
    clock: Clock
    hooks: Hooks
    volume: Volume
