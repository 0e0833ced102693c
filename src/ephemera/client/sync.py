"""The synchronous client: one method per operation of the API.

Answers become the library's records (``ephemera.models``) and error answers the library's
exceptions (``ephemera.errors``, by the body's error code), so code written against
:class:`~ephemera.Store` handles a remote server's errors the same way. Uploads and downloads
stream: a file is sent and received in chunks, never held whole, and both are checked
against the sha256.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

import httpx2

from ephemera.client.common import (
    POLL_S,
    Endpoint,
    answer_of,
    headers_for,
    query,
    seg,
    unreachable,
)
from ephemera.client.errors import WaitTimeout, error_of
from ephemera.client.lease import HeldLease
from ephemera.client.records import (
    ListedSession,
    artifact_of,
    audit_entry_of,
    claim_of,
    close_report_of,
    import_entry_of,
    lease_of,
    listed_session_of,
    session_of,
    task_of,
)
from ephemera.client.transfer import (
    Outgoing,
    PartFile,
    PathLike,
    Source,
    Verifier,
    etag_sha256,
    into_file,
    mismatch,
    outgoing,
    verified,
)
from ephemera.errors import InvalidInput
from ephemera.models import (
    Artifact,
    AuditEntry,
    Claim,
    CloseReport,
    CreatedSession,
    FollowUp,
    Imported,
    ImportEntry,
    ImportOrigin,
    Lease,
    Session,
    Task,
)

# An upload's body, or a task's input: (session, artifact) for an input in another session.
TaskInputSpec = str | tuple[str, str]
ProgressCallback = Callable[[Task], object]


class Client:
    """A connection to one ephemera server, with one credential (a session token or a key).

    Thread-safe (the underlying connection pool is); use it as a context manager, or call
    :meth:`close`. Transport failures raise :class:`~ephemera.client.ServerUnreachable`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.endpoint = Endpoint.of(base_url)
        self.base_url = self.endpoint.api
        self._timeout = timeout
        self._http = httpx2.Client(
            base_url=self.endpoint.api,
            headers=headers_for(token),
            timeout=timeout,
            transport=transport,
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
            raise unreachable(self.base_url, exc) from exc
        return answer_of(response)

    @contextmanager
    def _stream(self, path: str, **kwargs: Any) -> Iterator[httpx2.Response]:
        """A GET whose body is read as it arrives; error answers raise before it is."""
        try:
            with self._http.stream("GET", path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                yield response
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    def _pages(self, path: str, page_size: int, **filters: Any) -> Iterator[dict[str, Any]]:
        """The items of a paginated list, one page at a time, following its cursors."""
        cursor: str | None = None
        while True:
            answer = self._call(
                "GET", path, params=query(**filters, cursor=cursor, limit=page_size)
            )
            yield from answer["items"]
            cursor = answer.get("next_cursor")
            if not cursor:
                return

    def _send(
        self,
        path: str,
        body: Outgoing,
        params: Mapping[str, Any],
        recorded: Callable[[Any], str | None] = lambda answer: answer["sha256"],
        discard: Callable[[Any], object] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Stream an upload; bytes hashed on the way must be what the server ``recorded``,
        else what it stored is ``discard``-ed (where the API allows) and ChecksumMismatch
        raised."""
        answer = self._call(
            "POST",
            path,
            params=query(**params, sha256=body.sha256),
            content=body.chunks,
            **kwargs,
        )
        sent, stored = body.sent_sha256(), recorded(answer)
        if sent is not None and stored is not None and stored != sent:
            if discard is not None:
                discard(answer)
            raise mismatch(sent, stored, f"upload to {path}")
        return answer

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
        body: dict[str, Any] = query(id=id, label=label, metadata=metadata)
        if idle_timeout_s is not ...:
            body["idle_timeout_s"] = idle_timeout_s
        if max_age_s is not ...:
            body["max_age_s"] = max_age_s
        answer = self._call("POST", "/sessions", json=body)
        return CreatedSession(session_of(answer), answer["token"])

    def get_session(self, session_id: str) -> Session:
        return session_of(self._call("GET", f"/sessions/{seg(session_id)}"))

    def update_session(
        self,
        session_id: str,
        *,
        label: str | EllipsisType | None = ...,
        metadata: Mapping[str, Any] | EllipsisType = ...,
        idle_timeout_s: int | EllipsisType | None = ...,
        max_age_s: int | EllipsisType | None = ...,
    ) -> Session:
        """Change only what is given (``None``: no label, or a timeout of never)."""
        fields = {
            "label": label,
            "metadata": metadata,
            "idle_timeout_s": idle_timeout_s,
            "max_age_s": max_age_s,
        }
        body = {k: v for k, v in fields.items() if v is not ...}
        return session_of(self._call("PATCH", f"/sessions/{seg(session_id)}", json=body))

    def close_session(self, session_id: str, *, force: bool = False) -> CloseReport:
        """Close now; Conflict while leased, unless ``force`` (which cancels its tasks)."""
        answer = self._call("DELETE", f"/sessions/{seg(session_id)}", params=query(force=force))
        return close_report_of(answer)

    def list_all_sessions(self, *, page_size: int = 1000) -> Iterator[ListedSession]:
        """Every session of the server (an admin key), with its valid leases counted."""
        for item in self._pages("/admin/sessions", page_size):
            yield listed_session_of(item)

    # -- artifacts ------------------------------------------------------------------------

    def upload_artifact(
        self,
        session_id: str,
        source: Source,
        *,
        name: str | None = None,
        kind: str = "input",
        content_type: str | None = None,
        storage: str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
        producer: str | None = None,
    ) -> Artifact:
        """Stream ``source`` (a path, a binary file, bytes or chunks) into a new artifact.

        Its sha256 is computed here first (a path, bytes or a seekable file) and sent along,
        so the server stores the bytes only if they arrive intact; a one-pass source is
        hashed on the way and checked against what the server recorded. ``name`` defaults
        to a path's file name.
        """
        body = outgoing(source, sha256)
        artifact_name = name or body.name
        if not artifact_name:
            raise InvalidInput("an upload needs a name (only a path brings its own)")
        params = {
            "name": artifact_name,
            "kind": kind,
            "content_type": content_type,
            "storage": storage,
            "expires_in_s": expires_in_s,
            "producer": producer,
        }
        path = f"/sessions/{seg(session_id)}/artifacts"
        answer = self._send(
            path, body, params, discard=lambda a: self.delete_artifact(session_id, a["id"])
        )
        return artifact_of(answer)

    def list_artifacts(
        self, session_id: str, *, kind: str | None = None, page_size: int = 1000
    ) -> Iterator[Artifact]:
        """Every ready artifact of the session (of one kind), page by page."""
        for item in self._pages(f"/sessions/{seg(session_id)}/artifacts", page_size, kind=kind):
            yield artifact_of(item)

    def get_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}"
        return artifact_of(self._call("GET", path))

    def delete_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        """Delete now; Conflict while a lease or a running task protects it."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}"
        return artifact_of(self._call("DELETE", path))

    def retain_artifact(
        self, session_id: str, artifact_id: str, until: datetime | None
    ) -> Artifact:
        """Keep it past expiry and result retention until ``until`` (None: stop keeping it)."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}/retention"
        body = {"retain_until": until.isoformat() if until else None}
        return artifact_of(self._call("PUT", path, json=body))

    def iter_artifact(self, session_id: str, artifact_id: str) -> Iterator[bytes]:
        """The artifact's bytes as they arrive, checked against the ETag (its sha256): the
        last chunk comes only once the whole body hashed right, else ChecksumMismatch."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}/content"
        return self._verified_chunks(path, f"artifact {artifact_id}")

    def download_artifact(self, session_id: str, artifact_id: str, dest: PathLike) -> Path:
        """Stream the artifact into the file ``dest``, verified: on any failure (a sha256
        mismatch included) ``dest`` is left as it was and no partial file remains."""
        return _into(dest, self.iter_artifact(session_id, artifact_id))

    def read_artifact(self, session_id: str, artifact_id: str) -> bytes:
        """The whole artifact in memory, verified: for small ones (use the others for files)."""
        return b"".join(self.iter_artifact(session_id, artifact_id))

    def _verified_chunks(
        self, path: str, what: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[bytes]:
        with self._stream(path, headers=headers) as response:
            verifier = Verifier(etag_sha256(response.headers.get("etag")), what)
            try:
                yield from verified(response.iter_bytes(), verifier)
            except httpx2.TransportError as exc:
                raise unreachable(self.base_url, exc) from exc

    # -- leases ---------------------------------------------------------------------------

    def take_lease(
        self,
        session_id: str,
        *,
        ttl_s: int | None = None,
        artifact_ids: Sequence[str] = (),
        holder: str = "",
    ) -> Lease:
        """Protect the session (or only the named artifacts) until the lease expires."""
        body = query(ttl_s=ttl_s, holder=holder, artifact_ids=list(artifact_ids))
        return lease_of(self._call("POST", f"/sessions/{seg(session_id)}/leases", json=body))

    def renew_lease(self, session_id: str, lease_id: str, *, ttl_s: int | None = None) -> Lease:
        """Extend a valid lease; Conflict once it has expired."""
        path = f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}/renew"
        return lease_of(self._call("POST", path, json=query(ttl_s=ttl_s)))

    def release_lease(self, session_id: str, lease_id: str) -> None:
        self._call("DELETE", f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}")

    def get_lease(self, session_id: str, lease_id: str) -> Lease:
        path = f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}"
        return lease_of(self._call("GET", path))

    def list_leases(self, session_id: str) -> list[Lease]:
        answer = self._call("GET", f"/sessions/{seg(session_id)}/leases")
        return [lease_of(item) for item in answer["items"]]

    def lease(
        self,
        session_id: str,
        *,
        ttl_s: int = 60,
        artifact_ids: Sequence[str] = (),
        holder: str = "",
    ) -> HeldLease:
        """A lease for a ``with`` block: taken now, renewed in the background at a third of
        ``ttl_s``, released when the block ends however it ends. A lease that could not be
        renewed sets ``lost`` and raises LeaseLost when the block ends."""
        taken = self.take_lease(session_id, ttl_s=ttl_s, artifact_ids=artifact_ids, holder=holder)
        return HeldLease(
            taken,
            ttl_s,
            renew=lambda: self.renew_lease(session_id, taken.id, ttl_s=ttl_s),
            release=lambda: self.release_lease(session_id, taken.id),
        )

    # -- tasks and processors -------------------------------------------------------------

    def submit_task(
        self,
        session_id: str,
        processor: str,
        inputs: Sequence[TaskInputSpec] = (),
        params: Mapping[str, Any] | None = None,
        *,
        max_attempts: int | None = None,
        reference_tokens: Mapping[str, str] | None = None,
    ) -> Task:
        """Queue processing of ``inputs`` (artifact IDs of the session, or (session ID,
        artifact ID) of reference data, whose token goes in ``reference_tokens``)."""
        body = query(
            processor=processor,
            inputs=[
                i if isinstance(i, str) else {"session_id": i[0], "artifact_id": i[1]}
                for i in inputs
            ],
            params=dict(params or {}),
            max_attempts=max_attempts,
            reference_tokens=dict(reference_tokens) if reference_tokens else None,
        )
        return task_of(self._call("POST", f"/sessions/{seg(session_id)}/tasks", json=body))

    def get_task(self, session_id: str, task_id: str) -> Task:
        return task_of(self._call("GET", f"/sessions/{seg(session_id)}/tasks/{seg(task_id)}"))

    def list_tasks(
        self, session_id: str, *, state: str | None = None, page_size: int = 1000
    ) -> Iterator[Task]:
        for item in self._pages(f"/sessions/{seg(session_id)}/tasks", page_size, state=state):
            yield task_of(item)

    def cancel_task(self, session_id: str, task_id: str) -> Task:
        """Cancel now; Conflict once the task has finished."""
        path = f"/sessions/{seg(session_id)}/tasks/{seg(task_id)}/cancel"
        return task_of(self._call("POST", path))

    def wait_task(
        self,
        session_id: str,
        task_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll_s: float = POLL_S,
    ) -> Task:
        """The task once it has finished (succeeded, failed or cancelled: look at its state).

        ``on_progress`` is called with the task each time its state or progress changes.
        WaitTimeout after ``timeout_s``; the task itself goes on.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen: tuple[object, ...] | None = None
        for task in self._task_updates(session_id, task_id, poll_s):
            now_seen = (task.state, task.progress_done, task.progress_total)
            if on_progress is not None and now_seen != seen:
                on_progress(task)
            seen = now_seen
            if not task.state.active:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {task_id} still {task.state} after {timeout_s} s")
        raise AssertionError("unreachable: task updates never end")  # pragma: no cover

    def _task_updates(self, session_id: str, task_id: str, poll_s: float) -> Iterator[Task]:
        """The task, again and again: by polling (the one place that decides how)."""
        while True:
            yield self.get_task(session_id, task_id)
            time.sleep(poll_s)

    def list_processors(self) -> list[dict[str, Any]]:
        """Every enabled processor, with its description and its params' JSON schema."""
        items: list[dict[str, Any]] = self._call("GET", "/processors")["items"]
        return items

    def get_processor(self, name: str) -> dict[str, Any]:
        """An enabled processor's description (its parameters' JSON schema); NotFound else."""
        answer: dict[str, Any] = self._call("GET", f"/processors/{seg(name)}")
        return answer

    # -- the import ledger ----------------------------------------------------------------

    def import_file(
        self,
        session_id: str,
        file: Source,
        *,
        origin: ImportOrigin,
        name: str,
        kind: str = "input",
        sha256: str | None = None,
        then: FollowUp | None = None,
    ) -> Imported:
        """Import one file version: stored once per origin (``created`` False when the ledger
        already held it, and the body was not read), then ``then`` submitted for it."""
        params = {
            "source": origin.source,
            "path": origin.path,
            "size": origin.size,
            "mtime_ns": origin.mtime_ns,
            "name": name,
            "kind": kind,
            "then": then.processor if then else None,
        }
        # No Content-Type: the server guesses it from the name, as for any raw upload.
        headers = {}
        if then is not None:
            headers["Ephemera-Then-Params"] = json.dumps(then.params)
        answer = self._send(
            f"/sessions/{seg(session_id)}/imports",
            outgoing(file, sha256),
            params,
            # A version the ledger already held was not read: nothing of it to compare.
            recorded=lambda answer: answer["entry"]["sha256"] if answer["created"] else None,
            headers=headers,
        )
        return Imported(import_entry_of(session_id, answer["entry"]), bool(answer["created"]))

    def list_imports(
        self, session_id: str, source: str | None = None, *, page_size: int = 1000
    ) -> Iterator[ImportEntry]:
        """Every ledger entry of the session (of one source), oldest first, page by page."""
        path = f"/sessions/{seg(session_id)}/imports"
        for item in self._pages(path, page_size, source=source):
            yield import_entry_of(session_id, item)

    def follow_up_import(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        """Submit ``then`` for an entry that has no task yet; one that has keeps its own."""
        answer = self._call(
            "POST",
            f"/sessions/{seg(session_id)}/imports/{seg(artifact_id)}/follow-up",
            json={"processor": then.processor, "params": then.params},
        )
        return import_entry_of(session_id, answer)

    # -- administration (an admin key) ----------------------------------------------------

    def cleanup(
        self,
        operation: str,
        *,
        dry_run: bool = False,
        hours_old: float | None = None,
        days_old: float | None = None,
        details: bool = False,
        purge_missing: bool = False,
    ) -> dict[str, Any]:
        """Run a cleanup operation (``expired``, ``idle-sessions``, ``old-results``,
        ``orphaned``, ``quota``, ``all``): its report, as the API documents it."""
        params = query(
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            details=details,
            purge_missing=purge_missing,
        )
        report: dict[str, Any] = self._call(
            "POST", f"/admin/cleanup/{seg(operation)}", params=params
        )
        return report

    def cleanup_session(
        self, session_id: str, *, dry_run: bool = False, details: bool = False
    ) -> dict[str, Any]:
        """Close one session through the cleanup engine (a lease still protects it)."""
        path = f"/admin/cleanup/session/{seg(session_id)}"
        report: dict[str, Any] = self._call(
            "POST", path, params=query(dry_run=dry_run, details=details)
        )
        return report

    def cleanup_stats(self, *, include_orphaned: bool = False) -> dict[str, Any]:
        stats: dict[str, Any] = self._call(
            "GET", "/admin/cleanup/stats", params=query(include_orphaned=include_orphaned)
        )
        return stats

    def audit_log(
        self, *, action: str | None = None, page_size: int = 1000
    ) -> Iterator[AuditEntry]:
        """The audit log, newest first (of one action), page by page."""
        for item in self._pages("/admin/audit", page_size, action=action):
            yield audit_entry_of(item)

    def verify(
        self,
        *,
        session_id: str | None = None,
        rate_mb_s: float | None = None,
        repair: str | None = None,
    ) -> dict[str, Any]:
        """Re-hash stored bytes; flag (``repair="drop"``: delete) missing or corrupt ones."""
        params = query(session_id=session_id, rate_mb_s=rate_mb_s, repair=repair)
        report: dict[str, Any] = self._call("POST", "/admin/verify", params=params)
        return report

    # -- the worker API (a worker or admin key) -------------------------------------------

    def claim_task(
        self,
        worker: str,
        processors: Sequence[str],
        *,
        wait_s: float = 0,
        ttl_s: float | None = None,
    ) -> Claim | None:
        """The oldest waiting task of the processors, claimed; None when none came within
        ``wait_s``. Every call about it carries the claim's ID."""
        body = query(worker=worker, processors=list(processors), ttl_s=ttl_s)
        answer = self._call(
            "POST",
            "/worker/claim",
            params=query(wait_s=wait_s),
            json=body,
            timeout=self._timeout + wait_s,
        )
        return None if answer is None else claim_of(answer)

    def heartbeat(
        self,
        task_id: str,
        claim_id: str,
        *,
        progress: tuple[int, int | None] | None = None,
        ttl_s: float | None = None,
    ) -> datetime:
        """Renew the claim (and report progress); Conflict means stop: the claim is gone."""
        body = query(
            progress=None if progress is None else {"done": progress[0], "total": progress[1]},
            ttl_s=ttl_s,
        )
        answer = self._call(
            "POST", f"/worker/tasks/{seg(task_id)}/heartbeat", json=body, headers=_claim(claim_id)
        )
        return datetime.fromisoformat(answer["claimed_until"])

    def iter_task_input(self, task_id: str, claim_id: str, artifact_id: str) -> Iterator[bytes]:
        path = f"/worker/tasks/{seg(task_id)}/inputs/{seg(artifact_id)}/content"
        return self._verified_chunks(path, f"input {artifact_id}", _claim(claim_id))

    def download_task_input(
        self, task_id: str, claim_id: str, artifact_id: str, dest: PathLike
    ) -> Path:
        """An input's bytes into ``dest``, verified as :meth:`download_artifact` does."""
        return _into(dest, self.iter_task_input(task_id, claim_id, artifact_id))

    def upload_task_output(
        self,
        task_id: str,
        claim_id: str,
        source: Source,
        *,
        name: str | None = None,
        kind: str = "output",
        content_type: str | None = None,
        sha256: str | None = None,
    ) -> Artifact:
        """Store an output of the claimed task (streamed, its sha256 checked by the server)."""
        body = outgoing(source, sha256)
        params = {"name": name or body.name, "kind": kind, "content_type": content_type}
        if not params["name"]:
            raise InvalidInput("an output needs a name (only a path brings its own)")
        answer = self._send(
            f"/worker/tasks/{seg(task_id)}/outputs", body, params, headers=_claim(claim_id)
        )
        return artifact_of(answer)

    def complete_task(
        self, task_id: str, claim_id: str, result: Mapping[str, Any] | None = None
    ) -> Task:
        """Succeed with ``result``; the outputs uploaded under this claim become the task's."""
        answer = self._call(
            "POST",
            f"/worker/tasks/{seg(task_id)}/complete",
            json={"result": dict(result or {})},
            headers=_claim(claim_id),
        )
        return task_of(answer)

    def fail_task(self, task_id: str, claim_id: str, error: str, *, retry: bool = False) -> Task:
        """Fail this attempt; with ``retry`` it is queued again while attempts remain."""
        answer = self._call(
            "POST",
            f"/worker/tasks/{seg(task_id)}/fail",
            json={"error": error, "retry": retry},
            headers=_claim(claim_id),
        )
        return task_of(answer)

    # -- health ---------------------------------------------------------------------------

    def health(self) -> str:
        """``ok`` while the server process answers."""
        return str(self._call("GET", f"{self.endpoint.root}/healthz")["status"])

    def ready(self) -> str:
        """``ready`` when the database and blob store answer; Unavailable otherwise."""
        return str(self._call("GET", f"{self.endpoint.root}/readyz")["status"])

    def metrics(self) -> str:
        """The Prometheus metrics, as text (an admin key, unless the server made them public)."""
        try:
            response = self._http.get(f"{self.endpoint.root}/metrics")
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response.text


def _claim(claim_id: str) -> dict[str, str]:
    return {"Ephemera-Claim": claim_id}


def _into(dest: PathLike, chunks: Iterator[bytes]) -> Path:
    def write_all(part: PartFile) -> None:
        try:
            for chunk in chunks:
                part.write(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return into_file(dest, write_all)
