"""Uploads over tus 1.0 (the server's ``/sessions/{sid}/uploads``), for large files.

The protocol is written once, as a generator of steps (an HTTP call, a pause) that is given
each call's answer; :func:`run` drives it with the sync client's connection pool and
:func:`arun` with the async one's, reading the source in worker threads there.

One upload::

    creation (Upload-Length, or Upload-Defer-Length for a one-pass source; the metadata and
    the whole body's sha256 where it is known) --> PATCH a chunk at a time, each with
    Upload-Checksum --> on a failure that may pass (a cut connection, 423, 409, 5xx): pause,
    HEAD for the offset the server recorded, PATCH from there; a bounded number of failures
    in a row, then the error --> the answer's Ephemera-Artifact-Id, fetched as the artifact.

An upload that expired or was removed under it (404, 410) is started over once, from a
source that can be read again; otherwise it raises. A checksum mismatch (460), a body too
large (413), another refusal or a source that fails ends the upload (terminated on the
server) and raises; so do failures that may pass once the attempts are spent, unless the
upload's URL is kept in a resume store for a later run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2

from ephemera.client.common import answer_of, seg, unreachable
from ephemera.client.errors import ServerUnreachable
from ephemera.client.resume import Body, ResumeStore, known_size
from ephemera.client.transfer import PathLike, Source, mismatch
from ephemera.errors import (
    Conflict,
    EphemeraError,
    InvalidInput,
    NotFound,
    RequestTimeout,
    Unavailable,
)

MiB = 1024 * 1024
# Above this size (when the size is known), upload_artifact goes over tus by itself.
TUS_THRESHOLD = 64 * MiB
TUS_CHUNK_SIZE = 8 * MiB
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
ARTIFACT_ID = "Ephemera-Artifact-Id"
# What may pass with time: retried (after HEAD) up to ``attempts`` times in a row.
PASSING = (ServerUnreachable, Unavailable, Conflict, RequestTimeout)


@dataclass(frozen=True)
class TusOptions:
    chunk_size: int = TUS_CHUNK_SIZE
    attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    store: ResumeStore | None = None

    @classmethod
    def of(cls, chunk_size: int | None, resume_store: ResumeStore | PathLike | None) -> TusOptions:
        if chunk_size is not None and chunk_size < 1:
            raise InvalidInput("chunk_size must be a positive number of bytes")
        store = resume_store
        if store is not None and not isinstance(store, ResumeStore):
            store = ResumeStore(store)
        return cls(chunk_size=chunk_size or TUS_CHUNK_SIZE, store=store)

    def pause_s(self, failures: int, error: Exception) -> float:
        pause = min(self.backoff_s * 2.0 ** (failures - 1), self.backoff_max_s)
        if isinstance(error, Unavailable) and error.retry_after_s:
            pause = max(pause, min(float(error.retry_after_s), 60.0))
        return pause


def over_tus(
    source: Source | AsyncIterable[bytes], resumable: bool | None, producer: str | None
) -> bool:
    """``resumable``: True, False, or None for "when the size is known and large"."""
    if producer is not None:
        if resumable:
            raise InvalidInput("a resumable upload carries no producer: upload it plainly")
        return False
    if resumable is not None or isinstance(source, AsyncIterable):
        return bool(resumable)
    size = known_size(source)
    return size is not None and size >= TUS_THRESHOLD


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True)
class Pause:
    seconds: float


Steps = Generator[Call | Pause, httpx2.Response, Any]


class _Gone(Exception):
    """The upload expired or was removed while it was being sent."""

    def __init__(self, error: NotFound) -> None:
        super().__init__(str(error))
        self.error = error


def tus_upload(
    api: str,
    session_id: str,
    body: Body,
    options: TusOptions,
    *,
    name: str | None,
    kind: str,
    content_type: str | None,
    storage: str | None,
    expires_in_s: int | None,
) -> TusUpload:
    """The upload of ``body`` into the session at the API ``api``, with its artifact's
    fields as the upload's metadata."""
    filename = name or body.name
    if not filename:
        body.close()
        raise InvalidInput("an upload needs a name (only a path brings its own)")
    fields = {
        "filename": filename,
        "kind": kind,
        "content_type": content_type,
        "storage": storage,
        "expires_in_s": None if expires_in_s is None else str(expires_in_s),
    }
    meta = {k: v for k, v in fields.items() if v is not None}
    return TusUpload(f"{api}/sessions/{seg(session_id)}/uploads", body, meta, options)


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())


