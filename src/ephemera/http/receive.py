"""Upload bodies, streamed from the socket into an :class:`~ephemera.store.Upload`.

The event loop receives while a worker thread hashes and writes the previous buffer
(double buffering): at most two buffers of ``BUFFER`` bytes are held per upload, and
neither the network nor the disk waits for the other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ephemera.errors import InvalidInput, RequestTimeout, TooLarge
from ephemera.http.errors import MalformedBody, RateLimited
from ephemera.http.schemas import JsonUpload
from ephemera.models import Artifact
from ephemera.store import Store, Upload
from ephemera.store.idempotency import UploadKey

BUFFER = 1024 * 1024
# A raw body up to this size (by its Content-Length) that arrives whole is stored at once.
SMALL = 64 * 1024
FIELD_MAX = 4096
T = TypeVar("T")
FIELDS = ("name", "kind", "content_type", "storage", "expires_in_s", "sha256")


@dataclass
class UploadParams:
    name: str | None = None
    kind: str | None = None
    content_type: str | None = None
    storage: str | None = None
    expires_in_s: int | None = None
    sha256: str | None = None
    producer: str | None = None
    # (task ID, claim ID): the upload is an output of a claimed task.
    task_claim: tuple[str, str] | None = None
    # Its Idempotency-Key: the reservation it completes, or the answer it repeats.
    key: UploadKey | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind or "input",
            "content_type": self.content_type,
            "storage": self.storage,
            "expires_in_s": self.expires_in_s,
        }

    def begin(self, store: Store, session_id: str, declared_size: int | None) -> Upload:
        if not self.name:
            raise InvalidInput("a file name is required (query parameter 'name')")
        if self.task_claim is not None:
            return store.begin_task_output(
                *self.task_claim,
                name=self.name,
                kind=self.kind or "output",
                content_type=self.content_type,
                declared_size=declared_size,
            )
        return store.begin_upload(
            session_id,
            name=self.name,
            kind=self.kind or "input",
            content_type=self.content_type,
            storage=self.storage,
            expires_in_s=self.expires_in_s,
            declared_size=declared_size,
            producer=self.producer,
            key=self.key,
        )


class _Sink:
    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None

    async def feed(self, data: bytes) -> None:
        # Chunks are handed over as they came: no joining, no copy.
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= BUFFER:
            await self._wait()
            self._pending = asyncio.get_running_loop().run_in_executor(
                None, self._write, self._take()
            )

    def _take(self) -> list[bytes]:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        return chunks

    def _write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.upload.write(chunk)

    async def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def flush(self) -> None:
        await self._wait()
        if self._chunks:
            await anyio.to_thread.run_sync(self._write, self._take())

    async def commit(self, commit: Callable[[], T]) -> T:
        """Write the tail, then ``commit`` (which commits the upload)."""
        await self._wait()
        chunks = self._take()

        def write_and_commit() -> T:
            self._write(chunks)
            return commit()

        # One trip to a worker thread for the tail and the commit: small uploads take one.
        return await anyio.to_thread.run_sync(write_and_commit)

    async def discard(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._pending is not None:
                # The error that got us here is the one to report, not this one.
                with contextlib.suppress(Exception):
                    await self._pending
            await anyio.to_thread.run_sync(self.upload.abort)


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise MalformedBody("invalid Content-Length") from None


async def body_chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; a client that sends nothing for ``idle_timeout_s`` gets RequestTimeout.

    Without it a stalled client would hold its socket, its staging file and its pending
    record for as long as it liked.
    """
    chunks = request.stream()
    while True:
        try:
            with anyio.fail_after(idle_timeout_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"no bytes of the request body arrived for {idle_timeout_s:g} s: "
                "the upload was abandoned and nothing was stored"
            ) from None
        except ClientDisconnect:
            raise MalformedBody("the client went away before the body was complete") from None
        if chunk:
            yield chunk


async def receive_raw(
    store: Store, session_id: str, request: Request, params: UploadParams
) -> Artifact:
    """A raw body streamed into a new artifact; a small one that arrived whole with its
    headers is stored in one step instead (``Store.put_artifact`` with bytes: one trip to a
    worker thread, no pending record, one shared write transaction)."""
    _content_type_from_header(request, params)
    declared = declared_length(request)
    chunks = body_chunks(request, store.settings.upload_idle_timeout_s)
    head = b""
    whole = params.key is None and params.task_claim is None  # keys, claims: begin() only
    if whole and declared is not None and 0 < declared <= SMALL:
        head = await anext(chunks, b"")
        if len(head) == declared:
            return await anyio.to_thread.run_sync(_put_whole, store, session_id, params, head)
        # Still arriving (a slow or stalled client): streamed like any other body, with its
        # pending record for as long as it takes.
    return await _stream_raw(store, session_id, request, params, declared, _after(head, chunks))


async def _stream_raw(
    store: Store,
    session_id: str,
    request: Request,
    params: UploadParams,
    declared: int | None,
    chunks: AsyncIterator[bytes],
) -> Artifact:
    """The body streamed into a new upload, committed once it has all come."""
    upload = await anyio.to_thread.run_sync(params.begin, store, session_id, declared)
    commit = partial(upload.commit, params.sha256)
    return await stream_into(store, request, upload, commit, chunks)


