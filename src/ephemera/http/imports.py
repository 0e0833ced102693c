"""The import routes: files imported into a session exactly once, through the import ledger.

The body of an import is read only when the ledger does not hold its origin yet: a restarted
importer sends each file again and pays only a round trip for those already imported.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response

from ephemera.errors import InvalidInput, NotFound
from ephemera.http.credentials import Credential
from ephemera.http.openapi import RAW_UPLOAD_BODY, UPLOAD_RESPONSES
from ephemera.http.receive import declared_length, stream_into
from ephemera.http.schemas import (
    ArtifactOut,
    FollowUpIn,
    ImportEntryOut,
    ImportOut,
    ImportPage,
)
from ephemera.http.slots import UploadSlots
from ephemera.models import INT64_MAX, MAX_TIMEOUT_S, FollowUp, Imported, ImportEntry, ImportOrigin
from ephemera.store import Store, Upload

THEN_PARAMS = "Ephemera-Then-Params"
# The header holds the follow-up's params: well under what servers accept in headers.
THEN_PARAMS_MAX = 8 * 1024

ALREADY_IMPORTED: dict[int | str, dict[str, Any]] = {
    200: {"model": ImportOut, "description": "The ledger already held this file version"},
}


def then_of(processor: str | None, params: str | None) -> FollowUp | None:
    """The follow-up of ``?then=`` with its params from the header (a JSON object)."""
    if processor is None:
        if params is not None:
            raise InvalidInput(f"{THEN_PARAMS} needs a processor in the 'then' parameter")
        return None
    try:
        parsed = json.loads(params) if params is not None else {}
    except ValueError:
        raise InvalidInput(f"{THEN_PARAMS} must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"{THEN_PARAMS} must be a JSON object")
    return FollowUp(processor, parsed)


def add_import_routes(
    router: APIRouter,
    store: Store,
    authed: Callable[[str, str], str | None],
    upload_slots: UploadSlots,
) -> None:
    """The import routes on ``router``, with the artifact upload's credentials and slots."""

    def answer(imported: Imported) -> Response:
        entry = imported.entry
        try:
            artifact = ArtifactOut.model_validate(
                store.get_artifact(entry.session_id, entry.artifact_id)
            )
        except NotFound:
            artifact = None
        body = ImportOut(created=imported.created, entry=entry_out(entry), artifact=artifact)
        status = 201 if imported.created else 200
        return Response(body.model_dump_json(), status_code=status, media_type="application/json")

    @router.post(
        "/sessions/{session_id}/imports",
        status_code=201,
        response_model=ImportOut,
        openapi_extra=RAW_UPLOAD_BODY,
        responses={**ALREADY_IMPORTED, **UPLOAD_RESPONSES},
        tags=["imports"],
    )
    async def import_file(
        session_id: str,
        request: Request,
        token: Credential,
        source: Annotated[str, Query(min_length=1, max_length=1024)],
        path: Annotated[str, Query(min_length=1, max_length=4096)],
        size: Annotated[int, Query(ge=0, le=INT64_MAX)],
        mtime_ns: Annotated[int, Query(ge=0, le=INT64_MAX)],
        name: Annotated[str | None, Query(max_length=1000)] = None,
        kind: str | None = None,
        storage: str | None = None,
        expires_in_s: Annotated[int | None, Query(ge=1, le=MAX_TIMEOUT_S)] = None,
        sha256: str | None = None,
        then: Annotated[str | None, Query(max_length=100)] = None,
        then_params: Annotated[
            str | None, Header(alias=THEN_PARAMS, max_length=THEN_PARAMS_MAX)
        ] = None,
    ) -> Response:
        """Import one version of a file (raw body, streamed) at most once per session.

        201 with the new entry and artifact; 200 with the existing entry, the body unread,
        when the ledger already holds this (source, path, size, mtime_ns). With ``then``, the
        follow-up task (params: the JSON object in the ``Ephemera-Then-Params`` header) is
        submitted with the artifact as its only input.
        """
        await anyio.to_thread.run_sync(authed, session_id, token)
        origin = ImportOrigin(source, path, size, mtime_ns)
        follow_up = then_of(then, then_params)
        with upload_slots.hold(session_id):

            def begin() -> ImportEntry | Upload:
                return store.begin_import(
                    session_id,
                    origin=origin,
                    name=name or posixpath.basename(path),
                    kind=kind or "input",
                    content_type=request.headers.get("content-type") or None,
                    storage=storage,
                    expires_in_s=expires_in_s,
                    sha256=sha256,
                    then=follow_up,
                    declared_size=declared_length(request),
                )

            started = await anyio.to_thread.run_sync(begin)
            if isinstance(started, ImportEntry):
                imported = Imported(started, created=False)
            else:

                def finish() -> Imported:
                    return store.finish_import(
                        started, origin=origin, sha256=sha256, then=follow_up
                    )

                imported = await stream_into(store, request, started, finish)
        return await anyio.to_thread.run_sync(answer, imported)

    @router.post(
        "/sessions/{session_id}/imports/{artifact_id}/follow-up",
        response_model=ImportEntryOut,
        tags=["imports"],
    )
    def follow_up_import(
        session_id: str, artifact_id: str, body: FollowUpIn, token: Credential
    ) -> ImportEntryOut:
        """Submit the follow-up of an import that has none yet (a crashed importer's); an
        entry with one is returned as it is. One task results however many callers race."""
        authed(session_id, token)
        then = FollowUp(body.processor, body.params)
        return entry_out(store.follow_up_import(session_id, artifact_id, then))

    @router.get("/sessions/{session_id}/imports", response_model=ImportPage, tags=["imports"])
    def list_imports(
        session_id: str,
        token: Credential,
        source: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
        cursor: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> ImportPage:
        """The session's import ledger (of one source) in import order."""
        authed(session_id, token)
        page = store.list_imports(session_id, source=source, cursor=cursor, limit=limit)
        return ImportPage(items=[entry_out(e) for e in page.items], next_cursor=page.next_cursor)


def entry_out(entry: ImportEntry) -> ImportEntryOut:
    return ImportEntryOut.model_validate(entry)
