"""A session's page for operators: its details and metadata, its artifacts (pictures shown,
bytes downloadable, deletable by an admin), its tasks with their live progress and results,
and its leases.

The page shows a session live or past its deadline, until cleanup removes it (as
:meth:`~ephemera.store.Store.inspect_session` does). The tasks and artifacts tables are also
fragments of their own, which ``console.js`` fetches again whenever the session's event
stream reports a change, so progress moves without a reload (and without JavaScript the page
is complete as served).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console import artifacts, live
from ephemera.console.auth import Console
from ephemera.console.security import PREFIX
from ephemera.console.templating import render
from ephemera.models import ConsoleLogin, SessionState
from ephemera.store import Store
from ephemera.store.browse import SessionFigures

ARTIFACTS_PAGE = 100
TASKS_SHOWN = 50


def pretty(value: Any) -> str:
    """JSON for people (escaped by the template like any text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _urls(session_id: str) -> dict[str, Any]:
    base = f"{PREFIX}/sessions/{session_id}"
    return {
        "session_url": base,
        "tasks_url": base + "/tasks",
        "artifacts_url": base + "/artifacts",
        "close_url": base + "/close",
        "events_url": live.events_url(session_id),
        "content_url": lambda aid: artifacts.content_url(session_id, aid),
        "image_url": lambda aid: artifacts.image_url(session_id, aid),
        "delete_url": lambda aid: f"{base}/artifacts/{aid}/delete",
        "shown_inline": artifacts.shown_inline,
        "pretty": pretty,
    }


def served(figures: SessionFigures, now: datetime) -> bool:
    """Whether the API still serves the session: open, and before its deadline or kept
    alive by a lease. Past that, its bytes are neither served nor deletable here either."""
    session = figures.session
    return session.state == SessionState.OPEN and (
        session.expires_at is None or session.expires_at > now or figures.leases > 0
    )


def _artifacts(store: Store, session_id: str, after: str | None) -> dict[str, Any]:
    figures = store.session_figures(session_id)  # NotFound once the session is gone
    found = store.session_artifacts(session_id, cursor=after, limit=ARTIFACTS_PAGE)
    return {
        "artifacts": found.items,
        "after": after,
        "more_after": found.next_cursor,
        "served": served(figures, store.clock.now()),
    }


def _tasks(store: Store, session_id: str) -> dict[str, Any]:
    return {"tasks": store.recent_tasks(session_id, TASKS_SHOWN), "tasks_shown": TASKS_SHOWN}


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store

    @router.get("/sessions/{session_id}")
    def session_page(
        session_id: str,
        request: Request,
        after: Annotated[str | None, Query(max_length=64)] = None,
        deleted: Annotated[str | None, Query(max_length=255)] = None,
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        figures = store.session_figures(session_id)
        return render(
            request,
            "sessions/session.html",
            {
                "title": f"Session {session_id}",
                "nav": "sessions",
                "login": login,
                "figures": figures,
                "session": figures.session,
                "leases": store.session_leases(session_id),
                "deleted": deleted,
                "now": store.clock.now(),
                **_artifacts(store, session_id, after),
                **_tasks(store, session_id),
                **_urls(session_id),
            },
        )

    @router.get("/sessions/{session_id}/tasks")
    def tasks_fragment(
        session_id: str, request: Request, login: ConsoleLogin = Depends(console.operator)
    ) -> Response:
        """The tasks table alone, for a live refresh."""
        store.session_figures(session_id)  # NotFound once the session is gone
        return render(
            request,
            "sessions/_tasks.html",
            {"login": login, **_tasks(store, session_id), **_urls(session_id)},
        )

    @router.get("/sessions/{session_id}/artifacts")
    def artifacts_fragment(
        session_id: str,
        request: Request,
        after: Annotated[str | None, Query(max_length=64)] = None,
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        """The artifacts table alone (this page of it), for a live refresh."""
        return render(
            request,
            "sessions/_artifacts.html",
            {
                "login": login,
                "now": store.clock.now(),
                **_artifacts(store, session_id, after),
                **_urls(session_id),
            },
        )

    @router.post("/sessions/{session_id}/artifacts/{artifact_id}/delete")
    def delete_artifact(
        session_id: str, artifact_id: str, login: ConsoleLogin = Depends(console.admin)
    ) -> Response:
        artifact = store.delete_artifact(session_id, artifact_id)
        store.audit(
            login.audit_actor,
            "artifact.delete",
            f"{session_id}/{artifact_id}",
            {"via": "console"},
        )
        target = f"{PREFIX}/sessions/{session_id}?{urlencode({'deleted': artifact.name})}#artifacts"
        return RedirectResponse(target, status_code=303)
