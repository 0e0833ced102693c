"""The credentials a route takes: ``Authorization: Bearer <session token | key>``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ephemera.errors import Unauthenticated

bearer = HTTPBearer(auto_error=False, description="A session token or a key")


async def credential(
    auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """Async, though it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker
    thread, a trip every credentialed request would take for a few attribute reads."""
    if auth is None or not auth.credentials:
        raise Unauthenticated("missing credentials: send 'Authorization: Bearer <token>'")
    return auth.credentials


Credential = Annotated[str, Depends(credential)]
