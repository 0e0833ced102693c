"""Cleanup sweeps: which artifacts and sessions a cleanup selects, and claiming them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    not_,
    or_,
    select,
    tuple_,
    update,
)

from ephemera.catalog import events
from ephemera.catalog.db import Database, lock_first
from ephemera.catalog.predicates import (
    RESULT_KINDS,
    artifact_leased,
    artifact_retained,
    session_leased,
    session_retained,
)
from ephemera.catalog.schema import artifacts, lease_artifacts, sessions
from ephemera.catalog.usage import all_usage
from ephemera.models import ArtifactState, SessionState


class ArtifactRule(StrEnum):
    """Why an artifact-deleting cleanup selects an artifact (see ``ArtifactSweep``)."""

    EXPIRED = "expired"
    OLD_RESULTS = "old-results"


class SessionRule(StrEnum):
    """Why a session-closing cleanup selects a session (see ``SessionSweep``)."""

    IDLE = "idle"
    ONE = "one"
    QUOTA = "quota"


@dataclass(frozen=True, slots=True)
class ArtifactSweep:
    """Which artifacts an artifact-deleting cleanup selects.

    ``expired``: temporary artifacts past ``expires_at``. ``old-results``: outputs of a
    producer that became ready before ``cutoff``. Retained artifacts are never selected.
    """

    rule: ArtifactRule
    now: datetime
    cutoff: datetime

    def condition(self) -> ColumnElement[bool]:
        if self.rule == ArtifactRule.EXPIRED:
            matches = and_(
                artifacts.c.storage_class == "temporary",
                artifacts.c.expires_at.is_not(None),
                artifacts.c.expires_at <= self.cutoff,
            )
        elif self.rule == ArtifactRule.OLD_RESULTS:
            matches = and_(
                artifacts.c.kind.in_(RESULT_KINDS),
                artifacts.c.producer.is_not(None),
                artifacts.c.ready_at.is_not(None),
                artifacts.c.ready_at <= self.cutoff,
            )
        else:
            raise ValueError(self.rule)
        return and_(matches, not_(artifact_retained(self.now)))

    def order(self) -> tuple[Any, Any]:
        expired = self.rule == ArtifactRule.EXPIRED
        column = artifacts.c.expires_at if expired else artifacts.c.ready_at
        return column, artifacts.c.id


@dataclass(frozen=True, slots=True)
class SessionSweep:
    """Which sessions a session-closing cleanup selects.

    ``idle``: open sessions past their deadline (or, with ``idle_before``, inactive since
    then), and sessions stuck in ``closing``. ``one``: the named session, now. ``quota``:
    the named session, if still open.
    """

    rule: SessionRule
    now: datetime
    idle_before: datetime | None = None
    session_id: str | None = None

    def condition(self) -> ColumnElement[bool]:
        closing = sessions.c.state == SessionState.CLOSING
        is_open = sessions.c.state == SessionState.OPEN
        if self.rule == SessionRule.IDLE:
            if self.idle_before is not None:
                idle = sessions.c.last_activity_at <= self.idle_before
            else:
                idle = and_(sessions.c.expires_at.is_not(None), sessions.c.expires_at <= self.now)
            return or_(closing, and_(is_open, idle))
        if self.rule in (SessionRule.ONE, SessionRule.QUOTA):
            return and_(sessions.c.id == self.session_id, or_(closing, is_open))
        raise ValueError(self.rule)

    def unprotected(self) -> ColumnElement[bool]:
        """No valid lease; and, except under quota pressure, no retained artifact.

        The contract lets retention outlive idle expiry, but the quota spares only what a
        lease protects.
        """
        free = not_(session_leased(self.now))
        if self.rule == SessionRule.QUOTA:
            return free
        return and_(free, not_(session_retained(self.now)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An artifact or session a sweep selected (for a session, ``id == session_id``).

    ``leased``/``retained``: protected at selection time; the claim checks again.
    ``order_key``: the sweep's sort value, to resume after this candidate.
    """

    id: str
    session_id: str
    size: int
    state: ArtifactState | SessionState
    leased: bool
    retained: bool
    order_key: Any = None


