"""Conditions shared by the concept modules: what makes a session live, an artifact leased
or retained. Each correlates with the table it is named for, so it fits in any query on it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BindParameter, ColumnElement, and_, exists, or_, text

from ephemera.catalog.schema import artifacts, lease_artifacts, leases, sessions
from ephemera.models import SessionState

# Artifact kinds that age out as results when a producer (a task) wrote them.
RESULT_KINDS = ("result", "output")
# The predicate of the partial index on pending uploads, spelled exactly as the index has it.
PENDING = text("artifacts.state = 'pending'")


# An instant: a value, or a bound parameter of a statement built once (the hot path's).
Instant = datetime | BindParameter[datetime]


def session_leased(now: Instant) -> ColumnElement[bool]:
    """A valid lease names the session or any of its artifacts (correlates ``sessions``)."""
    return exists().where(leases.c.session_id == sessions.c.id, leases.c.expires_at > now)


def live_session(now: Instant) -> ColumnElement[bool]:
    """Open, and before its deadline or kept alive by a valid lease (correlates ``sessions``).

    A lease protects its session from expiry too: a worker holding one is never locked out.
    """
    return and_(
        sessions.c.state == SessionState.OPEN,
        or_(
            sessions.c.expires_at.is_(None),
            sessions.c.expires_at > now,
            session_leased(now),
        ),
    )


def artifact_leased(now: datetime) -> ColumnElement[bool]:
    """A valid lease names the artifact or its whole session (correlates ``artifacts``)."""
    return or_(
        exists().where(
            leases.c.session_id == artifacts.c.session_id,
            leases.c.scope == "session",
            leases.c.expires_at > now,
        ),
        exists().where(
            lease_artifacts.c.artifact_id == artifacts.c.id,
            leases.c.id == lease_artifacts.c.lease_id,
            leases.c.expires_at > now,
        ),
    )


def artifact_retained(now: datetime) -> ColumnElement[bool]:
    return and_(artifacts.c.retain_until.is_not(None), artifacts.c.retain_until > now)


def session_retained(now: datetime) -> ColumnElement[bool]:
    return exists().where(
        artifacts.c.session_id == sessions.c.id,
        artifacts.c.retain_until.is_not(None),
        artifacts.c.retain_until > now,
    )