async def receive_raw_admitting(
    store: Store,
    session_id: str,
    request: Request,
    params: UploadParams,
    admit: Callable[[], object],
    hold: Callable[[], AbstractContextManager[object]],
) -> Artifact:
    """``receive_raw`` for a request whose credentials are still to be checked by ``admit``,
    in ``hold`` (its upload slot): a small body that came whole with its headers is admitted
    and stored in one trip to a worker thread instead of two.

    Nothing else changes: ``admit`` still comes first. Whenever something else could fail or
    wait first (no small Content-Length, a body not all here, a client gone, no free slot),
    ``admit`` runs alone first, while the body goes on arriving, and then the rest as before.
    """
    declared = _small_length(request)
    if declared is None or params.key is not None or params.task_claim is not None:
        await anyio.to_thread.run_sync(admit)
        with hold():
            return await receive_raw(store, session_id, request, params)
    chunks = body_chunks(request, store.settings.upload_idle_timeout_s)
    first = asyncio.ensure_future(_first(chunks))
    try:
        # One pass of the loop: a body that came with its headers is read in it.
        await asyncio.sleep(0)
        whole = first.done() and not first.exception() and len(first.result()) == declared
        admitted = False
        with contextlib.ExitStack() as stack:
            if whole:
                try:
                    stack.enter_context(hold())
                except RateLimited:
                    await anyio.to_thread.run_sync(admit)  # an unknown client learns nothing
                    raise
            else:
                await anyio.to_thread.run_sync(admit)
                admitted = True
                stack.enter_context(hold())
            head = await first
            _content_type_from_header(request, params)
            if len(head) == declared:
                return await anyio.to_thread.run_sync(
                    _admit_and_put, None if admitted else admit, store, session_id, params, head
                )
            chunks = _after(head, chunks)
            return await _stream_raw(store, session_id, request, params, declared, chunks)
    finally:
        if not first.done():
            first.cancel()
        elif not first.cancelled():
            first.exception()  # seen: the error to report is the one raised here


async def _first(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks, b"")


def _small_length(request: Request) -> int | None:
    """The body's declared length when it is small enough to be stored whole (else None,
    an invalid Content-Length included: ``receive_raw`` reports that, after ``admit``)."""
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    size = int(value)
    return size if 0 < size <= SMALL else None


def _admit_and_put(
    admit: Callable[[], object] | None,
    store: Store,
    session_id: str,
    params: UploadParams,
    body: bytes,
) -> Artifact:
    if admit is not None:
        admit()
    return _put_whole(store, session_id, params, body)


def _put_whole(store: Store, session_id: str, params: UploadParams, body: bytes) -> Artifact:
    if not params.name:
        raise InvalidInput("a file name is required (query parameter 'name')")
    return store.put_artifact(
        session_id,
        body,
        name=params.name,
        kind=params.kind or "input",
        content_type=params.content_type,
        storage=params.storage,
        expires_in_s=params.expires_in_s,
        sha256=params.sha256,
        producer=params.producer,
    )


