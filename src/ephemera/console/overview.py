"""The overview: a picture of the storage, cleanup and tasks."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console.auth import Console
from ephemera.console.templating import render
from ephemera.models import ConsoleLogin


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store

    @router.get("/")
    async def overview(request: Request, login: ConsoleLogin = Depends(console.login)) -> Response:
        if login.role == "session":
            return RedirectResponse(f"{router.prefix}/workspace/{login.session_id}", 303)
        sessions, artifacts, size = await anyio.to_thread.run_sync(store.totals)
        return render(
            request,
            "overview.html",
            {
                "title": "Overview",
                "nav": "overview",
                "login": login,
                "sessions": sessions,
                "artifacts": artifacts,
                "bytes": size,
            },
        )
