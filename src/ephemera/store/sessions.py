"""Sessions: create, look up, change, list and inspect (closing is the facade's, with cleanup).

A session is live until its deadline, the earlier of its idle timeout (from its last
activity) and its max age (from its creation); past it, it answers as if it were gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from ephemera import ids
from ephemera.catalog import Completion
from ephemera.cleanup import Rule
from ephemera.context import Context
from ephemera.errors import Conflict, InvalidInput, NotFound, SessionUnreachable
from ephemera.models import (
    Artifact,
    CreatedSession,
    Page,
    Session,
    SessionState,
    session_deadline,
)
from ephemera.removal import remove_session
from ephemera.store.limits import (
    MAX_PAGE,
    check_ceilings,
    check_label,
    check_limit,
    check_metadata,
    check_timeout,
)
from ephemera.store.paging import page


class Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = Default()
"""Use the configured default (as opposed to ``None``, which means "never")."""


class Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()
"""Leave as it is (as opposed to ``None``, which clears or means "never")."""


def session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} not found")


def session_unreachable(session_id: str) -> SessionUnreachable:
    return SessionUnreachable(f"session {session_id} not found")


def require_live(ctx: Context, session_id: str) -> None:
    if not ctx.catalog.is_live(session_id, ctx.clock.now()):
        raise session_not_found(session_id)


def create(
    ctx: Context,
    session_id: str | None,
    *,
    label: str | None,
    metadata: Mapping[str, Any] | None,
    idle_timeout_s: int | Default | None,
    max_age_s: int | Default | None,
    confirm: Callable[[CreatedSession], None] | None,
    capped: bool,
    completion: Completion[CreatedSession] | None = None,
) -> CreatedSession:
    """Create a session (see :meth:`Store.create_session`)."""
    if session_id is None:
        session_id = ids.new_uuid7()
    else:
        ids.check_session_id(session_id)
    label = check_label(label)
    checked_metadata = check_metadata(metadata)
    idle = ctx.settings.idle_timeout_s if isinstance(idle_timeout_s, Default) else idle_timeout_s
    max_age = ctx.settings.max_age_s if isinstance(max_age_s, Default) else max_age_s
    idle = check_timeout("idle_timeout_s", idle)
    max_age = check_timeout("max_age_s", max_age)
    if capped:
        asked = {"idle_timeout_s": idle_timeout_s, "max_age_s": max_age_s}
        check_ceilings(ctx.settings, {k: v for k, v in asked.items() if not isinstance(v, Default)})

    now = ctx.clock.now()
    if ctx.catalog.get_session_row(session_id) is not None:
        if ctx.catalog.is_live(session_id, now):
            raise Conflict(f"session {session_id} already exists")
        _remove_earlier(ctx, session_id, now)
    token = ids.new_session_token()

    def confirmed(session: Session) -> None:
        if confirm is not None:
            confirm(CreatedSession(session, token))

    session = ctx.catalog.insert_session(
        {
            "id": session_id,
            "token_hash": ids.hash_secret(token),
            "label": label,
            "metadata": checked_metadata,
            "state": SessionState.OPEN,
            "created_at": now,
            "last_activity_at": now,
            "idle_timeout_s": idle,
            "max_age_s": max_age,
            "expires_at": session_deadline(now, now, idle, max_age),
        },
        confirmed,
        None if completion is None else completion.of(lambda s: CreatedSession(s, token)),
    )
    return CreatedSession(session, token)


def get(ctx: Context, session_id: str) -> Session:
    require_live(ctx, session_id)
    session = ctx.catalog.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    return session


def update(
    ctx: Context,
    session_id: str,
    *,
    label: str | Unchanged | None,
    metadata: Mapping[str, Any] | Unchanged,
    idle_timeout_s: int | Unchanged | None,
    max_age_s: int | Unchanged | None,
    confirm: Callable[[Session], None] | None,
    capped: bool,
) -> tuple[Session, Session]:
    """Change a live session (see :meth:`Store.update_session`); (before, after)."""
    if not ids.SESSION_ID_RE.fullmatch(session_id):
        raise session_not_found(session_id)
    values: dict[str, Any] = {}
    if not isinstance(label, Unchanged):
        values["label"] = check_label(label)
    if not isinstance(metadata, Unchanged):
        values["metadata"] = check_metadata(metadata)
    if not isinstance(idle_timeout_s, Unchanged):
        values["idle_timeout_s"] = check_timeout("idle_timeout_s", idle_timeout_s)
    if not isinstance(max_age_s, Unchanged):
        values["max_age_s"] = check_timeout("max_age_s", max_age_s)
    if capped:
        check_ceilings(ctx.settings, values)
    now = ctx.clock.now()

    def change(row: Any) -> dict[str, Any]:
        idle = values.get("idle_timeout_s", row.idle_timeout_s)
        max_age = values.get("max_age_s", row.max_age_s)
        if max_age is not None and row.created_at + timedelta(seconds=max_age) <= now:
            age = int((now - row.created_at).total_seconds())
            raise InvalidInput(
                f"max_age_s {max_age} has already passed (the session is {age} s old): "
                "close the session to end it now"
            )
        deadline = session_deadline(now, row.created_at, idle, max_age)
        return {**values, "last_activity_at": now, "expires_at": deadline}

    changed = ctx.catalog.update_session(session_id, now, change, confirm)
    if changed is None:
        raise session_not_found(session_id)
    return changed


def list_with_leases(ctx: Context, cursor: str | None, limit: int) -> Page[tuple[Session, int]]:
    limit = check_limit(limit)
    rows = ctx.catalog.list_sessions_with_leases(cursor, limit + 1, ctx.clock.now())
    return page(rows, limit, lambda row: row[0].id)


def inspect(ctx: Context, session_id: str) -> tuple[Session, int, list[Artifact]]:
    session = ctx.catalog.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    now = ctx.clock.now()
    leases = sum(lease.is_valid(now) for lease in ctx.catalog.list_leases(session_id))
    artifacts = ctx.catalog.list_artifacts(session_id, None, None, MAX_PAGE)
    return session, leases, artifacts


def _remove_earlier(ctx: Context, session_id: str, now: datetime) -> None:
    """Remove what is left of an earlier session of this ID that is no longer live, as the
    cleanup would have (and with its reason): a client-chosen ID never reaches old data."""
    earlier = ctx.catalog.begin_close(session_id, now, force=False)
    if earlier is not None:
        reason = Rule.CLOSING if earlier.state == SessionState.CLOSING else Rule.IDLE
        remove_session(ctx, session_id, reason, now)
