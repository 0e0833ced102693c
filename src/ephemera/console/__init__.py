"""The web console, served by ``ephemera serve`` at ``/console`` (``GET /`` leads there).

Server-rendered pages (Jinja2) that work without JavaScript for reading; htmx and a small
script of ours (live updates over Server-Sent Events, drag-and-drop uploads over tus) only
improve them. Every asset ships in the package (:mod:`ephemera.console.assets`).

Modules, one concept each: ``auth`` (signing in, who may do what), ``security`` (headers,
forgery checks), ``routing`` (errors as pages), ``templating``, ``assets``, ``charts``
(server-drawn SVG); then one module per page: ``overview``; ``sessions`` (the list, and
closing a session) with ``session_page`` (one session); ``cleanup`` (with ``cleanup_runs``,
its previews and background runs); ``audit``; ``keys``; ``workspace`` (a session's
artifacts, uploads and reset) with ``runs`` (running a processor from the form ``forms``
generates, following its task to the result ``results`` shows). ``artifacts`` (bytes for
downloads and pictures) and ``live`` (a session's events) serve every page that shows a
session.

Routes take their sign-in as ``login: ConsoleLogin = Depends(console.operator)`` (a default,
not ``Annotated``: the dependency belongs to the router's ``Console``, a local name that
postponed annotations could not resolve).

A host app adds it with ``install_console(app, store)`` after ``create_app(store)``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ephemera.console import (
    artifacts,
    audit,
    auth,
    cleanup,
    keys,
    live,
    overview,
    runs,
    sessions,
    workspace,
)
from ephemera.console.assets import STATIC_DIR, STATIC_PATH
from ephemera.console.routing import ConsoleRoute
from ephemera.console.security import PREFIX, ConsoleHeaders
from ephemera.store import Store


def console_router(store: Store) -> APIRouter:
    """Every page of the console, under ``/console``."""
    console = auth.Console(store)
    router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
    auth.add_routes(router, console)
    overview.add_routes(router, console)
    sessions.add_routes(router, console)
    artifacts.add_routes(router, console)
    live.add_routes(router, console)
    cleanup.add_routes(router, console)
    audit.add_routes(router, console)
    keys.add_routes(router, console)
    workspace.add_routes(router, console)
    runs.add_routes(router, console)
    return router


def install_console(app: FastAPI, store: Store) -> None:
    """Add the console to ``app`` (unless ``settings.console`` is off): its pages, its
    static files, its security headers, and ``GET /`` leading to it."""
    if not store.settings.console:
        return
    app.include_router(console_router(store))
    # tus answers its own errors (with tus headers), so not through ConsoleRoute's pages.
    app.include_router(workspace.uploads_router(auth.Console(store)), prefix=PREFIX)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_middleware(ConsoleHeaders)

    @app.get("/", include_in_schema=False)
    def console_home() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)


__all__ = ["console_router", "install_console"]
