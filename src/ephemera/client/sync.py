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
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

from ephemera.client.admin import AdminMethods
from ephemera.client.common import POLL_S, given, query, seg
from ephemera.client.connection import write_verified
from ephemera.client.errors import ServerUnreachable
from ephemera.client.events import EventMethods
from ephemera.client.lease import HeldLease
from ephemera.client.records import (
    DownloadLink,
    artifact_of,
    close_report_of,
    download_link_of,
    import_entry_of,
    lease_of,
    session_of,
    task_of,
)
from ephemera.client.resume import ResumeStore, body_of
from ephemera.client.retry import idempotency_headers, retried
from ephemera.client.transfer import PathLike, Source, outgoing, replayable
from ephemera.client.tus import TusOptions, over_tus, run, tus_upload
from ephemera.client.waiting import ProgressCallback, TaskWatch
from ephemera.client.workers import WorkerMethods
from ephemera.errors import EphemeraError, InvalidInput, NotFound
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


def task_body(
    processor: str,
    inputs: Sequence[TaskInputSpec],
    params: Mapping[str, Any] | None,
    max_attempts: int | None,
    reference_tokens: Mapping[str, str] | None,
) -> dict[str, Any]:
    return given(
        processor=processor,
        inputs=[
            i if isinstance(i, str) else {"session_id": i[0], "artifact_id": i[1]} for i in inputs
        ],
        params=dict(params or {}),
        max_attempts=max_attempts,
        reference_tokens=dict(reference_tokens) if reference_tokens else None,
    )


class Client(AdminMethods, WorkerMethods, EventMethods):
    """A connection to one ephemera server, with one credential (a session token or a key),
    and a method for each operation of the API.

    Thread-safe (the underlying connection pool is); use it as a context manager, or call
    :meth:`close`. Transport failures raise :class:`~ephemera.client.ServerUnreachable`.
    A request sent with an ``idempotency_key`` is retried up to ``retries`` times after a
    passing failure (see :mod:`ephemera.client.retry`).
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
        idempotency_key: str | None = None,
    ) -> CreatedSession:
        """A new session and its token (shown once). Timeouts left out take the server's
        defaults; ``None`` means never. With ``idempotency_key`` it is created once however
        often the request is (re)sent, and the repeat answers the token again."""
        body: dict[str, Any] = given(id=id, label=label, metadata=metadata)
        if idle_timeout_s is not ...:
            body["idle_timeout_s"] = idle_timeout_s
        if max_age_s is not ...:
            body["max_age_s"] = max_age_s
        answer = self._idempotent(idempotency_key, "POST", "/sessions", json=body)
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
        idempotency_key: str | None = None,
        resumable: bool | None = None,
        chunk_size: int | None = None,
        resume_store: ResumeStore | PathLike | None = None,
    ) -> Artifact:
        """Stream ``source`` (a path, a binary file, bytes or chunks) into a new artifact.

        Its sha256 is computed here first (a path, bytes or a seekable file) and sent along,
        so the server stores the bytes only if they arrive intact; a one-pass source is
        hashed on the way and checked against what the server recorded. ``name`` defaults
        to a path's file name. With ``idempotency_key``, a source that can be read again
        (not a one-pass one) is sent again after a passing failure, and stored once.

        ``resumable``: over tus in chunks of ``chunk_size``, resumed after a failure (True),
        in one request (False), or over tus from 64 MiB of known size (None). A path's
        upload URL kept in ``resume_store`` (a JSON file) lets a later run continue it. A tus
        upload resumes by its URL, so ``idempotency_key`` applies to single requests only.
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
        rewind = replayable(source) if idempotency_key is not None else None
        first = True

        def send() -> Any:
            nonlocal body, first
            if not first and rewind is not None:
                body = outgoing(rewind(), body.sha256)
            first = False
            return self._send(
                path,
                body,
                params,
                discard=lambda a: self.delete_artifact(session_id, a["id"]),
                headers=idempotency_headers(idempotency_key),
            )

        answer = send() if rewind is None else retried(send, self._retries)
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

    def link(
        self,
        session_id: str,
        artifact_id: str,
        expires_in_s: int,
        disposition: str | None = None,
    ) -> DownloadLink:
        """A URL that downloads the artifact without credentials until its ``expires_at``
        (``disposition``: ``attachment``, the server's default, or ``inline``)."""
        path = f"/sessions/{seg(session_id)}/artifacts/{seg(artifact_id)}/links"
        body = given(expires_in_s=expires_in_s, disposition=disposition)
        return download_link_of(self._call("POST", path, json=body))

    def iter_link(self, url: str) -> Iterator[bytes]:
        """A signed link's bytes as they arrive, without this client's credential, verified
        against the sha256 the link names."""
        return self._link_chunks(url)

    def download_link(self, url: str, dest: PathLike) -> Path:
        """A signed link's bytes into ``dest``, verified as :meth:`download_artifact` does."""
        return write_verified(dest, self.iter_link(url))

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
        idempotency_key: str | None = None,
    ) -> Task:
        """Queue processing of ``inputs`` (artifact IDs of the session, or (session ID,
        artifact ID) of reference data, whose token goes in ``reference_tokens``); queued
        once per ``idempotency_key``, however often the request is (re)sent."""
        body = task_body(processor, inputs, params, max_attempts, reference_tokens)
        path = f"/sessions/{seg(session_id)}/tasks"
        return task_of(self._idempotent(idempotency_key, "POST", path, json=body))

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

        Follows the session's events, and polls every ``poll_s`` only when they cannot be
        followed. ``on_progress`` is called with the task on every change of its state and
        every progress step, in order. WaitTimeout after ``timeout_s``; the task goes on.
        """
        watch = TaskWatch(task_id, timeout_s, on_progress)
        try:
            stream = self.events(session_id, deadline=watch.deadline).open()
        except EphemeraError:
            return self._poll_task(session_id, watch, poll_s)
        with stream:
            if watch.seen(self.get_task(session_id, task_id)):
                return self._finished(watch)
            try:
                for event in stream.beats():
                    watch.check_deadline()
                    if event is None:
                        continue
                    if watch.needs_reading(event):
                        task = self.get_task(session_id, task_id)
                    elif (stepped := watch.stepped(event)) is not None:
                        task = stepped
                    else:
                        continue
                    if watch.seen(task):
                        return self._finished(watch)
            except (ServerUnreachable, NotFound):
                pass  # the events are lost for good: the task's own answer decides
        # The stream ended (the session closed) or broke: the task's own answer decides.
        return self._poll_task(session_id, watch, poll_s)

    def _finished(self, watch: TaskWatch) -> Task:
        assert watch.task is not None
        return watch.task

    def _poll_task(self, session_id: str, watch: TaskWatch, poll_s: float) -> Task:
        while True:
            if watch.seen(self.get_task(session_id, watch.task_id)):
                return self._finished(watch)
            watch.check_deadline()
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
