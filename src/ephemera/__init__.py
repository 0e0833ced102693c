"""ephemera: isolated, self-cleaning session workspaces for file-processing backends.

Importing ``ephemera`` (which every submodule and the ``ephemera`` command do) loads none of
the library: each name below is imported on first use, so a command's start-up pays only
for what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ephemera.config import Settings
    from ephemera.errors import (
        BlobNotFound,
        ChecksumMismatch,
        Conflict,
        EphemeraError,
        InvalidInput,
        NotFound,
        StorageError,
        TooLarge,
        Unauthenticated,
    )
    from ephemera.models import (
        Artifact,
        ArtifactState,
        CloseReport,
        CreatedSession,
        Page,
        Session,
        SessionState,
        StorageClass,
    )
    from ephemera.store import DEFAULT, Store, Upload

_HOMES = {
    "Settings": "ephemera.config",
    "DEFAULT": "ephemera.store",
    "Store": "ephemera.store",
    "Upload": "ephemera.store",
    **dict.fromkeys(
        (
            "BlobNotFound",
            "ChecksumMismatch",
            "Conflict",
            "EphemeraError",
            "InvalidInput",
            "NotFound",
            "StorageError",
            "TooLarge",
            "Unauthenticated",
        ),
        "ephemera.errors",
    ),
    **dict.fromkeys(
        (
            "Artifact",
            "ArtifactState",
            "CloseReport",
            "CreatedSession",
            "Page",
            "Session",
            "SessionState",
            "StorageClass",
        ),
        "ephemera.models",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ephemera' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT",
    "Artifact",
    "ArtifactState",
    "BlobNotFound",
    "ChecksumMismatch",
    "CloseReport",
    "Conflict",
    "CreatedSession",
    "EphemeraError",
    "InvalidInput",
    "NotFound",
    "Page",
    "Session",
    "SessionState",
    "Settings",
    "StorageClass",
    "StorageError",
    "Store",
    "TooLarge",
    "Unauthenticated",
    "Upload",
]
