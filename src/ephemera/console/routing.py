"""How console routes answer what goes wrong: as pages, never as the API's JSON.

No sign-in sends a page to the sign-in form (and back after it); an htmx fragment is told to
do the same with ``HX-Redirect``. Every library error becomes an error page with the status
the API would give it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ephemera.console.auth import SignInRequired
from ephemera.console.security import PREFIX
from ephemera.console.templating import render
from ephemera.errors import EphemeraError
from ephemera.http.errors import RateLimited, status_of


def error_page(request: Request, message: str, status_code: int) -> Response:
    return render(
        request,
        "error.html",
        {"title": f"Error {status_code}", "status": status_code, "message": message},
        status_code,
    )


def _validation_message(exc: RequestValidationError) -> str:
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        return f"{where}: {error.get('msg', 'invalid')}"
    return "invalid request"


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                target = f"{PREFIX}/sign-in?next={quote(back, safe='')}"
                if request.headers.get("hx-request") or request.method != "GET":
                    response = error_page(request, "Sign in again: your sign-in ended.", 401)
                    response.headers["HX-Redirect"] = target
                    return response
                return RedirectResponse(target, status_code=303)
            except RequestValidationError as exc:
                return error_page(request, _validation_message(exc), 400)
            except EphemeraError as exc:
                response = error_page(request, exc.message, status_of(exc))
                if isinstance(exc, RateLimited):
                    response.headers["Retry-After"] = str(exc.retry_after_s)
                return response

        return guarded