# A batch of artifact IDs, bound as one expanding parameter ``ids``.
_IN_BATCH = artifacts.c.id.in_(bindparam("ids", expanding=True))
_DROP_LEASE_ROWS = delete(lease_artifacts).where(
    lease_artifacts.c.artifact_id.in_(bindparam("ids", expanding=True))
)
_DROP_DELETING = (
    delete(artifacts)
    .where(_IN_BATCH, artifacts.c.state == ArtifactState.DELETING)
    .returning(artifacts.c.session_id, artifacts.c.id, artifacts.c.size)
)


def _session_bytes() -> Any:
    """Bytes of every artifact record of the session (correlates ``sessions``)."""
    return (
        select(func.coalesce(func.sum(artifacts.c.size), 0))
        .where(artifacts.c.session_id == sessions.c.id)
        .scalar_subquery()
    )


def artifact_candidates(
    db: Database, sweep: ArtifactSweep, after: tuple[Any, str] | None, limit: int
) -> list[Candidate]:
    """The next batch the sweep selects, in index order after ``after``."""
    first, second = sweep.order()
    query = (
        select(
            artifacts.c.id,
            artifacts.c.session_id,
            artifacts.c.size,
            artifacts.c.state,
            first.label("order_key"),
            artifact_leased(sweep.now).label("leased"),
        )
        .where(
            artifacts.c.state.in_([ArtifactState.READY, ArtifactState.DELETING]),
            sweep.condition(),
        )
        .order_by(first, second)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(first, second) > tuple_(after[0], after[1]))
    with db.read() as conn:
        return [
            Candidate(
                id=r.id,
                session_id=r.session_id,
                size=r.size or 0,
                state=ArtifactState(r.state),
                leased=bool(r.leased) and r.state == ArtifactState.READY,
                retained=False,
                order_key=r.order_key,
            )
            for r in conn.execute(query)
        ]


def claim_artifacts(db: Database, sweep: ArtifactSweep, ids: Sequence[str]) -> list[Candidate]:
    """ready -> deleting for those the sweep still selects and no lease protects.

    Artifacts already ``deleting`` (an interrupted run) are returned too, so a later run
    finishes them. The protection is checked in the same statement that marks.
    """
    if not ids:
        return []
    # One expanding parameter, not a literal list: the statement's compiled form is cached,
    # and its 2,000 IDs are bound as they are instead of coerced one by one.
    batch = {"ids": list(ids)}
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            lock_first(
                conn,
                select(sessions.c.id)
                .where(
                    sessions.c.id.in_(select(artifacts.c.session_id).where(artifacts.c.id.in_(ids)))
                )
                .order_by(sessions.c.id),
                read=True,
            )
            # Cleaners running at once (replicas) split the batch instead of queueing:
            # rows another run holds are its to finish.
            claimable = conn.scalars(
                select(artifacts.c.id)
                .where(_IN_BATCH)
                .order_by(artifacts.c.id)
                .with_for_update(skip_locked=True),
                batch,
            ).all()
            batch = {"ids": list(claimable)}
        marked = conn.execute(
            update(artifacts)
            .where(
                _IN_BATCH,
                artifacts.c.state == ArtifactState.READY,
                sweep.condition(),
                not_(artifact_leased(sweep.now)),
            )
            .values(state=ArtifactState.DELETING)
            .returning(artifacts.c.session_id, artifacts.c.id, artifacts.c.size),
            batch,
        ).all()
        events.record(
            conn, [events.artifact_deleted(r.session_id, r.id, "cleanup") for r in marked]
        )
        rows = list(marked)
        # Of the rest, those already deleting (an interrupted run's): this run finishes them.
        rest = set(ids).difference(r.id for r in marked)
        if rest:
            rows += conn.execute(
                select(artifacts.c.session_id, artifacts.c.id, artifacts.c.size).where(
                    _IN_BATCH, artifacts.c.state == ArtifactState.DELETING
                ),
                {"ids": sorted(rest)},
            ).all()
        return [
            Candidate(
                id=r.id,
                session_id=r.session_id,
                size=r.size or 0,
                state=ArtifactState.DELETING,
                leased=False,
                retained=False,
            )
            for r in rows
        ]


