"""``/processors``: what tasks may run here, and the JSON schema of each one's params.

No credential is needed, as for ``/openapi.json``: the list describes what the API accepts and
holds nothing of any session, and a client needs it before it holds anything. It shows only
enabled processors, so it tells nothing of other packages installed on the server.
"""

from __future__ import annotations

from fastapi import APIRouter

from ephemera.http.routes import ERRORS
from ephemera.http.schemas import ProcessorList, ProcessorOut
from ephemera.store import Store


def processors_router(store: Store) -> APIRouter:
    router = APIRouter(prefix="/processors", tags=["processors"])

    @router.get("", response_model=ProcessorList)
    def list_processors() -> ProcessorList:
        """Every enabled processor, with its description and its params' JSON schema."""
        items = [ProcessorOut.model_validate(p) for p in store.list_processors()]
        return ProcessorList(items=items)

    @router.get("/{name}", response_model=ProcessorOut, responses={404: ERRORS[404]})
    def get_processor(name: str) -> ProcessorOut:
        """One enabled processor; 404 (listing the enabled ones) for any other name."""
        return ProcessorOut.model_validate(store.get_processor_info(name))

    return router
