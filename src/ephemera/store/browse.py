"""What the web console lists and shows of sessions, for an operator: every session (live or
past its deadline, until cleanup removes it) a page at a time, and one session's artifacts,
tasks and leases. Reading here is no activity of the session: looking never keeps it alive.

A page's cursor is opaque to callers: the order it belongs to and the keyset position of the
last row, so the next page starts right after it along the order's index.
"""

from __future__ import annotations

import base64
import binascii
import json

from ephemera import ids
from ephemera.catalog.browse import (
    Position,
    SessionFigures,
    SessionFilter,
    SessionOrder,
    StateFilter,
    parse_position,
)
from ephemera.context import Context
from ephemera.errors import InvalidInput
from ephemera.models import Artifact, Lease, Page, Task
from ephemera.store.limits import LABEL_MAX, check_limit
from ephemera.store.paging import page
from ephemera.store.sessions import session_not_found

__all__ = ["BrowseMethods", "SessionFigures", "SessionOrder", "StateFilter"]


def _cursor(order: SessionOrder, plain: list[object]) -> str:
    text = json.dumps([str(order), *plain], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _position(order: SessionOrder, cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, segment, values = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput("invalid cursor") from None
    if made_for != order or not isinstance(segment, int) or not isinstance(values, list):
        raise InvalidInput("invalid cursor: it belongs to another order")
    return parse_position(order, segment, values)


class BrowseMethods:
    """The console's listing part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def browse_sessions(
        self,
        *,
        text: str | None = None,
        state: StateFilter | str | None = None,
        order: SessionOrder | str = SessionOrder.ID,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[SessionFigures]:
        """Sessions whose ID starts with ``text`` or whose label contains it (either case),
        in ``state``, in ``order``, each with its artifacts, bytes, tasks and valid leases."""
        ctx = self.context
        limit = check_limit(limit)
        try:
            chosen = SessionOrder(order)
            wanted = StateFilter(state) if state else None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if text is not None and len(text) > LABEL_MAX:
            raise InvalidInput(f"search text must be at most {LABEL_MAX} characters")
        after = None if cursor is None else _position(chosen, cursor)
        rows = ctx.catalog.browse.session_page(
            chosen,
            SessionFilter(text.strip() if text else None, wanted),
            after,
            limit + 1,
            ctx.clock.now(),
        )
        found = page(rows, limit, lambda row: _cursor(chosen, row[1].plain()))
        return Page([figures for figures, _ in found.items], found.next_cursor)

    def session_figures(self, session_id: str) -> SessionFigures:
        """One session, live or past its deadline, with its figures; NotFound once gone."""
        ctx = self.context
        found = None
        if ids.SESSION_ID_RE.fullmatch(session_id):
            found = ctx.catalog.browse.session_figures(session_id, ctx.clock.now())
        if found is None:
            raise session_not_found(session_id)
        return found

    def session_artifacts(
        self, session_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Artifact]:
        """A session's ready artifacts in ID order, live or past its deadline."""
        limit = check_limit(limit)
        if cursor is not None and not ids.is_artifact_id(cursor):
            raise InvalidInput("invalid cursor")
        rows = self.context.catalog.list_artifacts(session_id, None, cursor, limit + 1)
        return page(rows, limit, lambda artifact: artifact.id)

    def recent_tasks(self, session_id: str, limit: int = 50) -> list[Task]:
        """A session's newest tasks first, with their progress, results and outputs."""
        return self.context.catalog.browse.recent_tasks(session_id, check_limit(limit))

    def session_leases(self, session_id: str) -> list[Lease]:
        """Every lease record of a session, valid or expired (not yet purged)."""
        return self.context.catalog.list_leases(session_id)
