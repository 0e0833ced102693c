"""What every console response carries, and the checks every state-changing request passes.

- A strict Content-Security-Policy: scripts, styles and connections from this origin only,
  no inline script or style, no framing. htmx is told not to evaluate code (``allowEval``)
  nor to inject its indicator styles, so it runs under this policy.
- ``nosniff``, no referrer beyond this origin, and pages never cached (they hold data).
- Cross-site request forgery: the sign-in cookie is SameSite=Strict, every form carries the
  sign-in's token (htmx sends it as ``X-CSRF-Token``), compared in constant time, and a
  request whose ``Origin`` is another site is refused before anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ephemera.errors import Forbidden

PREFIX = "/console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
# A form is a few fields: its body is refused beyond this before it is parsed, so that no
# request (signed in or not) makes the server hold large forms. Uploads are exempt: they
# stream into the store under its own limits.
FORM_LIMIT_BYTES = 1024 * 1024
UPLOADS = re.compile(r"/console/(sessions/[^/]+/uploads(/[^/]*)?|workspace/[^/]+/artifacts)")


class ConsoleHeaders:
    """Adds the console's security headers to every response under ``/console`` (and the
    redirect at ``/``); the API's responses pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(PREFIX)):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")
        refused = _refused_body(scope, path)
        if refused is not None:
            status, text = refused
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-security-policy", CSP.encode()),
                        (b"x-content-type-options", b"nosniff"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": text.encode()})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                if static:
                    # Asset URLs carry their content's digest: a changed file is a new URL.
                    headers["Cache-Control"] = "public, max-age=31536000, immutable"
                else:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _refused_body(scope: Scope, path: str) -> tuple[int, str] | None:
    """A form body the console will not read: of unknown length (browsers always say), or
    over ``FORM_LIMIT_BYTES``."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS") or UPLOADS.fullmatch(path):
        return None
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    if length is None:
        if headers.get(b"transfer-encoding") is None:
            return None  # no body at all
        return 411, "a form's length must be given (Content-Length)"
    if not length.isdigit() or int(length) > FORM_LIMIT_BYTES:
        return 413, f"a form is at most {FORM_LIMIT_BYTES} bytes"
    return None


def purpose_token(csrf: str, purpose: str) -> str:
    """A form token for one purpose, derived from the sign-in's: what must travel in a URL
    (where logs may keep it) opens that purpose alone, never the sign-in's other forms."""
    return hmac.new(csrf.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def check_origin(request: Request) -> None:
    """Refuse a request sent from another site's page (browsers send ``Origin`` on every
    POST); requests without one (non-browser clients, old browsers) fall to the token."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin != own:
        raise Forbidden("this request came from another site's page")


def check_token(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Forbidden("the form is stale or was not sent by this console: reload the page")
