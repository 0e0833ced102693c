"""A session's workspace: its artifacts, uploading into it, and resetting it.

Opened by the session's token holder (signed in on the "A session's workspace" form) or by an
operator; a worker key's sign-in only looks. Uploads go over tus (``workspace.js``), the same
protocol and code as the API's, mounted at ``/console/sessions/{sid}/uploads`` behind the
sign-in cookie (:func:`uploads_router`); without JavaScript, the form posts one file as
multipart. The page lists the session's tasks; running a processor and following a task are
:mod:`ephemera.console.runs`'.

Reset closes the session, forcing it: the person resetting a station has confirmed, on a page
that says so, that its running tasks are cancelled and its leases released; the sign-in ends
with the session, and the page that follows says nothing was kept.
"""

from __future__ import annotations

from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console.artifacts import content_url, image_url, shown_inline
from ephemera.console.auth import COOKIE, Console, SignInRequired
from ephemera.console.live import events_url
from ephemera.console.security import PREFIX, check_origin, check_token, purpose_token
from ephemera.console.templating import render
from ephemera.errors import Forbidden, Unauthenticated
from ephemera.http.receive import UploadParams, receive_multipart
from ephemera.http.slots import upload_slots
from ephemera.http.tus import tus_router
from ephemera.models import Artifact, ConsoleLogin, TaskState
from ephemera.store import Store

PAGE_SIZE = 100
# The kinds offered for an upload; an artifact's kind is a free label, these are the usual.
UPLOAD_KINDS = ("input", "template", "golden")
ACTIVE = (TaskState.PENDING, TaskState.RUNNING)


def workspace_url(session_id: str) -> str:
    return f"{PREFIX}/workspace/{session_id}"


def uploads_url(session_id: str) -> str:
    return f"{PREFIX}/sessions/{session_id}/uploads"


def may_change(login: ConsoleLogin) -> bool:
    """The token holder changes their session; of operators, only an admin's sign-in."""
    return login.role == "session" or login.can_change


def require_change(console: Console, session_id: str, login: ConsoleLogin) -> None:
    console.workspace(session_id, login)
    if not may_change(login):
        raise Forbidden("a worker key's sign-in can look but not change anything")


def uploads_router(console: Console) -> APIRouter:
    """The tus routes behind the console's sign-in (include it with prefix ``/console``):
    the cookie instead of a bearer token, the sign-in's form token as ``X-CSRF-Token`` on
    every change (``console.login`` checks it with the origin)."""

    async def authorize(request: Request, session_id: str) -> str | None:
        try:
            login = await console.login(request)
        except SignInRequired:
            raise Unauthenticated("sign in to the console again: your sign-in ended") from None
        console.workspace(session_id, login)
        if request.method != "HEAD" and not may_change(login):
            raise Forbidden("a worker key's sign-in can look but not change anything")
        return login.actor if login.role == "admin" else None

    return tus_router(console.store, authorize=authorize)


def all_artifacts(store: Store, session_id: str, most: int = 1000) -> list[Artifact]:
    """The session's artifacts, up to ``most`` (for choosing among them in a form)."""
    found: list[Artifact] = []
    cursor: str | None = None
    while len(found) < most:
        page = store.list_artifacts(session_id, cursor=cursor, limit=min(PAGE_SIZE * 5, 1000))
        found.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return found[:most]


def artifact_rows(session_id: str, artifacts: list[Artifact]) -> list[dict[str, object]]:
    return [
        {
            "artifact": a,
            "download": content_url(session_id, a.id),
            "image": image_url(session_id, a.id) if shown_inline(a.content_type) else None,
        }
        for a in artifacts
    ]


