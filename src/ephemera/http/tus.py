"""tus 1.0 resumable uploads at ``/sessions/{sid}/uploads``: the protocol's headers, nothing
else. Storage, claims and commits are :mod:`ephemera.store.resumable`'s.

Extensions: creation, creation-with-upload, creation-defer-length, termination, expiration,
checksum (sha1, sha256). ``Upload-Concat`` (concatenation) is refused with 400 rather than
ignored, since ignoring it would build a different upload than the client asked for.

The API authenticates with a bearer credential; a host (the web console) may mount the same
routes with its own ``authorize`` (a sign-in cookie instead of a token).

The routes are left out of the OpenAPI document: tus clients speak the protocol, not the
document, and its ``application/offset+octet-stream`` bodies are a media type client
generators refuse. The README describes the shapes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from starlette.requests import ClientDisconnect

from ephemera.errors import (
    EphemeraError,
    InvalidMetadata,
    Locked,
    RequestTimeout,
    SessionUnreachable,
    Unauthenticated,
)
from ephemera.http.credentials import bearer
from ephemera.http.errors import MalformedBody, error_response, status_of
from ephemera.http.openapi import operation_id
from ephemera.http.ratelimit import auth_failures, client_address
from ephemera.http.slots import upload_slots
from ephemera.store import Store
from ephemera.store.resumable import CHECKSUMS, Appender, UploadStatus

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum"
OFFSET_STREAM = "application/offset+octet-stream"
BUFFER = 1024 * 1024
CLAIM_POLL_S = 0.1
METADATA_MAX = 4096
EXPOSED = (
    "Upload-Offset, Upload-Length, Upload-Expires, Location, Tus-Resumable, Tus-Version, "
    "Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Metadata, Ephemera-Artifact-Id"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Offset, Upload-Length, "
    "Upload-Defer-Length, Upload-Metadata, Upload-Checksum, X-Requested-With"
)
METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"

# Checks that a request may use a session's uploads (raising Unauthenticated,
# SessionUnreachable or Forbidden); answers the admin's name when an admin acts, for the audit.
Authorizer = Callable[[Request, str], Awaitable[str | None]]


def parse_metadata(header: str | None) -> dict[str, str]:
    """``key base64value`` pairs, comma-separated; a key may come without a value."""
    if not header:
        return {}
    if len(header) > METADATA_MAX:
        raise InvalidMetadata(f"Upload-Metadata is longer than {METADATA_MAX} characters")
    meta: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or key in meta or not key.isascii():
            raise InvalidMetadata("Upload-Metadata must be comma-separated 'key base64value'")
        try:
            value = base64.b64decode(parts[1], validate=True).decode() if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidMetadata(f"Upload-Metadata {key!r} is not base64 of UTF-8") from None
        meta[key] = value
    return meta


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in meta.items()
    )


def _number(request: Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise MalformedBody(f"{name} must be a non-negative integer")
    return int(value)


def _checksum(request: Request) -> tuple[str, bytes] | None:
    value = request.headers.get("upload-checksum")
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUMS:
        raise MalformedBody(f"unsupported checksum algorithm {algorithm[:20]!r}")
    try:
        return algorithm, base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise MalformedBody("Upload-Checksum is not 'algorithm base64digest'") from None


def _http_date(value: datetime) -> str:
    return format_datetime(value, usegmt=True)


class Tus:
    def __init__(self, store: Store, authorize: Authorizer | None = None) -> None:
        self.store = store
        self.origins = set(store.settings.tus_cors_origins)
        self.authorize: Authorizer = authorize or self.authenticate

    def headers(self, request: Request, response: Response) -> Response:
        response.headers["Tus-Resumable"] = VERSION
        response.headers["Cache-Control"] = "no-store"
        origin = request.headers.get("origin")
        if origin and (origin in self.origins or "*" in self.origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
            response.headers["Vary"] = "Origin"
        return response

    def status_headers(self, response: Response, status: UploadStatus) -> None:
        response.headers["Upload-Offset"] = str(status.offset)
        if status.length is None:
            response.headers["Upload-Defer-Length"] = "1"
        else:
            response.headers["Upload-Length"] = str(status.length)
        if not status.finished:
            response.headers["Upload-Expires"] = _http_date(status.expires_at)
        if status.artifact_id is not None:
            response.headers["Ephemera-Artifact-Id"] = status.artifact_id

    def error(self, request: Request, exc: EphemeraError) -> Response:
        response = error_response(status_of(exc), exc.code, exc.message)
        if isinstance(exc, RequestTimeout):
            response.headers["Connection"] = "close"
        return self.headers(request, response)

    def version_refused(self, request: Request) -> Response | None:
        if request.headers.get("tus-resumable") == VERSION:
            return None
        response = error_response(
            412, "unsupported_version", f"this server speaks Tus-Resumable {VERSION}"
        )
        response.headers["Tus-Version"] = VERSION
        return self.headers(request, response)

    async def authenticate(self, request: Request, session_id: str) -> str | None:
        """The admin key's name when one was used (its changes are audited), else None."""
        auth = await bearer(request)
        if auth is None or not auth.credentials:
            raise Unauthenticated("missing credentials: send 'Authorization: Bearer <token>'")
        return await anyio.to_thread.run_sync(self.store.authenticate, session_id, auth.credentials)

    async def begin(self, make: Callable[[float], Appender]) -> Appender:
        """``make(wait_s=0)`` until the upload's claim is free or goes stale: the waiting
        holds no worker thread (a claim is waited for up to the claim timeout)."""
        deadline = anyio.current_time() + self.store.resumable.claim_timeout_s + 1
        while True:
            try:
                return await anyio.to_thread.run_sync(make, 0.0)
            except Locked:
                if anyio.current_time() >= deadline:
                    raise
            await anyio.sleep(CLAIM_POLL_S)

    async def pump(self, request: Request, appender: Appender) -> UploadStatus:
        """Stream the body into ``appender``: the loop receives while a worker thread writes
        the previous buffer. A client that goes away keeps what arrived; one that stalls for
        the upload idle timeout too, and is answered 408."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        chunks: list[bytes] = []
        size = 0
        stream = request.stream().__aiter__()
        handed = loop.time()
        timeout = self.store.settings.upload_idle_timeout_s
        try:
            while True:
                try:
                    with anyio.fail_after(timeout):
                        data = await stream.__anext__()
                except StopAsyncIteration:
                    break
                if not data:
                    continue
                chunks.append(data)
                size += len(data)
                # A full buffer, or a slow sender's bytes every half beat: writes
                # heartbeat, so a writer that keeps sending keeps its claim.
                if size >= BUFFER or loop.time() - handed >= appender.hand_over_s:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, appender.write, chunks)
                    chunks, size = [], 0
                    handed = loop.time()
            if pending is not None:
                waited = pending
                pending = None
                await waited
            last = chunks

            def write_and_finish() -> UploadStatus:
                appender.write(last)
                return appender.finish()

            return await anyio.to_thread.run_sync(write_and_finish)
        except (ClientDisconnect, TimeoutError) as exc:
            await _settle(pending)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(appender.interrupt)
            if isinstance(exc, TimeoutError):
                raise RequestTimeout("the request body stopped arriving") from None
            raise
        except BaseException:
            await _settle(pending)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(appender.close)
            raise


async def _settle(pending: asyncio.Future[None] | None) -> None:
    if pending is not None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await pending


def tus_router(store: Store, authorize: Authorizer | None = None) -> APIRouter:
    """The tus routes; ``authorize`` replaces the bearer credential check (see Authorizer)."""
    failures = auth_failures(store)
    router = APIRouter(
        dependencies=[Depends(failures.gate)],
        generate_unique_id_function=operation_id,
        tags=["uploads"],
    )
    tus = Tus(store, authorize)
    slots = upload_slots(store)

    async def guarded(request: Request, act: Callable[[], Any]) -> Response:
        refused = tus.version_refused(request)
        if refused is not None:
            return refused
        try:
            response: Response = await act()
        except EphemeraError as exc:
            if isinstance(exc, (Unauthenticated, SessionUnreachable)):
                # Answered here, so the gate never sees it: counted like every other route.
                failures.record_failure(client_address(request))
            return tus.error(request, exc)
        return tus.headers(request, response)

    def options(request: Request) -> Response:
        """tus discovery, and the CORS preflight of browser clients (no credentials)."""
        response = Response(status_code=204)
        response.headers["Tus-Version"] = VERSION
        response.headers["Tus-Extension"] = EXTENSIONS
        response.headers["Tus-Max-Size"] = str(store.settings.max_upload_bytes)
        response.headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUMS)
        tus.headers(request, response)
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Methods"] = METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"
        return response

    router.add_api_route(
        "/sessions/{session_id}/uploads", options, methods=["OPTIONS"], include_in_schema=False
    )
    router.add_api_route(
        "/sessions/{session_id}/uploads/{upload_id}",
        options,
        methods=["OPTIONS"],
        include_in_schema=False,
    )

    @router.post(
        "/sessions/{session_id}/uploads",
        status_code=201,
        response_class=Response,
        include_in_schema=False,
    )
    async def create_upload(session_id: str, request: Request) -> Response:
        """tus creation (with upload, with deferred length): answers 201 with ``Location``."""

        async def act() -> Response:
            await tus.authorize(request, session_id)
            if "upload-concat" in request.headers:
                raise MalformedBody("Upload-Concat (concatenation) is not supported")
            length = _number(request, "upload-length")
            deferred = request.headers.get("upload-defer-length")
            if (length is None) == (deferred is None) or deferred not in (None, "1"):
                raise MalformedBody("send either Upload-Length or Upload-Defer-Length: 1")
            meta = parse_metadata(request.headers.get("upload-metadata"))
            with_body = _media_type(request) == OFFSET_STREAM
            checksum = _checksum(request) if with_body else None
            status = await anyio.to_thread.run_sync(
                store.resumable.create, session_id, length, meta
            )
            # A path (tus allows it): right behind a proxy that rewrites host or scheme.
            location = f"{request.url.path.rstrip('/')}/{status.id}"
            if with_body:
                body_size = _number(request, "content-length")
                try:
                    with slots.hold(session_id):
                        appender = await tus.begin(
                            lambda wait_s: store.resumable.begin_append(
                                session_id,
                                status.id,
                                0,
                                body_size=body_size,
                                checksum=checksum,
                                wait_s=wait_s,
                            )
                        )
                        status = await tus.pump(request, appender)
                except EphemeraError as exc:
                    # The upload exists: the client resumes it at the offset HEAD tells.
                    response = tus.error(request, exc)
                    response.headers["Location"] = location
                    return response
            elif status.length == 0:
                # Nothing to send: the empty upload is complete at its creation.
                status = await anyio.to_thread.run_sync(
                    store.resumable.finish, session_id, status.id
                )
            response = Response(status_code=201)
            response.headers["Location"] = location
            tus.status_headers(response, status)
            return response

        return await guarded(request, act)

    @router.head(
        "/sessions/{session_id}/uploads/{upload_id}",
        response_class=Response,
        include_in_schema=False,
    )
    async def upload_offset(session_id: str, upload_id: str, request: Request) -> Response:
        """The upload's recorded offset (what survived), length, metadata and expiry."""

        async def act() -> Response:
            await tus.authorize(request, session_id)
            status = await anyio.to_thread.run_sync(store.resumable.finish, session_id, upload_id)
            response = Response(status_code=200)
            tus.status_headers(response, status)
            if status.metadata:
                response.headers["Upload-Metadata"] = encode_metadata(status.metadata)
            return response

        return await guarded(request, act)

    @router.patch(
        "/sessions/{session_id}/uploads/{upload_id}",
        status_code=204,
        response_class=Response,
        include_in_schema=False,
    )
    async def append_upload(session_id: str, upload_id: str, request: Request) -> Response:
        """Append the body at ``Upload-Offset``; 204 with the new offset, and with
        ``Ephemera-Artifact-Id`` when this completed the upload."""

        async def act() -> Response:
            await tus.authorize(request, session_id)
            if _media_type(request) != OFFSET_STREAM:
                return tus.headers(
                    request,
                    error_response(
                        415, "unsupported_media_type", f"Content-Type must be {OFFSET_STREAM}"
                    ),
                )
            if "upload-concat" in request.headers:
                raise MalformedBody("Upload-Concat (concatenation) is not supported")
            offset = _number(request, "upload-offset")
            if offset is None:
                raise MalformedBody("Upload-Offset is required")
            length = _number(request, "upload-length")
            body_size = _number(request, "content-length")
            checksum = _checksum(request)
            with slots.hold(session_id):
                appender = await tus.begin(
                    lambda wait_s: store.resumable.begin_append(
                        session_id,
                        upload_id,
                        offset,
                        length=length,
                        body_size=body_size,
                        checksum=checksum,
                        wait_s=wait_s,
                    )
                )
                status = await tus.pump(request, appender)
            response = Response(status_code=204)
            tus.status_headers(response, status)
            return response

        return await guarded(request, act)

    @router.delete(
        "/sessions/{session_id}/uploads/{upload_id}",
        status_code=204,
        response_class=Response,
        include_in_schema=False,
    )
    async def terminate_upload(session_id: str, upload_id: str, request: Request) -> Response:
        """tus termination: the upload and its bytes are removed (a finished upload's artifact
        stays)."""

        async def act() -> Response:
            admin = await tus.authorize(request, session_id)
            await anyio.to_thread.run_sync(store.resumable.terminate, session_id, upload_id)
            if admin is not None:  # an admin action, audited like an artifact's delete
                target = f"{session_id}/{upload_id}"
                await anyio.to_thread.run_sync(
                    store.audit, f"admin:{admin}", "upload.terminate", target
                )
            return Response(status_code=204)

        return await guarded(request, act)

    return router


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
