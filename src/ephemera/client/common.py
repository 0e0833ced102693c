"""What the sync and async clients share: addresses, path segments, query values, answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2

from ephemera.client.errors import ServerUnreachable, error_of
from ephemera.errors import InvalidInput

API_PREFIX = "/api/v1"
# How often wait_task looks at a task by default: a few times a second is plenty for a person
# watching, and cheap for a server whose embedded workers share its interpreter.
POLL_S = 0.5


@dataclass(frozen=True)
class Endpoint:
    """A server's root (``/healthz``, ``/metrics``) and its API (``/api/v1``)."""

    root: str
    api: str

    @classmethod
    def of(cls, base_url: str) -> Endpoint:
        root = base_url.rstrip("/").removesuffix(API_PREFIX)
        return cls(root, root + API_PREFIX)


def headers_for(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def seg(value: str) -> str:
    """One path segment, whatever it holds: an ID can never reach another route."""
    if value in ("", ".", ".."):
        raise InvalidInput(f"invalid ID {value!r}")
    return quote(value, safe="")


def given(**values: Any) -> dict[str, Any]:
    """The fields of a JSON body that were given (None: left out, the server's default)."""
    return {k: v for k, v in values.items() if v is not None}


def query(**values: Any) -> dict[str, Any]:
    """Query values without the ones left out; booleans as the API spells them."""
    return {
        k: (str(v).lower() if isinstance(v, bool) else v)
        for k, v in values.items()
        if v is not None
    }


def unreachable(where: str, exc: httpx2.TransportError) -> ServerUnreachable:
    return ServerUnreachable(f"{where}: {exc or type(exc).__name__}")


def answer_of(response: httpx2.Response) -> Any:
    """The JSON of a read answer, or the library error it stands for."""
    if response.status_code >= 400:
        raise error_of(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()