def drop_deleting_artifacts(db: Database, ids: Sequence[str]) -> list[tuple[str, str, int]]:
    """Remove ``deleting`` records; returns (session, id, size) of those this call removed."""
    if not ids:
        return []
    with db.write() as conn:
        batch = {"ids": list(ids)}
        conn.execute(_DROP_LEASE_ROWS, batch)
        rows = conn.execute(_DROP_DELETING, batch)
        return [(r.session_id, r.id, r.size or 0) for r in rows]


def session_candidates(
    db: Database, sweep: SessionSweep, after: str | None, limit: int
) -> list[Candidate]:
    usage = _session_bytes()
    query = (
        select(
            sessions.c.id,
            sessions.c.state,
            usage.label("size"),
            session_leased(sweep.now).label("leased"),
            session_retained(sweep.now).label("retained"),
        )
        .where(sweep.condition())
        .order_by(sessions.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sessions.c.id > after)
    with db.read() as conn:
        return [
            Candidate(
                id=r.id,
                session_id=r.id,
                size=int(r.size or 0),
                state=SessionState(r.state),
                leased=bool(r.leased) and r.state == SessionState.OPEN,
                retained=bool(r.retained) and r.state == SessionState.OPEN,
            )
            for r in conn.execute(query)
        ]


def claim_session(db: Database, sweep: SessionSweep) -> bool:
    """open -> closing if the sweep still selects it and nothing protects it.

    A session already ``closing`` is claimed again, so an interrupted close is finished.
    """
    assert sweep.session_id is not None
    with db.write() as conn:
        lock_first(conn, select(sessions.c.id).where(sessions.c.id == sweep.session_id))
        claimed = conn.execute(
            update(sessions)
            .where(
                sessions.c.id == sweep.session_id,
                sweep.condition(),
                or_(sessions.c.state == SessionState.CLOSING, sweep.unprotected()),
            )
            .values(
                state=SessionState.CLOSING,
                closing_since=case(
                    (sessions.c.closing_since.is_(None), sweep.now),
                    else_=sessions.c.closing_since,
                ),
            )
            .returning(sessions.c.closing_since)
        ).first()
        if claimed is not None and claimed.closing_since == sweep.now:
            events.record(conn, [events.session_event(sweep.session_id, "session.closing")])
        return claimed is not None


def session_usage_all(db: Database, session_id: str) -> tuple[int, int]:
    """Number and bytes of every artifact record of a session, whatever its state."""
    with db.read() as conn:
        return all_usage(conn, session_id)


def eviction_candidates(
    db: Database, now: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[Candidate]:
    """Open sessions, least recently active first, for the quota."""
    usage = _session_bytes()
    query = (
        select(
            sessions.c.id,
            sessions.c.state,
            sessions.c.last_activity_at.label("order_key"),
            usage.label("size"),
            session_leased(now).label("leased"),
        )
        .where(sessions.c.state == SessionState.OPEN)
        .order_by(sessions.c.last_activity_at, sessions.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(
            or_(
                sessions.c.last_activity_at > after[0],
                and_(sessions.c.last_activity_at == after[0], sessions.c.id > after[1]),
            )
        )
    with db.read() as conn:
        return [
            Candidate(
                id=r.id,
                session_id=r.id,
                size=int(r.size or 0),
                state=SessionState(r.state),
                leased=bool(r.leased),
                retained=False,
                order_key=r.order_key,
            )
            for r in conn.execute(query)
        ]


def stored_bytes(db: Database) -> int:
    with db.read() as conn:
        return int(conn.scalar(select(func.coalesce(func.sum(artifacts.c.size), 0))) or 0)
