"""What the console's lists read: sessions a page at a time, in one of a few orders, with
filters; and the figures (artifacts, bytes, tasks, leases) of that page's rows only.

Every order is read along an index of ``sessions`` from a keyset position, never with an
OFFSET, so a page costs the same at the first session as at the hundred-thousandth. An order
is one or more *segments*, read one after the other: a segment is a fixed condition and the
columns it is sorted by (the ID last, to break ties), which together are an index's prefix.
Sessions without a deadline, for instance, come after all those with one, in a segment of
their own, so that no database's NULL ordering enters the keyset comparison.

Counts and bytes are not kept per session (they are summed from ``artifacts``), so there is no
order by size: at 100,000 sessions it would mean summing every artifact for every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    func,
    literal,
    select,
    tuple_,
)

from ephemera.catalog.db import Database
from ephemera.catalog.rows import session_model
from ephemera.catalog.schema import artifacts, leases, sessions, tasks
from ephemera.catalog.tasks import _tasks as tasks_with_outputs
from ephemera.errors import InvalidInput
from ephemera.models import ArtifactState, Session, SessionState, Task, TaskState

S = sessions.c


class SessionOrder(StrEnum):
    """The orders the sessions list offers: each one reads an index."""

    ID = "id"  # the primary key
    CREATED = "created"  # newest first: (created_at, id)
    ACTIVITY = "activity"  # most recently active first: (last_activity_at, id)
    DEADLINE = "deadline"  # soonest deadline first, then those without one: (expires_at, id)
    STATE = "state"  # closing, then open; each by deadline: (state, expires_at, id)


class StateFilter(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    # Open, but past its deadline: the idle cleanup's next work (unless a lease keeps it).
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Segment:
    where: tuple[ColumnElement[bool], ...]
    columns: tuple[Column[Any], ...]
    descending: bool = False


def _by_deadline(*where: ColumnElement[bool]) -> list[Segment]:
    return [
        Segment((*where, S.expires_at.is_not(None)), (S.expires_at, S.id)),
        Segment((*where, S.expires_at.is_(None)), (S.id,)),
    ]


SEGMENTS: dict[SessionOrder, list[Segment]] = {
    SessionOrder.ID: [Segment((), (S.id,))],
    SessionOrder.CREATED: [Segment((), (S.created_at, S.id), descending=True)],
    SessionOrder.ACTIVITY: [Segment((), (S.last_activity_at, S.id), descending=True)],
    SessionOrder.DEADLINE: _by_deadline(),
    SessionOrder.STATE: [
        *_by_deadline(S.state == SessionState.CLOSING),
        *_by_deadline(S.state == SessionState.OPEN),
    ],
}


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ends: the segment, and the last row's values of its sort columns."""

    segment: int
    values: tuple[str | datetime, ...]

    def plain(self) -> list[object]:
        """The segment and the values as JSON can hold them (see ``parse_position``)."""
        return [
            self.segment,
            [v.isoformat() if isinstance(v, datetime) else v for v in self.values],
        ]


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """``text``: an ID prefix or a piece of the label, either case; ``state``: see StateFilter."""

    text: str | None = None
    state: StateFilter | None = None

    def conditions(self, now: datetime) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.text:
            found.append(
                S.id.istartswith(self.text, autoescape=True)
                | S.label.icontains(self.text, autoescape=True)
            )
        if self.state == StateFilter.OPEN:
            found.append(S.state == SessionState.OPEN)
        elif self.state == StateFilter.CLOSING:
            found.append(S.state == SessionState.CLOSING)
        elif self.state == StateFilter.EXPIRED:
            found.append(
                and_(
                    S.state == SessionState.OPEN,
                    S.expires_at.is_not(None),
                    S.expires_at <= now,
                )
            )
        return found


@dataclass(frozen=True, slots=True)
class SessionFigures:
    """A session's row in the list: what it holds and what holds it."""

    session: Session
    tasks: int
    active_tasks: int
    leases: int


def parse_position(order: SessionOrder, segment: int, values: Sequence[object]) -> Position:
    """A position of ``order`` from its plain form (``Position.plain``); InvalidInput for one
    that is not this order's (a cursor made up or mangled)."""
    segments = SEGMENTS[order]
    if not 0 <= segment < len(segments):
        raise InvalidInput("invalid cursor")
    columns = segments[segment].columns
    if len(values) != len(columns) or not all(isinstance(v, str) for v in values):
        raise InvalidInput("invalid cursor")
    parsed: list[str | datetime] = []
    for column, value in zip(columns, values, strict=True):
        assert isinstance(value, str)
        if column is S.id:
            if len(value) > 64:
                raise InvalidInput("invalid cursor")
            parsed.append(value)
            continue
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput("invalid cursor") from None
        if moment.tzinfo is None:
            raise InvalidInput("invalid cursor")
        parsed.append(moment)
    return Position(segment, tuple(parsed))


