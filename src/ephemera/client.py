"""The HTTP client: speaks ephemera's API from another process or machine.

One method per API operation; answers become the library's records (``ephemera.models``) and
error answers the library's exceptions (``ephemera.errors``, by the body's error code), so
code written against :class:`~ephemera.Store` handles a remote server's errors the same way.
Uploads stream: a file is sent in chunks, never read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import EllipsisType, TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx2

from ephemera.errors import (
    ArtifactCorrupt,
    ChecksumMismatch,
    Conflict,
    EphemeraError,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    RequestTimeout,
    SchemaOutOfDate,
    StorageError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from ephemera.models import (
    Artifact,
    ArtifactState,
    CreatedSession,
    FollowUp,
    Imported,
    ImportEntry,
    ImportOrigin,
    Session,
    SessionState,
    StorageClass,
    Task,
    TaskInput,
    TaskOutput,
    TaskState,
)

API_PREFIX = "/api/v1"
CHUNK_SIZE = 1024 * 1024


class ServerUnreachable(StorageError):
    """The server could not be reached, or the connection broke before it answered."""

    code = "server_unreachable"


# The server's error codes, for the ones the library defines; others go by status.
_BY_CODE: dict[str, type[EphemeraError]] = {
    cls.code: cls
    for cls in (
        ArtifactCorrupt,
        ChecksumMismatch,
        Conflict,
        Forbidden,
        InsufficientStorage,
        InvalidInput,
        NotFound,
        RequestTimeout,
        SchemaOutOfDate,
        StorageError,
        TooLarge,
        Unauthenticated,
    )
}
_BY_STATUS: dict[int, type[EphemeraError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
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


def _chunks(data: BinaryIO | Iterable[bytes] | bytes) -> Iterable[bytes]:
    if isinstance(data, bytes):
        return [data]
    if hasattr(data, "read"):
        source = data

        def read() -> Iterator[bytes]:
            while chunk := source.read(CHUNK_SIZE):
                yield chunk

        return read()
    return data


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def session_of(body: Mapping[str, Any]) -> Session:
    return Session(
        id=body["id"],
        label=body.get("label"),
        metadata=dict(body.get("metadata") or {}),
        state=SessionState(body["state"]),
        created_at=_time(body["created_at"]),
        last_activity_at=_time(body["last_activity_at"]),
        idle_timeout_s=body.get("idle_timeout_s"),
        max_age_s=body.get("max_age_s"),
        expires_at=_maybe_time(body.get("expires_at")),
        artifact_count=int(body.get("artifact_count", 0)),
        total_bytes=int(body.get("total_bytes", 0)),
    )


def artifact_of(body: Mapping[str, Any]) -> Artifact:
    return Artifact(
        id=body["id"],
        session_id=body["session_id"],
        name=body["name"],
        kind=body["kind"],
        content_type=body["content_type"],
        size=int(body["size"]),
        sha256=body["sha256"],
        storage_class=StorageClass(body["storage_class"]),
        state=ArtifactState(body["state"]),
        created_at=_time(body["created_at"]),
        expires_at=_maybe_time(body.get("expires_at")),
        retain_until=_maybe_time(body.get("retain_until")),
        producer=body.get("producer"),
        integrity=body.get("integrity"),
        integrity_error=body.get("integrity_error"),
        verified_at=_maybe_time(body.get("verified_at")),
    )


def import_entry_of(session_id: str, body: Mapping[str, Any]) -> ImportEntry:
    origin = body["origin"]
    return ImportEntry(
        session_id=session_id,
        origin=ImportOrigin(
            source=origin["source"],
            path=origin["path"],
            size=int(origin["size"]),
            mtime_ns=int(origin["mtime_ns"]),
        ),
        artifact_id=body["artifact_id"],
        sha256=body["sha256"],
        replaces=body.get("replaces"),
        imported_at=_time(body["imported_at"]),
        task_id=body.get("task_id"),
    )


def task_of(body: Mapping[str, Any]) -> Task:
    progress = body.get("progress") or {}
    return Task(
        id=body["id"],
        session_id=body["session_id"],
        processor=body["processor"],
        params=dict(body.get("params") or {}),
        inputs=tuple(TaskInput(i["session_id"], i["artifact_id"]) for i in body["inputs"]),
        state=TaskState(body["state"]),
        progress_done=int(progress.get("done", 0)),
        progress_total=progress.get("total"),
        result=body.get("result"),
        error=body.get("error"),
        outputs=tuple(
            TaskOutput(
                artifact_id=o["artifact_id"],
                name=o["name"],
                kind=o["kind"],
                content_type=o["content_type"],
                size=int(o["size"]),
                sha256=o["sha256"],
                removed=bool(o.get("removed", False)),
            )
            for o in body.get("outputs") or ()
        ),
        attempts=int(body["attempts"]),
        max_attempts=int(body["max_attempts"]),
        worker=body.get("worker"),
        created_at=_time(body["created_at"]),
        started_at=_maybe_time(body.get("started_at")),
        finished_at=_maybe_time(body.get("finished_at")),
    )


def _seg(value: str) -> str:
    """One path segment, whatever it holds: an ID can never reach another route."""
    if value in ("", ".", ".."):
        raise InvalidInput(f"invalid ID {value!r}")
    return quote(value, safe="")


def _query(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Client:
    """A connection to one ephemera server, with one credential (a session token or a key).

    Thread-safe (the underlying connection pool is); use it as a context manager, or call
    :meth:`close`. Transport failures raise :class:`ServerUnreachable`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.endswith(API_PREFIX):
            base += API_PREFIX
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base
        self._http = httpx2.Client(
            base_url=base, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise ServerUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response.json() if response.content else None

    def _pages(self, path: str, page_size: int, **filters: Any) -> Iterator[dict[str, Any]]:
        """The items of a paginated list, one page at a time, following its cursors."""
        cursor: str | None = None
        while True:
            answer = self._call(
                "GET", path, params=_query(**filters, cursor=cursor, limit=page_size)
            )
            yield from answer["items"]
            cursor = answer.get("next_cursor")
            if not cursor:
                return

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        id: str | None = None,
        *,
        label: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idle_timeout_s: int | EllipsisType | None = ...,
        max_age_s: int | EllipsisType | None = ...,
    ) -> CreatedSession:
        """A new session and its token (shown once). Timeouts left out take the server's
        defaults; ``None`` means never."""
        body: dict[str, Any] = _query(id=id, label=label, metadata=metadata)
        if idle_timeout_s is not ...:
            body["idle_timeout_s"] = idle_timeout_s
        if max_age_s is not ...:
            body["max_age_s"] = max_age_s
        answer = self._call("POST", "/sessions", json=body)
        return CreatedSession(session_of(answer), answer["token"])

    def get_session(self, session_id: str) -> Session:
        return session_of(self._call("GET", f"/sessions/{_seg(session_id)}"))

    # -- artifacts ------------------------------------------------------------------------

    def upload_artifact(
        self,
        session_id: str,
        file: BinaryIO | Iterable[bytes] | bytes,
        *,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
    ) -> Artifact:
        """Stream ``file`` (a binary file or chunks) into a new artifact; with ``sha256``, the
        server stores it only if the bytes hash to that."""
        params = _query(
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
        )
        answer = self._call(
            "POST",
            f"/sessions/{_seg(session_id)}/artifacts",
            params=params,
            content=_chunks(file),
        )
        return artifact_of(answer)

    def list_artifacts(
        self, session_id: str, *, kind: str | None = None, page_size: int = 1000
    ) -> Iterator[Artifact]:
        """Every ready artifact of the session (of one kind), page by page."""
        for item in self._pages(f"/sessions/{_seg(session_id)}/artifacts", page_size, kind=kind):
            yield artifact_of(item)

    # -- the import ledger ----------------------------------------------------------------

    def import_file(
        self,
        session_id: str,
        file: BinaryIO | Iterable[bytes] | bytes,
        *,
        origin: ImportOrigin,
        name: str,
        kind: str = "input",
        sha256: str | None = None,
        then: FollowUp | None = None,
    ) -> Imported:
        """Import one file version: stored once per origin (``created`` False when the ledger
        already held it, and the body was not read), then ``then`` submitted for it."""
        params = _query(
            source=origin.source,
            path=origin.path,
            size=origin.size,
            mtime_ns=origin.mtime_ns,
            name=name,
            kind=kind,
            sha256=sha256,
            then=then.processor if then else None,
        )
        # No Content-Type: the server guesses it from the name, as for any raw upload.
        headers = {}
        if then is not None:
            headers["Ephemera-Then-Params"] = json.dumps(then.params)
        answer = self._call(
            "POST",
            f"/sessions/{_seg(session_id)}/imports",
            params=params,
            content=_chunks(file),
            headers=headers,
        )
        return Imported(import_entry_of(session_id, answer["entry"]), bool(answer["created"]))

    def list_imports(
        self, session_id: str, source: str | None = None, *, page_size: int = 1000
    ) -> Iterator[ImportEntry]:
        """Every ledger entry of the session (of one source), oldest first, page by page."""
        path = f"/sessions/{_seg(session_id)}/imports"
        for item in self._pages(path, page_size, source=source):
            yield import_entry_of(session_id, item)

    def follow_up_import(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        """Submit ``then`` for an entry that has no task yet; one that has keeps its own."""
        answer = self._call(
            "POST",
            f"/sessions/{_seg(session_id)}/imports/{_seg(artifact_id)}/follow-up",
            json={"processor": then.processor, "params": then.params},
        )
        return import_entry_of(session_id, answer)

    # -- tasks and processors -------------------------------------------------------------

    def submit_task(
        self,
        session_id: str,
        processor: str,
        inputs: Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
        *,
        max_attempts: int | None = None,
    ) -> Task:
        body = _query(
            processor=processor,
            inputs=list(inputs),
            params=dict(params or {}),
            max_attempts=max_attempts,
        )
        return task_of(self._call("POST", f"/sessions/{_seg(session_id)}/tasks", json=body))

    def get_task(self, session_id: str, task_id: str) -> Task:
        return task_of(self._call("GET", f"/sessions/{_seg(session_id)}/tasks/{_seg(task_id)}"))

    def get_processor(self, name: str) -> dict[str, Any]:
        """An enabled processor's description (its parameters' JSON schema); NotFound else."""
        answer: dict[str, Any] = self._call("GET", f"/processors/{_seg(name)}")
        return answer
