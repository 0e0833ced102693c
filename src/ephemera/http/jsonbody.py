"""Request bodies parsed by FastAPI (JSON) are bounded before anything parses them.

FastAPI reads such a body whole before the route's dependencies run, so before any
authentication: it is read here instead, as a stream, refused above ``MAX_JSON_BODY_BYTES``
(413, by ``Content-Length`` before a byte is read, or as the bytes arrive) and after the
upload idle timeout without a byte (408), so that no client can make the server hold a huge
body or an open request for ever.

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

from ephemera.errors import InvalidInput, TooLarge
from ephemera.http.receive import body_chunks, declared_length

MAX_BODY_DEPTH = 64
# Above the largest body any such route takes: task params alone may be 1 MiB of JSON.
MAX_JSON_BODY_BYTES = 2 * 1024 * 1024

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


async def read_bounded_body(request: Request, limit: int, idle_timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes (else TooLarge), each chunk arriving within
    ``idle_timeout_s`` (else RequestTimeout)."""
    too_large = f"request body: at most {limit} bytes"
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"{too_large}, and Content-Length says {declared}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in body_chunks(request, idle_timeout_s):
        size += len(chunk)
        if size > limit:
            raise TooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


class JsonBodyRoute(APIRoute):
    """A route whose body is read bounded in size and time, and checked for depth, before
    FastAPI parses it. :func:`json_body_route` sets the idle timeout."""

    idle_timeout_s: float = 60.0

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # the route reads its body itself, or takes none
            return handler
        idle_timeout_s = self.idle_timeout_s

        async def guarded(request: Request) -> Response:
            body = await read_bounded_body(request, MAX_JSON_BODY_BYTES, idle_timeout_s)
            # Starlette's own cache of the body: FastAPI's handler parses these bytes.
            request._body = body
            media_type = request.headers.get("content-type", "application/json").lower()
            if "json" in media_type and nesting_exceeds(body, MAX_BODY_DEPTH):
                raise InvalidInput(
                    f"request body: JSON must not be nested deeper than {MAX_BODY_DEPTH} levels"
                )
            return await handler(request)

        return guarded


def json_body_route(idle_timeout_s: float) -> type[JsonBodyRoute]:
    """The route class of a router whose bodies may stall at most ``idle_timeout_s``."""
    return type("JsonBodyRoute", (JsonBodyRoute,), {"idle_timeout_s": idle_timeout_s})
