"""The keys page: every admin, worker and client key (names and times; only hashes are
stored), creating one (the key is shown once) and revoking one after a confirmation.

An admin key's sign-in changes keys; a worker key's sees the list without controls, and its
requests to change one are refused (403). Changes are audited as the CLI audits them
(``<role>-key.create`` / ``.revoke``), with the signed-in key as the actor.

The new key reaches its page through a redirect, as every POST here ends: it waits in this
process for that one page view by the sign-in that made it (a few minutes at most), and is
forgotten as it is shown, so reloading the page never shows it again.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console.auth import Console
from ephemera.console.templating import render
from ephemera.errors import InvalidInput, NotFound
from ephemera.ids import ADMIN_KEY_NAME_RE
from ephemera.models import AdminKey, ConsoleLogin, KeyRole

PAGE = "/console/keys"
ROLES = (KeyRole.ADMIN, KeyRole.WORKER, KeyRole.CLIENT)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_RE = re.compile(r"([1-9][0-9]{0,8})\s*([smhdw])")
# How long a new key waits for its one page view.
SHOWN_WITHIN_S = 300.0


def duration(text: str) -> int | None:
    """``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` in seconds, as the CLI reads them; empty
    is never."""
    text = text.strip().lower()
    if not text:
        return None
    match = DURATION_RE.fullmatch(text)
    if match is None:
        raise InvalidInput("expires in: a number and a unit s, m, h, d or w (e.g. 30d, 12h)")
    return int(match[1]) * UNITS[match[2]]


@dataclass(frozen=True)
class NewKey:
    login_id: str
    name: str
    role: str
    key: str
    expires_at: datetime | None
    made: float


class ShownOnce:
    """New keys waiting for their page, each taken at most once."""

    def __init__(self) -> None:
        self._waiting: dict[str, NewKey] = {}
        self._lock = threading.Lock()

    def put(self, new: NewKey) -> str:
        ticket = secrets.token_urlsafe(16)
        with self._lock:
            now = time.monotonic()
            for stale in [t for t, k in self._waiting.items() if now - k.made > SHOWN_WITHIN_S]:
                del self._waiting[stale]
            self._waiting[ticket] = new
        return ticket

    def take(self, ticket: str, login_id: str) -> NewKey | None:
        with self._lock:
            new = self._waiting.get(ticket)
            if new is None or new.login_id != login_id:
                return None
            del self._waiting[ticket]
        return None if time.monotonic() - new.made > SHOWN_WITHIN_S else new


def find(keys: list[AdminKey], name: str) -> AdminKey:
    for key in keys:
        if key.name == name:
            return key
    raise NotFound(f"no key named {name!r}")


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store
    waiting = ShownOnce()

    def role_of(text: str) -> KeyRole:
        try:
            return KeyRole(text)
        except ValueError:
            raise InvalidInput("a key's role is admin, worker or client") from None

    @router.get("/keys")
    def keys_page(
        request: Request, revoked: str = "", login: ConsoleLogin = Depends(console.operator)
    ) -> Response:
        return render(
            request,
            "keys/list.html",
            {
                "title": "Keys",
                "nav": "keys",
                "login": login,
                "keys": [k for role in ROLES for k in store.list_keys(role)],
                # Only a key name is echoed: the notice cannot be made to say anything else.
                "revoked": revoked if ADMIN_KEY_NAME_RE.fullmatch(revoked) else "",
                "now": store.clock.now(),
            },
        )

    @router.post("/keys")
    def create_key(
        name: Annotated[str, Form(max_length=64)],
        role: Annotated[str, Form(max_length=10)],
        expires_in: Annotated[str, Form(max_length=20)] = "",
        login: ConsoleLogin = Depends(console.admin),
    ) -> Response:
        checked = role_of(role)
        seconds = duration(expires_in)
        name = name.strip()
        key = store.create_key(name, checked, expires_in_s=seconds)
        store.audit(login.audit_actor, f"{checked}-key.create", name, {"expires_in_s": seconds})
        expires_at = find(store.list_keys(checked), name).expires_at
        ticket = waiting.put(NewKey(login.id, name, checked, key, expires_at, time.monotonic()))
        return RedirectResponse(f"{PAGE}/new/{ticket}", status_code=303)

    @router.get("/keys/new/{ticket}")
    def new_key_page(
        request: Request, ticket: str, login: ConsoleLogin = Depends(console.admin)
    ) -> Response:
        new = waiting.take(ticket, login.id)
        if new is None:
            raise NotFound(
                "a new key is shown once, to the sign-in that made it: it is no longer here "
                "(revoke it and make another if it was not saved)"
            )
        return render(
            request,
            "keys/new.html",
            {"title": "New key", "nav": "keys", "login": login, "new": new},
        )

    @router.get("/keys/{role}/{name}/revoke")
    def confirm_revoke(
        request: Request, role: str, name: str, login: ConsoleLogin = Depends(console.admin)
    ) -> Response:
        key = find(store.list_keys(role_of(role)), name)
        return render(
            request,
            "keys/revoke.html",
            {
                "title": f"Revoke {name}",
                "nav": "keys",
                "login": login,
                "key": key,
                "action": f"{PAGE}/{quote(str(key.role), safe='')}/{quote(name, safe='')}/revoke",
                "own": key.role == login.role and key.name == login.actor,
            },
        )

    @router.post("/keys/{role}/{name}/revoke")
    def revoke_key(role: str, name: str, login: ConsoleLogin = Depends(console.admin)) -> Response:
        checked = role_of(role)
        store.revoke_key(name, checked)
        store.audit(login.audit_actor, f"{checked}-key.revoke", name)
        return RedirectResponse(f"{PAGE}?{urlencode({'revoked': name})}", status_code=303)
