"""The web console's part of the store: sign-ins that stand for a key or a session token,
and the usage samples the scheduler records at each tick.

A sign-in exchanges a credential for a random cookie. The catalog keeps the cookie's hash and
the credential's hash, and checks the credential again at every request (see
:meth:`~ephemera.catalog.console.ConsoleCatalog.find_login`): revoking a key or closing a
session signs out every browser it opened, with nothing cached to go stale.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

from ephemera import ids
from ephemera.context import Context
from ephemera.errors import Forbidden, Unauthenticated
from ephemera.models import ConsoleLogin, KeyRole, UsageSample
from ephemera.store import access, events
from ephemera.store.sessions import session_unreachable


class ConsoleMethods:
    """The console's part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context
    _activity: access.ActivityWrites

    def console_sign_in(
        self, credential: str, session_id: str | None = None
    ) -> tuple[str, ConsoleLogin]:
        """Exchange a key (no ``session_id``) or a session's token (with it) for a cookie.

        An admin key signs in an operator who may change things, a worker key one who only
        looks; a client key opens nothing here (Forbidden). With ``session_id``, only that
        session's token is taken (a key is refused: operators sign in as operators), and the
        sign-in opens that session's workspace alone. Every other failure is
        Unauthenticated (a wrong token, like an unknown session, is SessionUnreachable)."""
        ctx = self.context
        now = ctx.clock.now()
        if session_id is None:
            key = access.resolve_key(ctx, self._activity, credential)
            if key is None:
                raise Unauthenticated("sign in with an admin or worker key")
            if key.role not in (KeyRole.ADMIN, KeyRole.WORKER):
                raise Forbidden(f"a {key.role} key does not open the console")
            role, actor, session = str(key.role), key.name, None
        else:
            if ids.key_role(credential) is not None:
                raise Unauthenticated("a workspace opens with its session's token, not a key")
            access.authenticate(ctx, self._activity, session_id, credential)
            role, actor, session = "session", f"session:{session_id}", session_id
        cookie = secrets.token_urlsafe(32)
        ttl = timedelta(seconds=ctx.settings.console_login_ttl_s)
        login = ConsoleLogin(
            id=ids.hash_secret(cookie),
            role=role,
            actor=actor,
            session_id=session,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + ttl,
            secret_hash=ids.hash_secret(credential),
        )
        ctx.catalog.console.insert_login(login, now)
        return cookie, login

    def console_login(self, cookie: str) -> ConsoleLogin | None:
        """The sign-in a cookie stands for, if it is still good; a workspace's use of it is
        activity of its session, like a request with the token."""
        ctx = self.context
        login = ctx.catalog.console.find_login(ids.hash_secret(cookie), ctx.clock.now())
        if login is not None and login.session_id is not None:
            access.record_activity(ctx, self._activity, login.session_id)
        return login

    def console_sign_out(self, cookie: str) -> None:
        self.context.catalog.console.delete_login(ids.hash_secret(cookie))

    def open_console_events(
        self, session_id: str, login: ConsoleLogin, last_event_id: int | None = None
    ) -> events.EventFeed:
        """A session's event feed for a console sign-in: an operator's, or its token
        holder's while the session is still the one the token opened."""
        if login.role == "session":
            if login.session_id != session_id:
                raise session_unreachable(session_id)
            expected = login.secret_hash
            return events.open_feed_checked(
                self.context,
                session_id,
                lambda stored: hmac.compare_digest(stored, expected),
                last_event_id,
            )
        return events.open_feed_checked(self.context, session_id, None, last_event_id)

    def record_usage(self) -> UsageSample:
        """Count the store for the overview's charts, dropping samples past their retention."""
        ctx = self.context
        now = ctx.clock.now()
        keep_after = now - timedelta(seconds=ctx.settings.usage_retention_s)
        return ctx.catalog.console.insert_usage(now, keep_after)

    def usage_history(self, seconds: float | None = None) -> list[UsageSample]:
        """The samples of the last ``seconds`` (all that are kept by default), oldest first."""
        ctx = self.context
        span = ctx.settings.usage_retention_s if seconds is None else seconds
        return ctx.catalog.console.usage_since(ctx.clock.now() - timedelta(seconds=span))
