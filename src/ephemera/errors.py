"""ephemera's error types.

Every error the library raises on purpose is an :class:`EphemeraError` with a stable ``code``.
The HTTP layer maps codes to statuses in one table (``ephemera.http.errors``); the library
itself knows nothing of HTTP. Where a built-in fits, the error subclasses it too, so callers
can catch ``LookupError`` or ``ValueError`` without importing ephemera.
"""

from __future__ import annotations


class EphemeraError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EphemeraError, ValueError):
    code = "invalid_input"


class ChecksumMismatch(InvalidInput):
    code = "checksum_mismatch"


class InvalidMetadata(InvalidInput):
    """A resumable upload's metadata (its name, kind, ...) that cannot be accepted."""

    code = "invalid_metadata"


class UploadChecksumMismatch(ChecksumMismatch):
    """A resumable upload's chunk did not match its checksum: nothing of it was kept."""

    code = "upload_checksum_mismatch"


class NotFound(EphemeraError, LookupError):
    """Missing, gone, expired, or not reachable with the given credentials: deliberately one."""

    code = "not_found"


class SessionUnreachable(NotFound):
    """Authentication on a session failed: missing, gone, expired or a wrong token, as one.

    Answered exactly like any NotFound; the HTTP layer counts it as a failed authentication.
    """


class UploadExpired(NotFound):
    """A resumable upload past its expiry: it takes no more bytes, and cleanup removes it."""

    code = "upload_expired"


class Unauthenticated(EphemeraError):
    code = "unauthenticated"


class Forbidden(EphemeraError):
    """Valid credentials that do not grant this operation (a session token on an admin route)."""

    code = "forbidden"


class LinkRefused(Forbidden):
    """A download link that does not open anything: tampered with, expired, or signed by a
    revoked key, as one (the answer never says which).

    ``guess`` is False only for a link that no guessing could have opened: one signed by a
    live key and since expired, or one naming a revoked key (whose secret is gone). The HTTP
    layer counts only guesses against the client's address."""

    code = "link_refused"

    def __init__(self, message: str, *, guess: bool = True) -> None:
        super().__init__(message)
        self.guess = guess


class Conflict(EphemeraError):
    code = "conflict"


class IdempotencyKeyInUse(Conflict):
    """Another request with this Idempotency-Key is still running: send it again later."""

    code = "idempotency_key_in_use"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key already used for another request (other parameters or body)."""

    code = "idempotency_key_reused"


class Locked(Conflict):
    """Another writer holds what this request wants to change; retry later."""

    code = "locked"


class TooLarge(EphemeraError):
    code = "too_large"


class StorageError(EphemeraError, OSError):
    """The blob store or the database failed in a way the caller cannot fix by changing input."""

    code = "storage_error"


class Unavailable(StorageError):
    """Transient: the server is busy (too many uploads in flight) or briefly failing; the
    same request may succeed later, after ``retry_after_s`` when the server said."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BlobNotFound(StorageError, FileNotFoundError):
    code = "blob_not_found"


class InsufficientStorage(StorageError):
    """The volume is full: nothing was stored; cleanup frees space."""

    code = "insufficient_storage"


class ArtifactCorrupt(StorageError):
    """Verification found the stored bytes differ from (or lack) what was recorded."""

    code = "artifact_corrupt"


class RequestTimeout(EphemeraError):
    """The client stopped sending a request body; nothing was stored."""

    code = "request_timeout"


class SchemaOutOfDate(EphemeraError):
    code = "schema_out_of_date"


class StoreMissing(EphemeraError):
    """Opened without creating, and no store is there (no database file, no schema)."""

    code = "store_missing"


class BackendMismatch(InvalidInput):
    """The configured backends differ from the ones a data dir's deployment recorded."""

    code = "backend_mismatch"


class MissingExtra(InvalidInput):
    """A configured feature needs an optional dependency group that is not installed."""

    code = "missing_extra"