def _segment_query(
    segment: Segment,
    conditions: Sequence[ColumnElement[bool]],
    after: tuple[str | datetime, ...] | None,
    limit: int,
) -> Select[Any]:
    query = select(sessions).where(*segment.where, *conditions)
    if after is not None:
        # A row-value comparison: one index range on both databases. Each value is bound
        # with its column's type (times go to SQLite as its text, in its order).
        keys = tuple_(*segment.columns)
        start = tuple_(*(literal(v, c.type) for c, v in zip(segment.columns, after, strict=True)))
        query = query.where(keys < start if segment.descending else keys > start)
    order = [c.desc() if segment.descending else c.asc() for c in segment.columns]
    return query.order_by(*order).limit(limit)


def session_page(
    db: Database,
    order: SessionOrder,
    where: SessionFilter,
    after: Position | None,
    limit: int,
    now: datetime,
) -> list[tuple[SessionFigures, Position]]:
    """Up to ``limit`` sessions after ``after`` in ``order``, each with its figures and its
    position (the next page starts after the last one's)."""
    segments = SEGMENTS[order]
    conditions = where.conditions(now)
    first = 0 if after is None else after.segment
    found: list[tuple[Any, Position]] = []
    with db.read() as conn:
        for index in range(first, len(segments)):
            segment = segments[index]
            start = after.values if after is not None and index == after.segment else None
            query = _segment_query(segment, conditions, start, limit - len(found))
            for row in conn.execute(query):
                values = tuple(getattr(row, c.name) for c in segment.columns)
                found.append((row, Position(index, values)))
            if len(found) >= limit:
                break
        figures = _figures(conn, [row.id for row, _ in found], now)
    return [(_summary(row, figures.get(row.id)), position) for row, position in found]


def _summary(row: Any, figures: tuple[int, int, int, int, int] | None) -> SessionFigures:
    count, size, total_tasks, active, held = figures or (0, 0, 0, 0, 0)
    return SessionFigures(session_model(row, count, size), total_tasks, active, held)


def _figures(
    conn: Connection, session_ids: list[str], now: datetime
) -> dict[str, tuple[int, int, int, int, int]]:
    """(artifacts, bytes, tasks, active tasks, valid leases) of these sessions: one grouped
    query per table, each reading the rows of these sessions only (through its index)."""
    if not session_ids:
        return {}
    usage = {
        r.session_id: (int(r.n), int(r.size))
        for r in conn.execute(
            select(
                artifacts.c.session_id,
                func.count().label("n"),
                func.coalesce(func.sum(artifacts.c.size), 0).label("size"),
            )
            .where(
                artifacts.c.session_id.in_(session_ids),
                artifacts.c.state == ArtifactState.READY,
            )
            .group_by(artifacts.c.session_id)
        )
    }
    is_active = tasks.c.state.in_((TaskState.PENDING, TaskState.RUNNING))
    work = {
        r.session_id: (int(r.n), int(r.active))
        for r in conn.execute(
            select(
                tasks.c.session_id,
                func.count().label("n"),
                func.coalesce(func.sum(case((is_active, 1), else_=0)), 0).label("active"),
            )
            .where(tasks.c.session_id.in_(session_ids))
            .group_by(tasks.c.session_id)
        )
    }
    held = {
        r.session_id: int(r.n)
        for r in conn.execute(
            select(leases.c.session_id, func.count().label("n"))
            .where(leases.c.session_id.in_(session_ids), leases.c.expires_at > now)
            .group_by(leases.c.session_id)
        )
    }
    return {
        sid: (*usage.get(sid, (0, 0)), *work.get(sid, (0, 0)), held.get(sid, 0))
        for sid in session_ids
    }


def session_figures(db: Database, session_id: str, now: datetime) -> SessionFigures | None:
    """One session (live or past its deadline) with its figures; None once it is gone."""
    with db.read() as conn:
        row = conn.execute(select(sessions).where(S.id == session_id)).first()
        if row is None:
            return None
        figures = _figures(conn, [session_id], now)
    return _summary(row, figures.get(session_id))


def recent_tasks(db: Database, session_id: str, limit: int) -> list[Task]:
    """A session's newest tasks first (task IDs are time-ordered), with their outputs."""
    with db.read() as conn:
        rows = list(
            conn.execute(
                select(tasks)
                .where(tasks.c.session_id == session_id)
                .order_by(tasks.c.id.desc())
                .limit(limit)
            )
        )
        return tasks_with_outputs(conn, rows)


class BrowseCatalog:
    """The console's lists; reached as ``catalog.browse``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def session_page(
        self,
        order: SessionOrder,
        where: SessionFilter,
        after: Position | None,
        limit: int,
        now: datetime,
    ) -> list[tuple[SessionFigures, Position]]:
        return session_page(self._db, order, where, after, limit, now)

    def session_figures(self, session_id: str, now: datetime) -> SessionFigures | None:
        return session_figures(self._db, session_id, now)

    def recent_tasks(self, session_id: str, limit: int) -> list[Task]:
        return recent_tasks(self._db, session_id, limit)
