"""The sessions list, and closing a session (behind a page that states what goes with it).

The list reads one page of sessions along an index, whatever the order chosen (see
:meth:`~ephemera.store.Store.browse_sessions`): ID, creation, last activity, deadline or
state, with a search (an ID prefix, or a piece of the label) and a state filter; the next
page starts after the last row's position (a cursor), never at an offset. There is no order
by size or counts: those are summed from the artifacts for the rows shown, and sorting every
session by them would need totals kept up to date per session.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console import session_page
from ephemera.console.auth import Console
from ephemera.console.security import PREFIX
from ephemera.console.templating import render
from ephemera.errors import Conflict
from ephemera.models import ConsoleLogin
from ephemera.store.browse import SessionFigures, SessionOrder, StateFilter

PAGE_SIZE = 50

ORDER_NAMES = {
    SessionOrder.ACTIVITY: "Last activity, most recent first",
    SessionOrder.CREATED: "Created, newest first",
    SessionOrder.DEADLINE: "Deadline, soonest first",
    SessionOrder.STATE: "State (closing first), then deadline",
    SessionOrder.ID: "ID",
}
STATE_NAMES = {
    "": "Every state",
    StateFilter.OPEN: "Open",
    StateFilter.EXPIRED: "Open, past its deadline",
    StateFilter.CLOSING: "Closing",
}


def session_url(session_id: str) -> str:
    return f"{PREFIX}/sessions/{session_id}"


def close_url(session_id: str) -> str:
    return f"{PREFIX}/sessions/{session_id}/close"


def add_routes(router: APIRouter, console: Console) -> None:
    """The list and closing; and, through :mod:`session_page`, each session's page."""
    store = console.store
    session_page.add_routes(router, console)

    @router.get("/sessions")
    def session_list(
        request: Request,
        q: Annotated[str, Query(max_length=200)] = "",
        state: Annotated[str, Query(max_length=20)] = "",
        order: Annotated[SessionOrder, Query()] = SessionOrder.ACTIVITY,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        closed: Annotated[str | None, Query(max_length=64)] = None,
        removed: Annotated[int | None, Query(ge=0)] = None,
        freed: Annotated[int | None, Query(ge=0)] = None,
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        found = store.browse_sessions(
            text=q.strip() or None, state=state or None, order=order, cursor=cursor, limit=PAGE_SIZE
        )
        query = {"q": q, "state": state, "order": order}
        next_url = None
        if found.next_cursor is not None:
            next_url = f"{PREFIX}/sessions?{urlencode({**query, 'cursor': found.next_cursor})}"
        return render(
            request,
            "sessions/list.html",
            {
                "title": "Sessions",
                "nav": "sessions",
                "login": login,
                "rows": found.items,
                "q": q,
                "state": state,
                "order": order,
                "orders": ORDER_NAMES,
                "states": STATE_NAMES,
                "first_url": f"{PREFIX}/sessions?{urlencode(query)}" if cursor else None,
                "next_url": next_url,
                "closed": closed,
                "removed": removed,
                "freed": freed,
                "now": store.clock.now(),
                "session_url": session_url,
                "close_url": close_url,
            },
        )

    def confirmation(
        request: Request,
        login: ConsoleLogin,
        figures: SessionFigures,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        sid = figures.session.id
        return render(
            request,
            "sessions/close.html",
            {
                "title": f"Close session {sid}",
                "nav": "sessions",
                "login": login,
                "figures": figures,
                "session": figures.session,
                "error": error,
                "session_url": session_url(sid),
                "close_url": close_url(sid),
            },
            status_code,
        )

    @router.get("/sessions/{session_id}/close")
    def close_form(
        session_id: str, request: Request, login: ConsoleLogin = Depends(console.admin)
    ) -> Response:
        return confirmation(request, login, store.session_figures(session_id))

    @router.post("/sessions/{session_id}/close")
    def close(
        session_id: str,
        request: Request,
        force: Annotated[bool, Form()] = False,
        login: ConsoleLogin = Depends(console.admin),
    ) -> Response:
        try:
            report = store.close_session(session_id, force=force)
        except Conflict as exc:
            # Leased since the page was shown (or force left unticked): ask again.
            figures = store.session_figures(session_id)
            return confirmation(request, login, figures, exc.message, 409)
        store.audit(
            login.audit_actor,
            "session.close",
            session_id,
            {"force": force, "via": "console"},
            {"artifact_count": report.artifact_count, "deleted_bytes": report.deleted_bytes},
        )
        done = {
            "closed": session_id,
            "removed": report.artifact_count,
            "freed": report.deleted_bytes,
        }
        return RedirectResponse(f"{PREFIX}/sessions?{urlencode(done)}", status_code=303)
