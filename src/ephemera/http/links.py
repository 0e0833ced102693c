"""Signed download links: signing one (``POST …/artifacts/{aid}/links``), serving one
(``GET /links/{sid}/{aid}?…``, no credentials), and the admin routes of the signing keys.

Answers of the link itself: a link changed in any character, expired, or signed by a revoked
key is 403 ``link_refused``, always with the same message; a genuine link whose session or
artifact is gone, or whose bytes changed, is 404. A 403 that may be a guess at a link counts
against the client's address in a limit of the links' own (``link_refusals_per_minute``),
which throttles that address's links and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from ephemera.errors import Forbidden
from ephemera.http.credentials import Credential
from ephemera.http.downloads import content_disposition, serve_artifact
from ephemera.http.jsonbody import json_body_route
from ephemera.http.openapi import CONTENT_REQUEST, CONTENT_RESPONSES, operation_id
from ephemera.http.ratelimit import auth_failures, link_refusals
from ephemera.http.routes import ERRORS
from ephemera.models import MAX_TIMEOUT_S, KeyRole
from ephemera.store import Store


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_s: Annotated[
        int,
        Field(ge=1, le=MAX_TIMEOUT_S, description="Life of the link (at most link_max_ttl_s)"),
    ]
    disposition: Literal["attachment", "inline"] = Field(
        "attachment", description="inline: shown in the browser; attachment: saved as a file"
    )


class LinkOut(BaseModel):
    url: str = Field(description="Opens the artifact's bytes without credentials")
    expires_at: datetime


class LinkKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    revoked_at: datetime | None


class LinkKeyList(BaseModel):
    items: list[LinkKeyOut]


LINK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CONTENT_RESPONSES,
    307: {
        "description": "With link_redirect on S3, for an attachment link: the bytes are at a "
        "presigned URL of the bucket (Location), valid for at most 5 minutes",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    403: {
        "model": ERRORS[403]["model"],
        "description": "link_refused: the link was changed, has expired or its key was revoked",
    },
    404: {
        "model": ERRORS[404]["model"],
        "description": "The link is genuine, but its session or artifact is gone, or its bytes "
        "changed",
    },
}


def links_router(store: Store) -> APIRouter:
    router = APIRouter(
        responses=ERRORS,
        route_class=json_body_route(store.settings.upload_idle_timeout_s),
        generate_unique_id_function=operation_id,
    )
    failures = auth_failures(store)
    link_gate = link_refusals(store).gate

    @router.post(
        "/sessions/{session_id}/artifacts/{artifact_id}/links",
        status_code=201,
        response_model=LinkOut,
        tags=["artifacts"],
        dependencies=[Depends(failures.gate)],
    )
    def create_link(
        session_id: str, artifact_id: str, body: LinkCreate, request: Request, token: Credential
    ) -> LinkOut:
        """A URL that downloads this artifact without credentials until ``expires_at``; it
        dies sooner with the artifact, its session, or a change of its bytes."""
        admin = store.authenticate(session_id, token)
        link = store.create_link(
            session_id,
            artifact_id,
            expires_in_s=body.expires_in_s,
            disposition=body.disposition,
        )
        if admin is not None:
            store.audit(
                f"admin:{admin}",
                "artifact.link",
                f"{session_id}/{artifact_id}",
                {"expires_at": link.expires_at.isoformat(), "key": link.key_id},
            )
        url = request.url_for("download_link", session_id=session_id, artifact_id=artifact_id)
        url = url.include_query_params(**link.query())
        return LinkOut(url=str(url), expires_at=link.expires_at)

    def open_link(session_id: str, artifact_id: str, request: Request) -> Any:
        return store.open_link(session_id, artifact_id, request.query_params.multi_items())

    @router.get(
        "/links/{session_id}/{artifact_id}",
        response_class=Response,
        responses=LINK_RESPONSES,
        openapi_extra=CONTENT_REQUEST,
        tags=["links"],
        dependencies=[Depends(link_gate)],
    )
    def download_link(session_id: str, artifact_id: str, request: Request) -> Response:
        """The artifact's bytes, without credentials, as the authenticated download serves
        them (Range, ETag, If-None-Match), under the link's disposition. The query is the one
        ``createLink`` made; any change refuses the link (403)."""
        link, artifact = open_link(session_id, artifact_id, request)
        disposition = content_disposition(artifact.name, link.disposition)
        location = store.presigned_link_url(link, artifact, disposition)
        if location is not None:
            return RedirectResponse(location, 307, headers={"cache-control": "no-store"})
        return serve_artifact(store, artifact, request, link.disposition)

    @router.head(
        "/links/{session_id}/{artifact_id}",
        response_class=Response,
        include_in_schema=False,
        dependencies=[Depends(link_gate)],
    )
    def head_link(session_id: str, artifact_id: str, request: Request) -> Response:
        # Served here even in redirect mode: a presigned URL is signed for GET only.
        link, artifact = open_link(session_id, artifact_id, request)
        return serve_artifact(store, artifact, request, link.disposition)

    @router.api_route(
        "/links/{mangled:path}",
        methods=["GET", "HEAD"],
        include_in_schema=False,
        dependencies=[Depends(link_gate)],
    )
    def mangled_link(mangled: str) -> Response:
        # A link whose path lost or gained a segment is a changed link like any other.
        raise store.refuse_link()

    return router


def link_keys_router(store: Store) -> APIRouter:
    router = APIRouter(
        prefix="/admin/link-keys",
        tags=["admin"],
        responses=ERRORS,
        route_class=json_body_route(store.settings.upload_idle_timeout_s),
        dependencies=[Depends(auth_failures(store).gate)],
        generate_unique_id_function=operation_id,
    )

    def admin_name(token: str) -> str:
        key = store.resolve_key(token)
        if key is None or key.role != KeyRole.ADMIN:
            raise Forbidden("this takes an admin key")
        return key.name

    @router.post("", status_code=201, response_model=LinkKeyOut)
    def rotate_link_key(token: Credential) -> LinkKeyOut:
        """A new key signs every link from now on; older keys keep verifying until revoked."""
        name = admin_name(token)
        key = store.rotate_link_key()
        store.audit(f"admin:{name}", "link-key.rotate", key.id)
        return LinkKeyOut.model_validate(key)

    @router.get("", response_model=LinkKeyList)
    def list_link_keys(token: Credential) -> LinkKeyList:
        """Every signing key, newest first (the newest not revoked signs)."""
        admin_name(token)
        return LinkKeyList(items=[LinkKeyOut.model_validate(k) for k in store.list_link_keys()])

    @router.delete("/{key_id}", status_code=204)
    def revoke_link_key(key_id: str, token: Credential) -> Response:
        """Revoke a key: every link it signed answers 403 from now on."""
        name = admin_name(token)
        store.revoke_link_key(key_id)
        store.audit(f"admin:{name}", "link-key.revoke", key_id)
        return Response(status_code=204)

    return router