async def upload_login(console: Console, request: Request) -> ConsoleLogin:
    """The sign-in of the multipart upload form (no JavaScript): its form token comes in the
    query string, since reading the body for it would hold the whole file before storing it;
    a token for this session's uploads alone (URLs end up in access logs)."""
    cookie = request.cookies.get(COOKIE)
    login = await anyio.to_thread.run_sync(console.store.console_login, cookie) if cookie else None
    if login is None:
        raise SignInRequired
    check_origin(request)
    purpose = f"upload:{request.path_params['session_id']}"
    check_token(purpose_token(login.csrf, purpose), request.query_params.get("csrf"))
    return login


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store
    slots = upload_slots(store)

    def artifacts_context(session_id: str, cursor: str | None) -> dict[str, object]:
        page = store.list_artifacts(session_id, cursor=cursor, limit=PAGE_SIZE)
        return {
            "session_id": session_id,
            "session": store.get_session(session_id),
            "rows": artifact_rows(session_id, page.items),
            "next_cursor": page.next_cursor,
            "cursor": cursor,
        }

    @router.get("/workspace/{session_id}")
    def workspace_page(
        session_id: str,
        request: Request,
        cursor: str | None = None,
        tasks_cursor: str | None = None,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        context = {
            "title": f"Workspace {session_id}",
            "nav": "workspace",
            "login": login,
            "session_id": session_id,
            "can_change": may_change(login),
            "events": events_url(session_id),
            "uploads": uploads_url(session_id),
            "upload_token": purpose_token(login.csrf, f"upload:{session_id}"),
            "kinds": UPLOAD_KINDS,
            "processors": store.list_processors(),
            **artifacts_context(session_id, cursor),
            **tasks_context(session_id, tasks_cursor),
        }
        return render(request, "workspace/page.html", context)

    @router.get("/workspace/{session_id}/artifacts")
    def artifacts_fragment(
        session_id: str,
        request: Request,
        cursor: str | None = None,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        return render(
            request,
            "workspace/artifacts.html",
            {"login": login, **artifacts_context(session_id, cursor)},
        )

    def tasks_context(session_id: str, cursor: str | None) -> dict[str, object]:
        page = store.list_tasks(session_id, cursor=cursor, limit=PAGE_SIZE)
        return {
            "session_id": session_id,
            "tasks": page.items,
            "tasks_next": page.next_cursor,
            "tasks_cursor": cursor,
        }

    @router.get("/workspace/{session_id}/tasks")
    def tasks_fragment(
        session_id: str,
        request: Request,
        cursor: str | None = None,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        return render(
            request, "workspace/tasks.html", {"login": login, **tasks_context(session_id, cursor)}
        )

    @router.post("/workspace/{session_id}/artifacts")
    async def upload_without_script(session_id: str, request: Request) -> Response:
        """One file from the plain form: streamed into the store as the API's multipart."""
        login = await upload_login(console, request)
        require_change(console, session_id, login)
        with slots.hold(session_id):
            await receive_multipart(store, session_id, request, UploadParams())
        return RedirectResponse(workspace_url(session_id), status_code=303)

    @router.get("/workspace/{session_id}/reset")
    def reset_form(
        session_id: str, request: Request, login: ConsoleLogin = Depends(console.login)
    ) -> Response:
        require_change(console, session_id, login)
        session = store.get_session(session_id)
        active = [
            task
            for state in ACTIVE
            for task in store.list_tasks(session_id, state=state, limit=PAGE_SIZE).items
        ]
        return render(
            request,
            "workspace/reset.html",
            {
                "title": "Reset the session",
                "nav": "workspace",
                "login": login,
                "session": session,
                "session_id": session_id,
                "active": active,
                "leases": [
                    lease
                    for lease in store.list_leases(session_id)
                    if lease.is_valid(store.clock.now())
                ],
            },
        )

    @router.post("/workspace/{session_id}/reset")
    def reset(
        session_id: str, request: Request, login: ConsoleLogin = Depends(console.login)
    ) -> Response:
        require_change(console, session_id, login)
        report = store.close_session(session_id, force=True)
        store.audit(
            login.audit_actor,
            "console.reset",
            session_id,
            {"force": True},
            {"artifact_count": report.artifact_count, "deleted_bytes": report.deleted_bytes},
        )
        query = urlencode(
            {"artifacts": report.artifact_count, "removed_bytes": report.deleted_bytes}
        )
        response = RedirectResponse(f"{workspace_url(session_id)}/reset/done?{query}", 303)
        if login.role == "session":
            # The sign-in died with the session; the cookie goes too.
            store.console_sign_out(request.cookies.get(COOKIE, ""))
            response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @router.get("/workspace/{session_id}/reset/done")
    def reset_done(
        session_id: str, request: Request, artifacts: int = 0, removed_bytes: int = 0
    ) -> Response:
        """Needs no sign-in: a reset session's holder has none left."""
        return render(
            request,
            "workspace/reset_done.html",
            {
                "title": "Session reset",
                "session_id": session_id,
                "artifacts": artifacts,
                "bytes": removed_bytes,
            },
        )
