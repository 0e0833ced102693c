"""Which credential opens what: a session token its session, a key what its role allows.

Use is recorded (a session's activity, a key's last use) at most every
``activity_write_interval_s``, and best effort: on a full volume the request goes on without
the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ephemera import ids
from ephemera.context import Context
from ephemera.errors import Forbidden, InsufficientStorage, Unauthenticated
from ephemera.models import AdminKey, KeyRole, session_deadline
from ephemera.store.sessions import session_not_found, session_unreachable

log = logging.getLogger("ephemera.store")


class ActivityWrites:
    """Runs last-use and activity writes; logs once when a full volume refuses them, and
    once when they are recorded again."""

    def __init__(self) -> None:
        self._unrecorded = False  # a full volume refused the last activity write

    def record(self, write: Callable[[], None]) -> None:
        """Run a last-use or activity write, best effort on a full volume.

        The request goes on without it: it may be the one that frees space (a cleanup, a
        close) or need none (a download). Logged once until such a write succeeds again.
        """
        try:
            write()
        except InsufficientStorage as exc:
            if not self._unrecorded:
                self._unrecorded = True
                log.warning(
                    "activity and key use are not recorded until space is freed: %s",
                    exc.message,
                    extra={"action": "activity"},
                )
            return
        if self._unrecorded:
            self._unrecorded = False
            log.info("activity and key use are recorded again", extra={"action": "activity"})


def authenticate(
    ctx: Context, activity: ActivityWrites, session_id: str, credential: str
) -> str | None:
    """Check that ``credential`` opens this live session, and record activity; the admin
    key's name when an admin key was used (see :meth:`Store.authenticate`)."""
    key = resolve_key(ctx, activity, credential)
    if key is not None and key.role != KeyRole.ADMIN:
        raise Forbidden(f"a {key.role} key does not open sessions")
    # With an admin key a missing session is only that; with a token it is one of the
    # indistinguishable failures of authentication.
    missing = session_not_found if key is not None else session_unreachable
    if not ids.SESSION_ID_RE.fullmatch(session_id):
        raise missing(session_id)
    now = ctx.clock.now()
    row = ctx.catalog.session_with_liveness(session_id, now)
    if row is None:
        raise missing(session_id)
    if key is None and not ids.secret_matches(credential, row.token_hash):
        raise missing(session_id)
    if not row.live:
        raise missing(session_id)
    _touch(ctx, activity, session_id, row, now)
    return None if key is None else key.name


def record_activity(ctx: Context, activity: ActivityWrites, session_id: str) -> None:
    """Record a request on a session whose access was checked another way (a console
    sign-in made with its token)."""
    now = ctx.clock.now()
    row = ctx.catalog.session_with_liveness(session_id, now)
    if row is not None and row.live:
        _touch(ctx, activity, session_id, row, now)


def _touch(
    ctx: Context, activity: ActivityWrites, session_id: str, row: Any, now: datetime
) -> None:
    interval = timedelta(seconds=ctx.settings.activity_write_interval_s)
    if now - row.last_activity_at >= interval:
        expires_at = session_deadline(now, row.created_at, row.idle_timeout_s, row.max_age_s)
        activity.record(
            lambda: ctx.catalog.touch_session(session_id, now, expires_at, now - interval)
        )


def resolve_key(ctx: Context, activity: ActivityWrites, credential: str) -> AdminKey | None:
    """The key ``credential`` is; None if it is not a key (see :meth:`Store.resolve_key`)."""
    role = ids.key_role(credential)
    if role is None:
        return None
    key = ctx.catalog.find_key(ids.hash_secret(credential))
    if key is None or key.role != role:
        raise Unauthenticated("unknown or revoked key")
    now = ctx.clock.now()
    if key.expired(now):
        assert key.expires_at is not None
        raise Unauthenticated(f"this key expired at {key.expires_at.isoformat()}")
    interval = timedelta(seconds=ctx.settings.activity_write_interval_s)
    if key.last_used_at is None or now - key.last_used_at >= interval:
        activity.record(lambda: ctx.catalog.touch_key(key.name, now, now - interval))
    return key
