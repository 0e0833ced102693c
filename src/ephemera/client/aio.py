"""The asyncio client, for the operations an event loop must not block on.

These are the ones that move bytes or wait: uploads, downloads, waiting for a task, and
holding a lease while other work runs; with them, what an async app (a FastAPI front-end)
needs around them: sessions, artifact metadata and task submission. Administration, the
import ledger and the worker API are for scripts and worker processes, which use
:class:`~ephemera.client.Client`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

import httpx2

from ephemera.client.common import (
    POLL_S,
    Endpoint,
    answer_of,
    given,
    headers_for,
    query,
    seg,
    unreachable,
)
from ephemera.client.errors import ServerUnreachable, WaitTimeout, error_of
from ephemera.client.events import RECONNECT_FOR_S, AsyncEventStream
from ephemera.client.lease import AsyncHeldLease
from ephemera.client.records import (
    DownloadLink,
    artifact_of,
    close_report_of,
    download_link_of,
    lease_of,
    session_of,
    task_of,
)
from ephemera.client.resume import ResumeStore, body_of
from ephemera.client.retry import RETRIES, aretried, idempotency_headers
from ephemera.client.sync import TaskInputSpec, task_body
from ephemera.client.transfer import (
    PartFile,
    PathLike,
    Source,
    Verifier,
    averified,
    etag_sha256,
    mismatch,
    outgoing,
    replayable,
)
from ephemera.client.tus import TusOptions, arun, blocking, over_tus, tus_upload
from ephemera.client.waiting import ProgressCallback, TaskWatch
from ephemera.errors import EphemeraError, InvalidInput, NotFound
from ephemera.models import Artifact, CloseReport, CreatedSession, Lease, Session, Task

AsyncSource = Source | AsyncIterable[bytes]


class AsyncClient:
    """:class:`~ephemera.client.Client`'s byte-moving and waiting operations, for asyncio."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.endpoint = Endpoint.of(base_url)
        self.base_url = self.endpoint.api
        self._retries = retries
        self._http = httpx2.AsyncClient(
            base_url=self.endpoint.api,
            headers=headers_for(token),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        return answer_of(response)

    async def _idempotent(self, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
        if key is None:
            return await self._call(method, path, **kwargs)
        headers = idempotency_headers(key)
        return await aretried(
            lambda: self._call(method, path, headers=headers, **kwargs), self._retries
        )

    async def _pages(self, path: str, page_size: int, **filters: Any) -> AsyncIterator[Any]:
        cursor: str | None = None
        while True:
            params = query(**filters, cursor=cursor, limit=page_size)
            answer = await self._call("GET", path, params=params)
            for item in answer["items"]:
                yield item
            cursor = answer.get("next_cursor")
            if not cursor:
                return

    # -- sessions -------------------------------------------------------------------------

    async def create_session(
        self,
        id: str | None = None,
        *,
        label: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idle_timeout_s: int | EllipsisType | None = ...,
        max_age_s: int | EllipsisType | None = ...,
        idempotency_key: str | None = None,
    ) -> CreatedSession:
        body: dict[str, Any] = given(id=id, label=label, metadata=metadata)
        if idle_timeout_s is not ...:
            body["idle_timeout_s"] = idle_timeout_s
        if max_age_s is not ...:
            body["max_age_s"] = max_age_s
        answer = await self._idempotent(idempotency_key, "POST", "/sessions", json=body)
        return CreatedSession(session_of(answer), answer["token"])

    async def get_session(self, session_id: str) -> Session:
        return session_of(await self._call("GET", f"/sessions/{seg(session_id)}"))

    async def close_session(self, session_id: str, *, force: bool = False) -> CloseReport:
        path = f"/sessions/{seg(session_id)}"
        return close_report_of(await self._call("DELETE", path, params=query(force=force)))

    # -- artifacts ------------------------------------------------------------------------

    async def upload_artifact(
        self,
        session_id: str,
        source: AsyncSource,
        *,
        name: str | None = None,
        kind: str = "input",
        content_type: str | None = None,
        storage: str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
        producer: str | None = None,
        idempotency_key: str | None = None,
        resumable: bool | None = None,
        chunk_size: int | None = None,
        resume_store: ResumeStore | PathLike | None = None,
    ) -> Artifact:
        """As :meth:`Client.upload_artifact`; files are read and hashed off the loop."""
        if await asyncio.to_thread(over_tus, source, resumable, producer):
            options = TusOptions.of(chunk_size, resume_store)
            if isinstance(source, AsyncIterable):
                source = blocking(source, asyncio.get_running_loop())
            tus_body = await asyncio.to_thread(body_of, source, sha256)
            upload = tus_upload(
                self.base_url,
                session_id,
                tus_body,
                options,
                name=name,
                kind=kind,
                content_type=content_type,
                storage=storage,
                expires_in_s=expires_in_s,
            )
            return artifact_of(await arun(self._http, upload.steps()))
        hashed: Any = None
        rewind = None
        if isinstance(source, AsyncIterable):
            chunks: AsyncIterable[bytes] | bytes = source
            if sha256 is None:
                hashed = hashlib.sha256()
                chunks = _hashing(source, hashed)
            size_name = None
        else:
            body = await asyncio.to_thread(outgoing, source, sha256)
            sha256, hashed, size_name = body.sha256, body.hashed, body.name
            chunks = _off_the_loop(body.chunks)
            if idempotency_key is not None:
                rewind = replayable(source)
        artifact_name = name or size_name
        if not artifact_name:
            raise InvalidInput("an upload needs a name (only a path brings its own)")
        params = query(
            name=artifact_name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
            producer=producer,
        )
        path = f"/sessions/{seg(session_id)}/artifacts"
        headers = idempotency_headers(idempotency_key)
        first = True

        async def send() -> Any:
            nonlocal first
            content = chunks
            if not first and rewind is not None:
                again = await asyncio.to_thread(outgoing, rewind(), sha256)
                content = _off_the_loop(again.chunks)
            first = False
            return await self._call("POST", path, params=params, content=content, headers=headers)

        answer = await (send() if rewind is None else aretried(send, self._retries))
        if hashed is not None and answer["sha256"] != hashed.hexdigest():
            await self._call("DELETE", f"{path}/{seg(answer['id'])}")
            raise mismatch(hashed.hexdigest(), answer["sha256"], f"upload to {path}")
        return artifact_of(answer)

    async def get_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}"
        return artifact_of(await self._call("GET", path))

    async def list_artifacts(
        self, session_id: str, *, kind: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[Artifact]:
        path = f"/sessions/{seg(session_id)}/artifacts"
        async for item in self._pages(path, page_size, kind=kind):
            yield artifact_of(item)

    async def link(
        self,
        session_id: str,
        artifact_id: str,
        expires_in_s: int,
        disposition: str | None = None,
    ) -> DownloadLink:
        """As :meth:`Client.link`."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}/links"
        body = given(expires_in_s=expires_in_s, disposition=disposition)
        return download_link_of(await self._call("POST", path, json=body))

    async def iter_artifact(self, session_id: str, artifact_id: str) -> AsyncGenerator[bytes, None]:
        """The bytes as they arrive, verified as :meth:`Client.iter_artifact` does."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}/content"
        try:
            async with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_of(response)
                verifier = Verifier(
                    etag_sha256(response.headers.get("etag")), f"artifact {artifact_id}"
                )
                async for chunk in averified(response.aiter_bytes(), verifier):
                    yield chunk
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    async def download_artifact(self, session_id: str, artifact_id: str, dest: PathLike) -> Path:
        """Into ``dest``, verified; on any failure ``dest`` is left as it was."""
        part = await asyncio.to_thread(PartFile, dest)
        chunks = self.iter_artifact(session_id, artifact_id)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(part.write, chunk)
        except BaseException:
            await chunks.aclose()
            await asyncio.to_thread(part.discard)
            raise
        return await asyncio.to_thread(part.commit)

    async def read_artifact(self, session_id: str, artifact_id: str) -> bytes:
        return b"".join([c async for c in self.iter_artifact(session_id, artifact_id)])

    # -- leases ---------------------------------------------------------------------------

    async def take_lease(
        self,
        session_id: str,
        *,
        ttl_s: int | None = None,
        artifact_ids: Sequence[str] = (),
        holder: str = "",
    ) -> Lease:
        body = given(ttl_s=ttl_s, holder=holder, artifact_ids=list(artifact_ids))
        path = f"/sessions/{seg(session_id)}/leases"
        return lease_of(await self._call("POST", path, json=body))

    async def renew_lease(
        self, session_id: str, lease_id: str, *, ttl_s: int | None = None
    ) -> Lease:
        path = f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}/renew"
        return lease_of(await self._call("POST", path, json=given(ttl_s=ttl_s)))

    async def release_lease(self, session_id: str, lease_id: str) -> None:
        await self._call("DELETE", f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}")

    async def lease(
        self,
        session_id: str,
        *,
        ttl_s: int = 60,
        artifact_ids: Sequence[str] = (),
        holder: str = "",
    ) -> AsyncHeldLease:
        """``async with await client.lease(...)``: as :meth:`Client.lease`, renewed by a task."""
        taken = await self.take_lease(
            session_id, ttl_s=ttl_s, artifact_ids=artifact_ids, holder=holder
        )
        return AsyncHeldLease(
            taken,
            ttl_s,
            renew=lambda: self.renew_lease(session_id, taken.id, ttl_s=ttl_s),
            release=lambda: self.release_lease(session_id, taken.id),
        )

    # -- tasks ----------------------------------------------------------------------------

    async def submit_task(
        self,
        session_id: str,
        processor: str,
        inputs: Sequence[TaskInputSpec] = (),
        params: Mapping[str, Any] | None = None,
        *,
        max_attempts: int | None = None,
        reference_tokens: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        body = task_body(processor, inputs, params, max_attempts, reference_tokens)
        path = f"/sessions/{seg(session_id)}/tasks"
        return task_of(await self._idempotent(idempotency_key, "POST", path, json=body))

    async def get_task(self, session_id: str, task_id: str) -> Task:
        path = f"/sessions/{seg(session_id)}/tasks/{seg(task_id)}"
        return task_of(await self._call("GET", path))

    def events(
        self,
        session_id: str,
        *,
        last_event_id: int | None = None,
        reconnect_for_s: float = RECONNECT_FOR_S,
    ) -> AsyncEventStream:
        """As :meth:`Client.events`: ``async with client.events(sid) as events``, then
        ``async for event in events``."""
        return AsyncEventStream(
            self._http, session_id, last_event_id, reconnect_for_s=reconnect_for_s
        )

    async def wait_task(
        self,
        session_id: str,
        task_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll_s: float = POLL_S,
    ) -> Task:
        """As :meth:`Client.wait_task`, without blocking the loop."""
        watch = TaskWatch(task_id, timeout_s, on_progress)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._wait(session_id, watch, poll_s)
        except TimeoutError as exc:
            if isinstance(exc, WaitTimeout):
                raise
            state = watch.task.state if watch.task is not None else "unknown"
            raise WaitTimeout(f"task {task_id} still {state} after {timeout_s} s") from None

    async def _wait(self, session_id: str, watch: TaskWatch, poll_s: float) -> Task:
        try:
            stream = await self.events(session_id).open()
        except EphemeraError:
            return await self._poll_task(session_id, watch, poll_s)
        async with stream:
            if watch.seen(await self.get_task(session_id, watch.task_id)):
                return _finished(watch)
            try:
                async for event in stream:
                    if watch.needs_reading(event):
                        task = await self.get_task(session_id, watch.task_id)
                    elif (stepped := watch.stepped(event)) is not None:
                        task = stepped
                    else:
                        continue
                    if watch.seen(task):
                        return _finished(watch)
            except (ServerUnreachable, NotFound):
                pass  # the events are lost for good: the task's own answer decides
        return await self._poll_task(session_id, watch, poll_s)

    async def _poll_task(self, session_id: str, watch: TaskWatch, poll_s: float) -> Task:
        while not watch.seen(await self.get_task(session_id, watch.task_id)):
            await asyncio.sleep(poll_s)
        return _finished(watch)


def _finished(watch: TaskWatch) -> Task:
    assert watch.task is not None
    return watch.task


async def _hashing(chunks: AsyncIterable[bytes], digest: Any) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk


async def _off_the_loop(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A blocking source (a file), read in a worker thread chunk by chunk."""
    iterator: Iterator[bytes] = iter(chunks)
    while (chunk := await asyncio.to_thread(next, iterator, None)) is not None:
        yield chunk
