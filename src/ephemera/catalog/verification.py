"""Integrity at rest: what verification and the scrub read, and the flags they set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, update

from ephemera.catalog.db import Database
from ephemera.catalog.schema import artifacts, sessions
from ephemera.models import ArtifactState, SessionState


@dataclass(frozen=True, slots=True)
class Stored:
    """What verification needs of an artifact record."""

    id: str
    session_id: str
    name: str
    size: int
    sha256: str
    integrity: str | None


_STORED = (
    artifacts.c.id,
    artifacts.c.session_id,
    artifacts.c.name,
    artifacts.c.size,
    artifacts.c.sha256,
    artifacts.c.integrity,
)


def _verifiable() -> ColumnElement[bool]:
    """A ready artifact of an open session: what verification reads and flags.

    A closing session's bytes are being removed (its artifacts stay ``ready`` until its
    records go), and a ``deleting`` artifact's too: their absence is no finding.
    """
    return and_(
        artifacts.c.state == ArtifactState.READY,
        artifacts.c.session_id.in_(
            select(sessions.c.id).where(sessions.c.state == SessionState.OPEN)
        ),
    )


def _scrub_due(due_before: datetime) -> ColumnElement[bool]:
    return and_(
        artifacts.c.integrity.is_(None),
        or_(
            artifacts.c.verified_at <= due_before,
            and_(artifacts.c.verified_at.is_(None), artifacts.c.ready_at <= due_before),
        ),
    )


def verify_totals(
    db: Database, session_id: str | None, due_before: datetime | None
) -> tuple[int, int]:
    """Number and bytes of the ready artifacts a verify run will read."""
    query = select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(_verifiable())
    if session_id is not None:
        query = query.where(artifacts.c.session_id == session_id)
    if due_before is not None:
        query = query.where(_scrub_due(due_before))
    with db.read() as conn:
        count, total = conn.execute(query).one()
    return int(count), int(total)


def verify_batch(
    db: Database, session_id: str | None, after: str | None, limit: int
) -> list[Stored]:
    """Ready artifacts of open sessions (one, or all) in ID order after ``after``."""
    query = select(*_STORED).where(_verifiable()).order_by(artifacts.c.id).limit(limit)
    if session_id is not None:
        query = query.where(artifacts.c.session_id == session_id)
    if after is not None:
        query = query.where(artifacts.c.id > after)
    with db.read() as conn:
        return [Stored(*r) for r in conn.execute(query)]


def scrub_batch(
    db: Database, due_before: datetime, skip: Sequence[str], limit: int
) -> list[Stored]:
    """Unflagged ready artifacts not verified since ``due_before``, least recently first.

    Never verified ones (by upload time) come first, then by ``verified_at``: each
    verification moves an artifact out of the selection, so a stopped scrub resumes
    where it stopped. ``skip``: those a read error left undecided in this run.
    """
    never = (
        select(*_STORED)
        .where(
            _verifiable(),
            artifacts.c.integrity.is_(None),
            artifacts.c.verified_at.is_(None),
            artifacts.c.ready_at <= due_before,
        )
        .order_by(artifacts.c.ready_at, artifacts.c.id)
    )
    stale = (
        select(*_STORED)
        .where(
            _verifiable(),
            artifacts.c.integrity.is_(None),
            artifacts.c.verified_at <= due_before,
        )
        .order_by(artifacts.c.verified_at, artifacts.c.id)
    )
    if skip:
        never = never.where(artifacts.c.id.not_in(skip))
        stale = stale.where(artifacts.c.id.not_in(skip))
    with db.read() as conn:
        found = [Stored(*r) for r in conn.execute(never.limit(limit))]
        if len(found) < limit:
            found += [Stored(*r) for r in conn.execute(stale.limit(limit - len(found)))]
    return found


def mark_verified(db: Database, ids: Sequence[str], now: datetime) -> None:
    """The bytes hashed right: record when, and lift any flag (restored from a backup)."""
    if not ids:
        return
    with db.write() as conn:
        conn.execute(
            update(artifacts)
            .where(artifacts.c.id.in_(ids), artifacts.c.state == ArtifactState.READY)
            .values(verified_at=now, integrity=None, integrity_error=None)
        )


def flag_artifacts(db: Database, flags: Sequence[tuple[str, str, str]]) -> set[str]:
    """Flag (id, integrity, error) artifacts; returns the IDs flagged.

    Re-checked as it writes: an artifact marked deleting, or whose session began closing,
    since it was read is being removed, not found wrong, and is left alone.
    """
    if not flags:
        return set()
    ids = [f[0] for f in flags]
    with db.write() as conn:
        conn.execute(
            update(artifacts)
            .where(artifacts.c.id == bindparam("flag_id"), _verifiable())
            .values(integrity=bindparam("flag_integrity"), integrity_error=bindparam("flag_error")),
            [
                {"flag_id": i, "flag_integrity": kind, "flag_error": error[:500]}
                for i, kind, error in flags
            ],
        )
        return set(
            conn.scalars(
                select(artifacts.c.id).where(
                    artifacts.c.id.in_(ids), _verifiable(), artifacts.c.integrity.is_not(None)
                )
            )
        )


def flagged_counts(db: Database) -> dict[str, int]:
    """Ready artifacts verification found wrong, by integrity flag (``corrupt``,
    ``missing``). Reads only the partial index of flagged ones: cheap at every scrape."""
    with db.read() as conn:
        rows = conn.execute(
            select(artifacts.c.integrity, func.count())
            .where(artifacts.c.integrity.is_not(None), artifacts.c.state == ArtifactState.READY)
            .group_by(artifacts.c.integrity)
        )
        return {r[0]: int(r[1]) for r in rows}


def never_verified_count(db: Database) -> int:
    """Ready artifacts whose bytes no verification has hashed yet."""
    with db.read() as conn:
        never = conn.scalar(
            select(func.count()).where(
                artifacts.c.state == ArtifactState.READY, artifacts.c.verified_at.is_(None)
            )
        )
    return int(never or 0)
