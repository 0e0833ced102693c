"""The HTTP face: ``create_app(store)`` for a whole ASGI app, ``api_router`` to include.

To add ephemera to an existing FastAPI app, mount the whole app
(``app.mount("/files", create_app(store))``), or include ``api_router(store)`` and call
``install_error_handlers(app)`` and ``install_openapi(app)`` so errors keep the contract's
JSON shape and the document stays complete. Either way only routes are added: the host runs
workers and scheduled cleanup with ``lifespan=ephemera.service.lifespan(store)``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from ephemera.errors import EphemeraError, Forbidden, Unauthenticated
from ephemera.http.admin import admin_router
from ephemera.http.credentials import bearer
from ephemera.http.errors import error_response, install_error_handlers
from ephemera.http.events import events_router
from ephemera.http.links import link_keys_router, links_router
from ephemera.http.openapi import install_openapi, operation_id
from ephemera.http.processors import processors_router
from ephemera.http.ratelimit import auth_failures
from ephemera.http.routes import ERRORS, api_router
from ephemera.http.schemas import Health
from ephemera.http.tus import tus_router
from ephemera.http.workers import worker_router
from ephemera.models import KeyRole
from ephemera.store import Store

API_PREFIX = "/api/v1"


def create_app(store: Store) -> FastAPI:
    """The API over ``store``: routes only, nothing runs in the background.

    Workers, scheduled cleanup and recovery at start-up are :mod:`ephemera.service`'s job
    (``ephemera serve`` runs it; a host app runs it in its lifespan).
    """
    app = FastAPI(
        title="ephemera",
        summary="Isolated, self-cleaning session workspaces for file-processing backends",
        version="0.1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
        generate_unique_id_function=operation_id,
    )
    app.state.store = store
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(api_router(store), prefix=API_PREFIX)
    app.include_router(admin_router(store), prefix=API_PREFIX)
    app.include_router(worker_router(store), prefix=API_PREFIX)
    app.include_router(processors_router(store), prefix=API_PREFIX)
    app.include_router(links_router(store), prefix=API_PREFIX)
    app.include_router(link_keys_router(store), prefix=API_PREFIX)
    app.include_router(events_router(store), prefix=API_PREFIX)
    app.include_router(tus_router(store), prefix=API_PREFIX)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            401: ERRORS[401],
            403: ERRORS[403],
            429: ERRORS[429],
        },
        # Keys guessed here are counted and throttled like everywhere else.
        dependencies=[Depends(auth_failures(store).gate)],
    )
    def get_metrics(
        auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Response:
        """Prometheus metrics: cleanup runs, deletions, bytes freed, errors, storage in use.

        Takes an admin key unless ``metrics_public`` is set (a private scrape network)."""
        if not store.settings.metrics_public:
            if auth is None or not auth.credentials:
                raise Unauthenticated("/metrics takes an admin key (or set metrics_public)")
            key = store.resolve_key(auth.credentials)  # an unknown or expired key: 401
            if key is None or key.role != KeyRole.ADMIN:
                raise Forbidden("/metrics takes an admin key")
        return Response(store.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        responses={
            503: {"model": Health, "description": "A backend does not answer, or space is low"}
        },
    )
    def readyz() -> Health | JSONResponse:
        try:
            store.check_ready()
        except EphemeraError as exc:
            return JSONResponse({"status": f"unavailable: {exc.message}"}, status_code=503)
        return Health(status="ready")

    return app


__all__ = [
    "API_PREFIX",
    "admin_router",
    "api_router",
    "create_app",
    "error_response",
    "events_router",
    "install_error_handlers",
    "install_openapi",
    "processors_router",
    "worker_router",
]
