"""ephemera: isolated, self-cleaning session workspaces for file-processing backends."""

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
