"""Signing in and out, and who may see and do what.

An operator signs in with an admin key (sees and changes everything) or a worker key (sees
everything, changes nothing); a session's token holder signs in to that session's workspace
and nothing else. The key or token is exchanged once for an HttpOnly, SameSite=Strict cookie
scoped to ``/console`` (so it never authenticates an API call); the store checks at every
request that the credential behind it still holds.

Failed sign-ins count toward the same per-address throttle as the API's failed
authentications (429 beyond it) and each is audited as ``console.sign_in_failed``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console.security import CSRF_FIELD, CSRF_HEADER, PREFIX, check_origin, check_token
from ephemera.console.templating import render
from ephemera.errors import Forbidden, SessionUnreachable, Unauthenticated
from ephemera.http.ratelimit import auth_failures, client_address
from ephemera.models import ConsoleLogin
from ephemera.store import Store

COOKIE = "ephemera_console"
# Before signing in there is no sign-in token: the sign-in form's token is a cookie it must
# match (double submit), so another site cannot sign a browser in under its own key.
PRE_COOKIE = "ephemera_console_pre"
HOME = PREFIX + "/"


class SignInRequired(Exception):
    """No (good) sign-in: pages redirect to the sign-in page, fragments answer 401."""


@dataclass(frozen=True)
class Console:
    """What every page module needs: the store and the sign-in dependencies."""

    store: Store

    async def login(self, request: Request) -> ConsoleLogin:
        """The request's sign-in; on a state-changing request, its origin and form token
        are checked too."""
        cookie = request.cookies.get(COOKIE)
        login = await anyio.to_thread.run_sync(self.store.console_login, cookie) if cookie else None
        if login is None:
            raise SignInRequired
        if request.method not in ("GET", "HEAD"):
            check_origin(request)
            given = request.headers.get(CSRF_HEADER)
            if given is None:
                value = (await request.form()).get(CSRF_FIELD)
                given = value if isinstance(value, str) else None
            check_token(login.csrf, given)
        return login

    async def operator(self, request: Request) -> ConsoleLogin:
        """An operator: an admin or a worker key's sign-in."""
        login = await self.login(request)
        if login.role == "session":
            raise Forbidden("a session's token opens only its workspace")
        return login

    async def admin(self, request: Request) -> ConsoleLogin:
        """An operator who may change things (an admin key's sign-in)."""
        login = await self.operator(request)
        if not login.can_change:
            raise Forbidden("a worker key's sign-in can look but not change anything")
        return login

    def workspace(self, session_id: str, login: ConsoleLogin) -> None:
        """Refuse anyone but this session's token holder or an operator, as the API would
        (another session's holder learns nothing: the answer is the missing session's)."""
        if login.role == "session" and login.session_id != session_id:
            raise SessionUnreachable(f"session {session_id} not found")


def safe_next(target: str | None) -> str:
    """Only a console path: never an absolute URL, never ``//host``."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and not any(bad in target for bad in ("//", "\\", "://"))
    ):
        return target
    return HOME


def set_login_cookie(request: Request, response: Response, cookie: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def sign_in_page(
    request: Request,
    *,
    error: str | None = None,
    status_code: int = 200,
    next_path: str | None = None,
    session_id: str = "",
) -> Response:
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        {
            "title": "Sign in",
            "error": error,
            "pre_token": pre,
            "next": safe_next(next_path),
            "session_id": session_id,
        },
        status_code,
    )
    response.set_cookie(
        PRE_COOKIE,
        pre,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store
    failures = auth_failures(store)

    @router.get("/sign-in")
    async def sign_in_form(request: Request, next: str | None = None) -> Response:
        return sign_in_page(request, next_path=next)

    async def exchange(
        request: Request,
        pre_token: str,
        credential: str,
        session_id: str | None,
        success: Callable[[ConsoleLogin], str],
    ) -> Response:
        check_origin(request)
        address = client_address(request)
        failures.refuse_if_over(address)
        check_token(request.cookies.get(PRE_COOKIE) or "", pre_token)
        try:
            cookie, login = await anyio.to_thread.run_sync(
                store.console_sign_in, credential.strip(), session_id
            )
        except (Unauthenticated, Forbidden, SessionUnreachable) as exc:
            failures.record_failure(address)
            code = exc.code
            await anyio.to_thread.run_sync(
                lambda: store.audit(
                    address,
                    "console.sign_in_failed",
                    session_id,
                    {"workspace": session_id is not None},
                    {"error": code},
                )
            )
            message = (
                "That session ID and token do not open a session."
                if session_id is not None
                else "That key does not open the console."
            )
            return sign_in_page(
                request, error=message, status_code=401, session_id=session_id or ""
            )
        await anyio.to_thread.run_sync(
            lambda: store.audit(
                login.audit_actor,
                "console.sign_in",
                session_id,
                {"role": login.role},
                {"address": address},
            )
        )
        response = RedirectResponse(success(login), status_code=303)
        set_login_cookie(request, response, cookie, store.settings.console_login_ttl_s)
        response.delete_cookie(PRE_COOKIE, path=PREFIX)
        return response

    @router.post("/sign-in")
    async def sign_in(
        request: Request,
        key: Annotated[str, Form(max_length=200)],
        csrf: Annotated[str, Form(max_length=100)] = "",
        next: Annotated[str, Form(max_length=2000)] = HOME,
    ) -> Response:
        return await exchange(request, csrf, key, None, lambda _: safe_next(next))

    @router.post("/workspace/sign-in")
    async def workspace_sign_in(
        request: Request,
        session_id: Annotated[str, Form(max_length=64)],
        token: Annotated[str, Form(max_length=200)],
        csrf: Annotated[str, Form(max_length=100)] = "",
    ) -> Response:
        sid = session_id.strip()
        return await exchange(
            request, csrf, token, sid, lambda _: f"{PREFIX}/workspace/{quote(sid, safe='')}"
        )

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        login = await console.login(request)
        cookie = request.cookies.get(COOKIE, "")
        await anyio.to_thread.run_sync(store.console_sign_out, cookie)
        await anyio.to_thread.run_sync(
            lambda: store.audit(login.audit_actor, "console.sign_out", login.session_id)
        )
        response = RedirectResponse(PREFIX + "/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response
