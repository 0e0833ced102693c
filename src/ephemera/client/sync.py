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
from datetime import datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

from ephemera.client.admin import AdminMethods
from ephemera.client.common import POLL_S, given, query, seg
from ephemera.client.connection import write_verified
from ephemera.client.errors import WaitTimeout
from ephemera.client.lease import HeldLease
from ephemera.client.records import (
    artifact_of,
    close_report_of,
    import_entry_of,
    lease_of,
    session_of,
    task_of,
)
from ephemera.client.resume import ResumeStore, body_of
from ephemera.client.transfer import PathLike, Source, outgoing
from ephemera.client.tus import TusOptions, over_tus, run, tus_upload
from ephemera.client.workers import WorkerMethods
from ephemera.errors import InvalidInput
from ephemera.models import (
    Artifact,
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

# A task's input: an artifact ID of the session, or (session ID, artifact ID) elsewhere.
TaskInputSpec = str | tuple[str, str]
ProgressCallback = Callable[[Task], object]


class Client(AdminMethods, WorkerMethods):
    """A connection to one ephemera server, with one credential (a session token or a key),
    and a method for each operation of the API.

    Thread-safe (the underlying connection pool is); use it as a context manager, or call
    :meth:`close`. Transport failures raise :class:`~ephemera.client.ServerUnreachable`.
    """

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
        body: dict[str, Any] = given(id=id, label=label, metadata=metadata)
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
        resumable: bool | None = None,
        chunk_size: int | None = None,
        resume_store: ResumeStore | PathLike | None = None,
    ) -> Artifact:
        """Stream ``source`` (a path, a binary file, bytes or chunks) into a new artifact.

        Its sha256 is computed here first (a path, bytes or a seekable file) and sent along,
        so the server stores the bytes only if they arrive intact; a one-pass source is
        hashed on the way and checked against what the server recorded. ``name`` defaults
        to a path's file name.

        ``resumable``: over tus in chunks of ``chunk_size``, resumed after a failure (True),
        in one request (False), or over tus from 64 MiB of known size (None). A path's
        upload URL kept in ``resume_store`` (a JSON file) lets a later run continue it.
        """
        if over_tus(source, resumable, producer):
            options = TusOptions.of(chunk_size, resume_store)
            upload = tus_upload(
                self.base_url,
                session_id,
                body_of(source, sha256),
                options,
                name=name,
                kind=kind,
                content_type=content_type,
                storage=storage,
                expires_in_s=expires_in_s,
            )
            return artifact_of(run(self._http, upload.steps()))
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
        return write_verified(dest, self.iter_artifact(session_id, artifact_id))

    def read_artifact(self, session_id: str, artifact_id: str) -> bytes:
        """The whole artifact in memory, verified: for small ones (use the others for files)."""
        return b"".join(self.iter_artifact(session_id, artifact_id))

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
        body = given(ttl_s=ttl_s, holder=holder, artifact_ids=list(artifact_ids))
        return lease_of(self._call("POST", f"/sessions/{seg(session_id)}/leases", json=body))

    def renew_lease(self, session_id: str, lease_id: str, *, ttl_s: int | None = None) -> Lease:
        """Extend a valid lease; Conflict once it has expired."""
        path = f"/sessions/{seg(session_id)}/leases/{seg(lease_id)}/renew"
        return lease_of(self._call("POST", path, json=given(ttl_s=ttl_s)))

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
        body = given(
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
