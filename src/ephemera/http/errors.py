"""The one place where ephemera's errors become HTTP statuses and JSON bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ephemera.errors import (
    ArtifactCorrupt,
    ChecksumMismatch,
    Conflict,
    EphemeraError,
    Forbidden,
    IdempotencyKeyInUse,
    InsufficientStorage,
    InvalidInput,
    InvalidMetadata,
    Locked,
    NotFound,
    RequestTimeout,
    SchemaOutOfDate,
    StorageError,
    TooLarge,
    Unauthenticated,
    UploadChecksumMismatch,
    UploadExpired,
)

log = logging.getLogger("ephemera.http")


class MalformedBody(EphemeraError):
    """The request body could not be parsed at all (JSON, multipart, base64)."""

    code = "malformed_body"


class InvalidHeader(EphemeraError):
    """A request header that is malformed (an Idempotency-Key too long, or not ASCII)."""

    code = "invalid_header"


class RateLimited(EphemeraError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RangeNotSatisfiable(EphemeraError):
    """A ``Range`` header that cannot be served: malformed, or outside the artifact's bytes."""

    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


# Most specific first: the first class an error is an instance of decides.
STATUS: list[tuple[type[EphemeraError], int]] = [
    (MalformedBody, 400),
    (InvalidHeader, 400),
    (InvalidMetadata, 400),
    # tus: a chunk that does not match its Upload-Checksum.
    (UploadChecksumMismatch, 460),
    (ChecksumMismatch, 400),
    (InvalidInput, 422),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (UploadExpired, 410),
    (NotFound, 404),
    (Locked, 423),
    (Conflict, 409),
    (TooLarge, 413),
    (RequestTimeout, 408),
    (RateLimited, 429),
    (RangeNotSatisfiable, 416),
    (SchemaOutOfDate, 503),
    # Bytes that fail verification are the server's fault, and no retry will mend them.
    (ArtifactCorrupt, 500),
    (InsufficientStorage, 507),
    (StorageError, 503),
]


def status_of(exc: EphemeraError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _on_ephemera_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EphemeraError)
    status = status_of(exc)
    if status >= 500:
        log.error("request failed: %s", exc.message, exc_info=exc)
    response = error_response(status, exc.code, exc.message)
    if isinstance(exc, RateLimited | IdempotencyKeyInUse):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, RangeNotSatisfiable):
        response.headers["Content-Range"] = f"bytes */{exc.size}"
    elif isinstance(exc, RequestTimeout):
        # The rest of the body may still come: the connection cannot carry another request.
        response.headers["Connection"] = "close"
    return response


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, MalformedBody.code, "request body is not valid JSON")
    # Every problem, not the first few: a client fixes its request in one round trip.
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return error_response(422, InvalidInput.code, "; ".join(parts) or "invalid request")


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EphemeraError, _on_ephemera_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
