"""JSON request bodies are refused when nested too deep, before anything parses them.

Python's parser and pydantic's serializer recurse once per level: a body nested thousands of
levels deep would reach them as a recursion error, or worse. A cheap scan of the raw bytes
answers such a body with a clear 422 first; the values that are kept get their own, lower limit
(:mod:`ephemera.jsonvalues`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ephemera.errors import InvalidInput

MAX_BODY_DEPTH = 64

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests objects and arrays deeper than ``limit``.

    Strings are dropped (brackets inside them do not nest), then each pass removes the
    innermost pairs: a body that still has brackets after ``limit`` passes is deeper.
    Unbalanced text is left to the parser, which reports it as malformed.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets, removed = _INNERMOST.subn(b"", brackets)
        if not removed:
            return False
    return bool(brackets)


class JsonDepthGuardedRoute(APIRoute):
    """A route whose JSON body is checked for depth before FastAPI parses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # the route reads its body itself, or takes none
            return handler

        async def guarded(request: Request) -> Response:
            media_type = request.headers.get("content-type", "application/json").lower()
            if "json" in media_type and nesting_exceeds(await request.body(), MAX_BODY_DEPTH):
                raise InvalidInput(
                    f"request body: JSON must not be nested deeper than {MAX_BODY_DEPTH} levels"
                )
            return await handler(request)

        return guarded
