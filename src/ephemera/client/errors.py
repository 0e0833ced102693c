"""Error answers as the library's exceptions, and the errors only a client can meet."""

from __future__ import annotations

import httpx2

from ephemera.errors import (
    ArtifactCorrupt,
    ChecksumMismatch,
    Conflict,
    EphemeraError,
    Forbidden,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InsufficientStorage,
    InvalidInput,
    InvalidMetadata,
    LinkRefused,
    Locked,
    NotFound,
    RequestTimeout,
    SchemaOutOfDate,
    StorageError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UploadChecksumMismatch,
    UploadExpired,
)


class ServerUnreachable(StorageError):
    """The server could not be reached, or the connection broke before it answered."""

    code = "server_unreachable"


class LeaseLost(Conflict):
    """A held lease could not be renewed before it expired (or was released elsewhere): what
    it protected may be cleaned up from now on."""

    code = "lease_lost"


class WaitTimeout(EphemeraError, TimeoutError):
    """A task did not finish within the time a caller was willing to wait; it still runs."""

    code = "wait_timeout"


# The server's error codes, for the ones the library defines; others go by status.
_BY_CODE: dict[str, type[EphemeraError]] = {
    cls.code: cls
    for cls in (
        ArtifactCorrupt,
        ChecksumMismatch,
        Conflict,
        Forbidden,
        IdempotencyKeyReused,
        InsufficientStorage,
        InvalidInput,
        LinkRefused,
        NotFound,
        RequestTimeout,
        SchemaOutOfDate,
        StorageError,
        TooLarge,
        Unauthenticated,
        # tus answers
        InvalidMetadata,
        Locked,
        UploadChecksumMismatch,
        UploadExpired,
    )
}
_BY_STATUS: dict[int, type[EphemeraError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    410: UploadExpired,
    413: TooLarge,
    422: InvalidInput,
    423: Locked,
    460: UploadChecksumMismatch,
    507: InsufficientStorage,
}
# Answers that say "not now": the same request may well succeed later.
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def error_of(response: httpx2.Response) -> EphemeraError:
    """The library exception an error answer stands for; :class:`Unavailable` (with the
    answer's Retry-After) for a busy or briefly failing server, unless its code names a
    lasting error (a corrupt artifact, an out-of-date schema)."""
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", f"HTTP {response.status_code}: {response.text[:200]}"
    if code == IdempotencyKeyInUse.code:
        # Worth sending again once the first request has been answered.
        return IdempotencyKeyInUse(message, int(_retry_after(response) or 1))
    cls = _BY_CODE.get(code)
    if response.status_code in _TRANSIENT_STATUS and cls in (None, StorageError):
        return Unavailable(message, _retry_after(response))
    return (cls or _BY_STATUS.get(response.status_code, EphemeraError))(message)


def _retry_after(response: httpx2.Response) -> float | None:
    """The Retry-After header in seconds (an HTTP date is not worth parsing here)."""
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None