async def _after(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


def _content_type_from_header(request: Request, params: UploadParams) -> None:
    if params.content_type is None:
        header = request.headers.get("content-type", "")
        # curl labels every --data-binary body as a form: that says nothing about the file.
        if header.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            params.content_type = header or None


async def stream_into(
    store: Store,
    request: Request,
    upload: Upload,
    commit: Callable[[], T],
    chunks: AsyncIterator[bytes] | None = None,
) -> T:
    """The raw body (or ``chunks`` of it) streamed into ``upload``, then ``commit``; the
    upload is discarded if anything fails."""
    if chunks is None:
        chunks = body_chunks(request, store.settings.upload_idle_timeout_s)
    sink = _Sink(upload)
    try:
        async for chunk in chunks:
            await sink.feed(chunk)
        return await sink.commit(commit)
    except BaseException:
        await sink.discard()
        raise


async def receive_json(
    store: Store, session_id: str, request: Request, params: UploadParams
) -> Artifact:
    limit = store.settings.max_json_upload_bytes
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"JSON uploads are limited to {limit} bytes: use a raw or multipart upload")
    body = bytearray()
    async for chunk in body_chunks(request, store.settings.upload_idle_timeout_s):
        body += chunk
        if len(body) > limit:
            raise TooLarge(
                f"JSON uploads are limited to {limit} bytes: use a raw or multipart upload"
            )
    try:
        payload = JsonUpload.model_validate_json(bytes(body))
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedBody("request body is not valid JSON") from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}" if where else first["msg"]) from None
    try:
        data = base64.b64decode(payload.data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedBody("data_base64 is not valid base64") from None
    del body
    values: dict[str, Any] = {k: getattr(payload, k) for k in FIELDS if k != "name"}
    merged = UploadParams(
        name=payload.name,
        **{k: (v if v is not None else getattr(params, k)) for k, v in values.items()},
    )
    return await anyio.to_thread.run_sync(
        partial(
            store.put_artifact,
            session_id,
            data,
            name=payload.name,
            kind=merged.kind or "input",
            content_type=merged.content_type,
            storage=merged.storage,
            expires_in_s=merged.expires_in_s,
            sha256=merged.sha256,
            producer=params.producer,
            key=params.key,
        )
    )


class _MultipartEvents:
    """Collects the parser's callbacks, which cannot await, for the receive loop to act on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        def part_begin() -> None:
            self._headers = {}

        def header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            self._headers[bytes(self._field).lower()] = bytes(self._value)
            self._field.clear()
            self._value.clear()

        def headers_finished() -> None:
            self.events.append(("headers", self._headers))

        def part_data(data: bytes, start: int, end: int) -> None:
            self.events.append(("data", data[start:end]))

        def part_end() -> None:
            self.events.append(("end", None))

        def end() -> None:
            self.events.append(("finish", None))

        return {
            "on_part_begin": part_begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": part_data,
            "on_part_end": part_end,
            "on_end": end,
        }


async def receive_multipart(
    store: Store, session_id: str, request: Request, params: UploadParams
) -> Artifact:
    """A ``multipart/form-data`` body with one ``file`` part, streamed as it arrives.

    Text fields (``name``, ``kind``, ``content_type``, ``storage``, ``expires_in_s``,
    ``sha256``) may come before or after the file part; they override query parameters and
    are validated when the body is complete, before anything becomes visible.
    """
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedBody("multipart body without a boundary")
    collected = _MultipartEvents()
    parser = MultipartParser(boundary, collected.callbacks())  # type: ignore[arg-type]
    sink: _Sink | None = None
    fields: dict[str, str] = {}
    file_name: str | None = None
    file_type: str | None = None
    part: str | None = None
    field_name = ""
    field_value = bytearray()
    finished = False

    async def act(kind: str, value: Any) -> None:
        nonlocal sink, part, field_name, file_name, file_type, finished
        if kind == "headers":
            disposition, opts = parse_options_header(value.get(b"content-disposition", b""))
            if disposition != b"form-data" or b"name" not in opts:
                raise MalformedBody("multipart part without a form-data name")
            name = _decode(opts[b"name"])
            if name == "file":
                if sink is not None:
                    raise InvalidInput("only one 'file' part is accepted")
                if b"filename" in opts:
                    file_name = _decode(opts[b"filename"])
                if b"content-type" in value:
                    file_type = _decode(value[b"content-type"])
                # Fields that follow the file replace these values at commit.
                early = _merge_form(params, fields, file_name, file_type)
                early.name = early.name or "upload"
                upload = await anyio.to_thread.run_sync(early.begin, store, session_id, None)
                sink = _Sink(upload)
                part = "file"
            elif name in FIELDS:
                part, field_name = "field", name
                field_value.clear()
            else:
                raise InvalidInput(f"unknown form field {name!r}")
        elif kind == "data":
            if part == "file":
                assert sink is not None
                await sink.feed(value)
            else:
                field_value.extend(value)
                if len(field_value) > FIELD_MAX:
                    raise InvalidInput(f"form field {field_name!r} is too long")
        elif kind == "end":
            if part == "file":
                assert sink is not None
                await sink.flush()
            else:
                fields[field_name] = _decode(bytes(field_value))
            part = None
        elif kind == "finish":
            finished = True

    try:
        async for chunk in body_chunks(request, store.settings.upload_idle_timeout_s):
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise MalformedBody(f"malformed multipart body: {exc}") from None
            for kind, value in collected.events:
                await act(kind, value)
            collected.events.clear()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise MalformedBody(f"malformed multipart body: {exc}") from None
        for kind, value in collected.events:
            await act(kind, value)
        if not finished:
            raise MalformedBody("multipart body ended before its closing boundary")
        if sink is None:
            raise InvalidInput("multipart body has no 'file' part")
        final = _merge_form(params, fields, file_name, file_type)
        if not final.name:
            raise InvalidInput("a file name is required (a 'name' field or the part's filename)")
        await anyio.to_thread.run_sync(partial(sink.upload.amend, **final.metadata()))
        return await sink.commit(partial(sink.upload.commit, final.sha256))
    except BaseException:
        if sink is not None:
            await sink.discard()
        raise


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("form data is not valid UTF-8") from None


def _merge_form(
    params: UploadParams, fields: dict[str, str], file_name: str | None, file_type: str | None
) -> UploadParams:
    expires: int | None = params.expires_in_s
    if "expires_in_s" in fields:
        try:
            expires = int(fields["expires_in_s"])
        except ValueError:
            raise InvalidInput("expires_in_s must be an integer") from None
    return UploadParams(
        name=fields.get("name") or params.name or file_name,
        kind=fields.get("kind") or params.kind,
        content_type=fields.get("content_type") or params.content_type or file_type,
        storage=fields.get("storage") or params.storage,
        expires_in_s=expires,
        sha256=fields.get("sha256") or params.sha256,
        producer=params.producer,
        key=params.key,
    )
