"""The ``/worker`` routes: external workers, in any language, claim and run tasks.

A worker key (``ephemera worker-key create NAME``) or an admin key opens them. Every call
about one task carries the claim's secret in the ``Ephemera-Claim`` header: an attempt that
lost its claim (cancelled, or taken over after its worker went silent) is refused with 409.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response

from ephemera.errors import Forbidden
from ephemera.http.credentials import Credential
from ephemera.http.downloads import serve_artifact
from ephemera.http.jsonbody import json_body_route
from ephemera.http.openapi import CONTENT_REQUEST, CONTENT_RESPONSES, RAW_UPLOAD_BODY, operation_id
from ephemera.http.ratelimit import auth_failures
from ephemera.http.receive import UploadParams, receive_raw
from ephemera.http.routes import ERRORS
from ephemera.http.schemas import (
    ArtifactOut,
    ClaimOut,
    ClaimRequest,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    TaskOut,
)
from ephemera.models import Claim, KeyRole
from ephemera.store import Store

ClaimHeader = Annotated[
    str, Header(alias="Ephemera-Claim", max_length=200, description="The claim's secret")
]
WAIT_STEP_S = 0.25


def worker_router(store: Store) -> APIRouter:
    def worker_key(token: Credential) -> str:
        key = store.resolve_key(token)
        if key is None or key.role not in (KeyRole.WORKER, KeyRole.ADMIN):
            raise Forbidden("the worker API takes a worker key or an admin key")
        return key.name

    router = APIRouter(
        prefix="/worker",
        route_class=json_body_route(store.settings.upload_idle_timeout_s),
        tags=["workers"],
        responses=ERRORS,
        dependencies=[Depends(auth_failures(store).gate), Depends(worker_key)],
        generate_unique_id_function=operation_id,
    )

    @router.post(
        "/claim",
        response_model=ClaimOut,
        responses={204: {"description": "No task is waiting"}},
    )
    async def claim_task(
        body: ClaimRequest,
        wait_s: Annotated[float, Query(ge=0, le=30, description="Long-poll this long")] = 0,
    ) -> ClaimOut | Response:
        """Take the oldest waiting task of the named processors; 204 when there is none."""
        deadline = anyio.current_time() + wait_s
        while True:
            claimed: Claim | None = await anyio.to_thread.run_sync(
                lambda: store.claim_task(body.worker, body.processors, ttl_s=body.ttl_s)
            )
            if claimed is not None:
                return ClaimOut(
                    task=TaskOut.of(claimed.task),
                    claim_id=claimed.claim_id,
                    claimed_until=claimed.claimed_until,
                    inputs=[ArtifactOut.model_validate(a) for a in claimed.inputs],
                )
            if anyio.current_time() >= deadline:
                return Response(status_code=204)
            await anyio.sleep(min(WAIT_STEP_S, deadline - anyio.current_time()))

    @router.post("/tasks/{task_id}/heartbeat", response_model=HeartbeatOut)
    def send_heartbeat(task_id: str, body: HeartbeatIn, claim_id: ClaimHeader) -> HeartbeatOut:
        """Renew the claim (and report progress); 409 means stop: the claim is gone."""
        progress = (body.progress.done, body.progress.total) if body.progress else None
        until = store.heartbeat_task(task_id, claim_id, progress=progress, ttl_s=body.ttl_s)
        return HeartbeatOut(claimed_until=until)

    @router.get(
        "/tasks/{task_id}/inputs/{artifact_id}/content",
        response_class=Response,
        responses=CONTENT_RESPONSES,
        openapi_extra=CONTENT_REQUEST,
    )
    def download_task_input(
        task_id: str, artifact_id: str, request: Request, claim_id: ClaimHeader
    ) -> Response:
        """An input's bytes (reference data included), while the claim holds."""
        return serve_artifact(store, store.task_input(task_id, claim_id, artifact_id), request)

    @router.post(
        "/tasks/{task_id}/outputs",
        status_code=201,
        response_model=ArtifactOut,
        openapi_extra=RAW_UPLOAD_BODY,
    )
    async def upload_task_output(
        task_id: str,
        request: Request,
        claim_id: ClaimHeader,
        name: Annotated[str, Query(max_length=1000)],
        kind: Annotated[str, Query(pattern="^(output|result)$")] = "output",
        content_type: Annotated[str | None, Query(max_length=255)] = None,
        sha256: str | None = None,
    ) -> ArtifactOut:
        """Store an output (raw body, streamed); it joins the task's lease and outputs."""
        params = UploadParams(
            name=name,
            kind=kind,
            content_type=content_type,
            sha256=sha256,
            task_claim=(task_id, claim_id),
        )
        artifact = await receive_raw(store, "", request, params)
        return ArtifactOut.model_validate(artifact)

    @router.post("/tasks/{task_id}/complete", response_model=TaskOut)
    def complete_task(task_id: str, body: CompleteIn, claim_id: ClaimHeader) -> TaskOut:
        """Succeed with a result; the outputs uploaded under this claim become the task's."""
        return TaskOut.of(store.complete_task(task_id, claim_id, body.result))

    @router.post("/tasks/{task_id}/fail", response_model=TaskOut)
    def fail_task(task_id: str, body: FailIn, claim_id: ClaimHeader) -> TaskOut:
        """Fail this attempt; with ``retry`` it is queued again while attempts remain."""
        return TaskOut.of(store.fail_task(task_id, claim_id, body.error, retry=body.retry))

    return router
