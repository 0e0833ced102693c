"""The ``/api/v1`` routes: a thin face over :class:`~ephemera.store.Store`."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from ephemera.errors import Forbidden, Unauthenticated
from ephemera.http import idempotency
from ephemera.http.credentials import Credential, bearer
from ephemera.http.downloads import serve_artifact
from ephemera.http.errors import InvalidHeader, MalformedBody
from ephemera.http.idempotency import IdempotencyKey
from ephemera.http.imports import add_import_routes
from ephemera.http.jsonbody import json_body_route
from ephemera.http.openapi import (
    CONTENT_REQUEST,
    CONTENT_RESPONSES,
    UPLOAD_BODY,
    UPLOAD_RESPONSES,
    operation_id,
)
from ephemera.http.ratelimit import RateLimit, auth_failures, client_address
from ephemera.http.receive import (
    UploadParams,
    receive_json,
    receive_multipart,
    receive_raw,
    receive_raw_admitting,
)
from ephemera.http.schemas import (
    ArtifactOut,
    ArtifactPage,
    CloseReportOut,
    ErrorBody,
    LeaseCreate,
    LeaseList,
    LeaseOut,
    LeaseRenew,
    RetentionIn,
    SessionCreate,
    SessionCreated,
    SessionOut,
    SessionUpdate,
    TaskCreate,
    TaskOut,
    TaskPage,
)
from ephemera.http.slots import upload_slots
from ephemera.models import MAX_TIMEOUT_S, CreatedSession, KeyRole, Session
from ephemera.store import DEFAULT, Store
from ephemera.store.idempotency import Answer, KeyRecord, Replayed, UploadKey, seal

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (400, "Malformed request body or checksum mismatch"),
        (401, "Missing credentials, or a key that is unknown, revoked or expired"),
        (403, "These credentials do not allow this"),
        (404, "Not found, or not reachable with these credentials"),
        (409, "Conflict"),
        (413, "Too large"),
        (422, "Invalid input"),
        (429, "Too many requests, or too many failed authentications from this address"),
        (503, "Storage unavailable"),
    ]
}


def as_json(model: BaseModel, status: int) -> Response:
    """The answer rendered now, so that whatever cannot be rendered is never committed."""
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def api_router(store: Store) -> APIRouter:
    router = APIRouter(
        responses=ERRORS,
        route_class=json_body_route(store.settings.upload_idle_timeout_s),
        dependencies=[Depends(auth_failures(store).gate)],
        generate_unique_id_function=operation_id,
    )
    anonymous = RateLimit(store.settings.anonymous_sessions_per_minute, "anonymous sessions")
    slots = upload_slots(store)

    def authed(session_id: str, token: str) -> str | None:
        return store.authenticate(session_id, token)

    def audit_admin(
        admin: str | None, action: str, target: str, params: dict[str, Any] | None = None
    ) -> None:
        """Changes made with an admin key are admin actions: they go to the audit log."""
        if admin is not None:
            store.audit(f"admin:{admin}", action, target, params or {})

    @router.post(
        "/sessions",
        status_code=201,
        response_model=SessionCreated,
        tags=["sessions"],
    )
    def create_session(
        body: SessionCreate,
        request: Request,
        auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Create a session (an admin or client key, or none where anonymous creation is on);
        the token in the answer is shown once, and only it opens the session (a replay under
        an Idempotency-Key shows it again, to the same key only)."""
        key = idempotency.checked_key(idempotency_key)
        if auth is None or not auth.credentials:
            if key is not None:
                raise InvalidHeader(
                    "Idempotency-Key on session creation takes a key: without one, a replay "
                    "could hand the new session's token to anyone"
                )
            if not store.settings.anonymous_sessions:
                raise Unauthenticated("creating a session takes an admin or client key")
            address = client_address(request)
            anonymous.check(address)
            actor, admin = f"anonymous:{address}", False
        else:
            creator = store.resolve_key(auth.credentials)
            if creator is None or creator.role not in (KeyRole.ADMIN, KeyRole.CLIENT):
                raise Forbidden("creating a session takes an admin or client key")
            actor, admin = f"{creator.role}:{creator.name}", creator.role == KeyRole.ADMIN
        given = body.model_fields_set
        rendered: list[Response] = []

        def render(created: CreatedSession) -> None:
            out = SessionOut.model_validate(created.session).model_dump()
            rendered.append(as_json(SessionCreated(**out, token=created.token), 201))

        held = None
        if key is not None:
            assert auth is not None
            credential = auth.credentials
            begun = idempotency.reserve(store, request, credential, key, body)
            if isinstance(begun, KeyRecord):
                return idempotency.replay(begun, credential)
            held = begun

            def answer(created: CreatedSession) -> Answer:
                out = SessionOut.model_validate(created.session).model_dump()
                # The token is kept only sealed with the caller's own credential.
                unsealed = SessionCreated(**out, token="").model_dump_json()
                return Answer(201, unsealed, seal(created.token, credential))

        with idempotency.releasing(store, held):
            created = store.create_session(
                body.id,
                label=body.label,
                metadata=body.metadata,
                idle_timeout_s=body.idle_timeout_s if "idle_timeout_s" in given else DEFAULT,
                max_age_s=body.max_age_s if "max_age_s" in given else DEFAULT,
                confirm=render,
                capped=not admin,
                idempotency=None if held is None else held.completion(answer),
            )
        # Every creation is audited, so that each session can be traced to its creator.
        store.audit(actor, "session.create", created.session.id, {"label": body.label})
        return rendered[0]

    @router.get("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    def get_session(session_id: str, token: Credential) -> SessionOut:
        store.authenticate(session_id, token)
        return SessionOut.model_validate(store.get_session(session_id))

    @router.patch("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    def update_session(session_id: str, body: SessionUpdate, token: Credential) -> Response:
        """Change the label, the metadata (replaced whole) or the timeouts; the deadline is
        computed again. Only the fields sent change."""
        admin = authed(session_id, token)
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        rendered: list[Response] = []

        def render(session: Session) -> None:
            rendered.append(as_json(SessionOut.model_validate(session), 200))

        before, after = store.update_session(
            session_id, **changes, confirm=render, capped=admin is None
        )
        audit_admin(
            admin,
            "session.update",
            session_id,
            {
                "fields": sorted(changes),
                "old_expires_at": before.expires_at.isoformat() if before.expires_at else None,
                "new_expires_at": after.expires_at.isoformat() if after.expires_at else None,
            },
        )
        return rendered[0]

    @router.delete("/sessions/{session_id}", response_model=CloseReportOut, tags=["sessions"])
    def close_session(
        session_id: str,
        token: Credential,
        force: Annotated[bool, Query(description="Close even while leased")] = False,
    ) -> CloseReportOut:
        """Close now: every byte and record of the session is gone when this answers."""
        admin = authed(session_id, token)
        report = store.close_session(session_id, force=force)
        audit_admin(admin, "session.close", session_id, {"force": force})
        return CloseReportOut.model_validate(report)

    @router.post(
        "/sessions/{session_id}/artifacts",
        status_code=201,
        response_model=ArtifactOut,
        openapi_extra=UPLOAD_BODY,
        responses=UPLOAD_RESPONSES,
        tags=["artifacts"],
    )
    async def upload_artifact(
        session_id: str,
        request: Request,
        token: Credential,
        name: Annotated[str | None, Query(max_length=1000)] = None,
        kind: str | None = None,
        content_type: Annotated[str | None, Query(max_length=255)] = None,
        storage: str | None = None,
        expires_in_s: Annotated[int | None, Query(ge=1, le=MAX_TIMEOUT_S)] = None,
        sha256: str | None = None,
        producer: Annotated[str | None, Query(max_length=64)] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ArtifactOut | Response:
        """Upload an artifact: the body is streamed to storage, hashed on the way.

        Under an Idempotency-Key, a retry of an answered upload is read, hashed and
        discarded (nothing is recorded or stored for it): the same bytes and metadata answer
        the first answer again."""
        key = idempotency.checked_key(idempotency_key)
        params = UploadParams(
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
            producer=producer,
        )
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        raw = not media_type.startswith("multipart/") and media_type != "application/json"
        if key is None and raw:
            # Authenticated in the same trip to a worker thread as a small body is stored.
            artifact = await receive_raw_admitting(
                store,
                session_id,
                request,
                params,
                partial(authed, session_id, token),
                partial(slots.hold, session_id),
            )
            return as_json(ArtifactOut.model_validate(artifact), 201)
        await anyio.to_thread.run_sync(authed, session_id, token)
        held = None
        if key is not None:
            begun = await anyio.to_thread.run_sync(idempotency.reserve, store, request, token, key)
            if isinstance(begun, KeyRecord):
                if raw and sha256 is not None:
                    # The same query, sha256 included, names the same bytes: no need to hash.
                    await idempotency.drain(store, request)
                    return idempotency.replay(begun, token)
                params.key = UploadKey(recorded=begun)
            else:
                held = begun
                params.key = UploadKey(
                    completion=held.completion(
                        idempotency.json_answer(201, ArtifactOut.model_validate)
                    )
                )
        # A retry of an answered upload is only hashed and stores nothing: it takes no slot.
        replaying = params.key is not None and params.key.recorded is not None
        try:
            async with idempotency.holding(store, held):
                with contextlib.nullcontext() if replaying else slots.hold(session_id):
                    if media_type == "multipart/form-data":
                        artifact = await receive_multipart(store, session_id, request, params)
                    elif media_type == "application/json":
                        artifact = await receive_json(store, session_id, request, params)
                    elif media_type.startswith("multipart/"):
                        raise MalformedBody("use multipart/form-data for multipart uploads")
                    else:
                        artifact = await receive_raw(store, session_id, request, params)
        except Replayed as replayed:
            return idempotency.replay(replayed.record, token)
        # Rendered here: FastAPI would otherwise validate the model again against
        # response_model before serialising it, on every upload.
        return as_json(ArtifactOut.model_validate(artifact), 201)

    @router.get("/sessions/{session_id}/artifacts", response_model=ArtifactPage, tags=["artifacts"])
    def list_artifacts(
        session_id: str,
        token: Credential,
        kind: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> ArtifactPage:
        store.authenticate(session_id, token)
        page = store.list_artifacts(session_id, kind=kind, cursor=cursor, limit=limit)
        return ArtifactPage(
            items=[ArtifactOut.model_validate(a) for a in page.items], next_cursor=page.next_cursor
        )

    @router.get(
        "/sessions/{session_id}/artifacts/{artifact_id}",
        response_model=ArtifactOut,
        tags=["artifacts"],
    )
    def get_artifact(session_id: str, artifact_id: str, token: Credential) -> ArtifactOut:
        store.authenticate(session_id, token)
        return ArtifactOut.model_validate(store.get_artifact(session_id, artifact_id))

    @router.get(
        "/sessions/{session_id}/artifacts/{artifact_id}/content",
        response_class=Response,
        responses=CONTENT_RESPONSES,
        openapi_extra=CONTENT_REQUEST,
        tags=["artifacts"],
    )
    def download_artifact(
        session_id: str, artifact_id: str, request: Request, token: Credential
    ) -> Response:
        """The stored bytes, exactly: ETag is the sha256; Range and If-None-Match work."""
        store.authenticate(session_id, token)
        return serve_artifact(store, store.get_artifact(session_id, artifact_id), request)

    @router.delete(
        "/sessions/{session_id}/artifacts/{artifact_id}",
        response_model=ArtifactOut,
        tags=["artifacts"],
    )
    def delete_artifact(session_id: str, artifact_id: str, token: Credential) -> ArtifactOut:
        admin = authed(session_id, token)
        deleted = store.delete_artifact(session_id, artifact_id)
        audit_admin(admin, "artifact.delete", f"{session_id}/{artifact_id}")
        return ArtifactOut.model_validate(deleted)

    @router.put(
        "/sessions/{session_id}/artifacts/{artifact_id}/retention",
        response_model=ArtifactOut,
        tags=["artifacts"],
    )
    def retain_artifact(
        session_id: str, artifact_id: str, body: RetentionIn, token: Credential
    ) -> ArtifactOut:
        """Keep an artifact past expiry and result retention until a time (null: stop)."""
        admin = authed(session_id, token)
        artifact = store.retain_artifact(session_id, artifact_id, body.retain_until)
        until = body.retain_until.isoformat() if body.retain_until else None
        audit_admin(admin, "artifact.retain", f"{session_id}/{artifact_id}", {"until": until})
        return ArtifactOut.model_validate(artifact)

    @router.post(
        "/sessions/{session_id}/leases", status_code=201, response_model=LeaseOut, tags=["leases"]
    )
    def take_lease(session_id: str, body: LeaseCreate, token: Credential) -> LeaseOut:
        """Protect the session, or the named artifacts, from every cleanup until it expires."""
        admin = authed(session_id, token)
        lease = store.take_lease(
            session_id, ttl_s=body.ttl_s, holder=body.holder, artifact_ids=body.artifact_ids
        )
        audit_admin(admin, "lease.take", f"{session_id}/{lease.id}")
        return LeaseOut.model_validate(lease)

    @router.get("/sessions/{session_id}/leases", response_model=LeaseList, tags=["leases"])
    def list_leases(session_id: str, token: Credential) -> LeaseList:
        authed(session_id, token)
        return LeaseList(items=[LeaseOut.model_validate(x) for x in store.list_leases(session_id)])

    @router.get(
        "/sessions/{session_id}/leases/{lease_id}", response_model=LeaseOut, tags=["leases"]
    )
    def get_lease(session_id: str, lease_id: str, token: Credential) -> LeaseOut:
        authed(session_id, token)
        return LeaseOut.model_validate(store.get_lease(session_id, lease_id))

    @router.post(
        "/sessions/{session_id}/leases/{lease_id}/renew", response_model=LeaseOut, tags=["leases"]
    )
    def renew_lease(
        session_id: str, lease_id: str, body: LeaseRenew, token: Credential
    ) -> LeaseOut:
        """Extend a valid lease; an expired one answers 409 (take a new one)."""
        admin = authed(session_id, token)
        lease = store.renew_lease(session_id, lease_id, ttl_s=body.ttl_s)
        audit_admin(admin, "lease.renew", f"{session_id}/{lease_id}")
        return LeaseOut.model_validate(lease)

    @router.delete("/sessions/{session_id}/leases/{lease_id}", status_code=204, tags=["leases"])
    def release_lease(session_id: str, lease_id: str, token: Credential) -> Response:
        admin = authed(session_id, token)
        store.release_lease(session_id, lease_id)
        audit_admin(admin, "lease.release", f"{session_id}/{lease_id}")
        return Response(status_code=204)

    @router.post(
        "/sessions/{session_id}/tasks", status_code=201, response_model=TaskOut, tags=["tasks"]
    )
    def submit_task(
        session_id: str,
        body: TaskCreate,
        token: Credential,
        request: Request,
        idempotency_key: IdempotencyKey = None,
    ) -> TaskOut | Response:
        """Queue processing: params are checked now; the task holds a lease on its session,
        inputs and outputs until it ends. Inputs in another session need its token in
        ``reference_tokens`` (or an admin key)."""
        key = idempotency.checked_key(idempotency_key)
        admin = authed(session_id, token)
        held = None
        if key is not None:
            begun = idempotency.reserve(store, request, token, key, body)
            if isinstance(begun, KeyRecord):
                return idempotency.replay(begun, token)
            held = begun
        inputs = [i if isinstance(i, str) else (i.session_id, i.artifact_id) for i in body.inputs]
        credentials = dict(body.reference_tokens)
        if admin is not None:
            credentials = {i.session_id: token for i in body.inputs if not isinstance(i, str)}
        with idempotency.releasing(store, held):
            task = store.submit_task(
                session_id,
                body.processor,
                inputs,
                body.params,
                credentials=credentials,
                max_attempts=body.max_attempts,
                idempotency=None
                if held is None
                else held.completion(idempotency.json_answer(201, TaskOut.of)),
            )
        audit_admin(admin, "task.submit", f"{session_id}/{task.id}", {"processor": task.processor})
        return TaskOut.of(task)

    @router.get("/sessions/{session_id}/tasks", response_model=TaskPage, tags=["tasks"])
    def list_tasks(
        session_id: str,
        token: Credential,
        state: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> TaskPage:
        authed(session_id, token)
        page = store.list_tasks(session_id, state=state, cursor=cursor, limit=limit)
        return TaskPage(items=[TaskOut.of(t) for t in page.items], next_cursor=page.next_cursor)

    @router.get("/sessions/{session_id}/tasks/{task_id}", response_model=TaskOut, tags=["tasks"])
    def get_task(session_id: str, task_id: str, token: Credential) -> TaskOut:
        """Status, progress, result, outputs (``removed`` once retention took them), error."""
        authed(session_id, token)
        return TaskOut.of(store.get_task(session_id, task_id))

    @router.post(
        "/sessions/{session_id}/tasks/{task_id}/cancel", response_model=TaskOut, tags=["tasks"]
    )
    def cancel_task(session_id: str, task_id: str, token: Credential) -> TaskOut:
        """Cancel now: its outputs go, its leases are released; 409 once it has finished."""
        admin = authed(session_id, token)
        task = store.cancel_task(session_id, task_id)
        audit_admin(admin, "task.cancel", f"{session_id}/{task_id}")
        return TaskOut.of(task)

    add_import_routes(router, store, authed, slots)
    return router