class TusUpload:
    """One upload of ``body`` to ``endpoint`` (the session's absolute ``…/uploads`` URL)."""

    def __init__(
        self, endpoint: str, body: Body, meta: dict[str, str], options: TusOptions
    ) -> None:
        self.endpoint = endpoint
        self.artifacts = endpoint.removesuffix("/uploads") + "/artifacts"
        self.body = body
        self.options = options
        self.metadata = encode_metadata(
            {**meta, **({"sha256": body.sha256} if body.sha256 else {})}
        )
        self.key: str | None = None
        if options.store is not None and body.identity is not None:
            self.key = ResumeStore.fingerprint(endpoint, body.identity, self.metadata)

    def steps(self) -> Steps:
        try:
            return (yield from self._run())
        finally:
            self.body.close()

    def _run(self) -> Steps:
        started_over = False
        while True:
            url, offset, artifact_id = yield from self._open()
            try:
                if artifact_id is None:
                    artifact_id = yield from self._send(url, offset)
                break
            except _Gone as gone:
                self._forget()
                if started_over or not self.body.rereadable:
                    raise gone.error from None
                started_over = True
            except Exception as exc:
                # An upload whose URL is stored stays for a later run to resume, when what
                # stopped it may pass; any other is removed now rather than at its expiry.
                if self.stored and isinstance(exc, PASSING):
                    raise
                self._forget()
                yield from self._terminate(url)
                raise exc
        artifact = (yield from self._call("GET", f"{self.artifacts}/{seg(artifact_id)}")).json()
        self._forget()
        hashed = self.body.hashed()
        if hashed is not None and artifact["sha256"] != hashed:
            yield from self._call("DELETE", f"{self.artifacts}/{seg(artifact_id)}")
            raise mismatch(hashed, artifact["sha256"], f"upload to {self.endpoint}")
        return artifact

    @property
    def stored(self) -> bool:
        return self.options.store is not None and self.key is not None

    def _open(self) -> Generator[Call | Pause, httpx2.Response, tuple[str, int, str | None]]:
        """The stored upload of this source if the server still has it whole, else a new one."""
        store = self.options.store
        known_url = store.get(self.key) if store is not None and self.key is not None else None
        if known_url is not None:
            try:
                head = yield from self._call("HEAD", known_url)
            except NotFound:
                self._forget()
            else:
                if head.headers.get("Upload-Length") == str(self.body.size):
                    offset = int(head.headers["Upload-Offset"])
                    return known_url, offset, head.headers.get(ARTIFACT_ID)
                self._forget()
                yield from self._terminate(known_url)
        headers = {"Upload-Metadata": self.metadata}
        if self.body.size is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(self.body.size)
        created = yield from self._call("POST", self.endpoint, headers)
        url = str(httpx2.URL(self.endpoint).join(created.headers["Location"]))
        if store is not None and self.key is not None:
            store.put(self.key, url)
        return url, int(created.headers.get("Upload-Offset", "0")), created.headers.get(ARTIFACT_ID)

    def _send(self, url: str, offset: int) -> Generator[Call | Pause, httpx2.Response, str]:
        """PATCH from ``offset`` to the end; the artifact ID the last answer names."""
        failures, ask_offset = 0, False
        while True:
            try:
                if ask_offset:
                    head = yield from self._call("HEAD", url)
                    offset = int(head.headers["Upload-Offset"])
                    if head.headers.get(ARTIFACT_ID):
                        return head.headers[ARTIFACT_ID]
                    ask_offset = False
                answer = yield from self._call("PATCH", url, *self._chunk(offset))
                offset, failures = int(answer.headers["Upload-Offset"]), 0
                if answer.headers.get(ARTIFACT_ID):
                    return answer.headers[ARTIFACT_ID]
            except NotFound as exc:
                raise _Gone(exc) from None
            except PASSING as exc:
                failures += 1
                if failures >= self.options.attempts:
                    raise
                yield Pause(self.options.pause_s(failures, exc))
                ask_offset = True

    def _chunk(self, offset: int) -> tuple[dict[str, str], bytes]:
        data = self.body.read(offset, self.options.chunk_size)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        headers = {
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_STREAM,
            "Upload-Checksum": f"sha256 {digest}",
        }
        # A one-pass source tells its length with its last chunk (creation deferred it).
        if self.body.size is not None and offset + len(data) == self.body.size:
            headers["Upload-Length"] = str(self.body.size)
        return headers, data

    def _terminate(self, url: str) -> Steps:
        """Best effort: the server removes an abandoned upload at its expiry anyway."""
        with contextlib.suppress(EphemeraError):
            yield from self._call("DELETE", url)

    def _forget(self) -> None:
        if self.options.store is not None and self.key is not None:
            self.options.store.forget(self.key)

    def _call(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Generator[Call | Pause, httpx2.Response, httpx2.Response]:
        response = yield Call(method, url, {**TUS_HEADERS, **(headers or {})}, content)
        answer_of(response)  # raises the library error an error answer stands for
        return response


def run(http: httpx2.Client, steps: Steps) -> Any:
    """Drive ``steps`` with a sync connection pool."""
    reply: httpx2.Response | None = None
    error: ServerUnreachable | None = None
    try:
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value
            reply, error = None, None
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                reply = http.request(
                    step.method, step.url, headers=step.headers, content=step.content
                )
            except httpx2.TransportError as exc:
                error = unreachable(step.url, exc)
    finally:
        steps.close()


@dataclass
class _Done:
    value: Any


def _advance(
    steps: Steps, reply: httpx2.Response | None, error: ServerUnreachable | None
) -> Call | Pause | _Done:
    # StopIteration cannot cross a thread's future: the result is wrapped instead.
    try:
        return steps.throw(error) if error is not None else steps.send(reply)  # type: ignore[arg-type]
    except StopIteration as done:
        return _Done(done.value)


async def arun(http: httpx2.AsyncClient, steps: Steps) -> Any:
    """Drive ``steps`` with an async connection pool; each step (reading and hashing the
    source) runs in a worker thread, so the loop only waits on the network."""
    reply: httpx2.Response | None = None
    error: ServerUnreachable | None = None
    try:
        while True:
            step = await asyncio.to_thread(_advance, steps, reply, error)
            reply, error = None, None
            if isinstance(step, _Done):
                return step.value
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                continue
            try:
                reply = await http.request(
                    step.method, step.url, headers=step.headers, content=step.content
                )
            except httpx2.TransportError as exc:
                error = unreachable(step.url, exc)
    finally:
        await asyncio.to_thread(steps.close)


def blocking(chunks: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """An async source read from a worker thread: each chunk is awaited on ``loop``."""
    iterator: AsyncIterator[bytes] = aiter(chunks)
    while (chunk := asyncio.run_coroutine_threadsafe(_anext(iterator), loop).result()) is not None:
        yield chunk


async def _anext(iterator: AsyncIterator[bytes]) -> bytes | None:
    return await anext(iterator, None)
