"""Following a session's events: where a stream starts, what it reads next, when it ends.

A stream starts after the ``last_event_id`` it is given (a reconnect) or, without one, after
the session's newest event (only what happens from now on). Events of an earlier session of
the same ID are never read: a stream starts no earlier than its session's opening event. A
start older than what the log keeps (see ``event_retention_s``) is answered with a ``reset``
event first: the client knows it missed events and reads the current state instead. A
stream ends with its session's ``session.closed`` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from ephemera import ids
from ephemera.catalog import Wakeup, session_topic
from ephemera.context import Context
from ephemera.errors import InvalidInput
from ephemera.models import Event
from ephemera.store.sessions import session_not_found, session_unreachable

READ_LIMIT = 500
CLOSED = "session.closed"
RESET = "reset"


def parse_last_event_id(value: str | None) -> int | None:
    """An event ID as a client sends it back; InvalidInput unless it is one of ours."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise InvalidInput(f"Last-Event-ID must be an event ID (a decimal number), not {value!r}")
    return int(value)


@dataclass
class EventFeed:
    """One stream's cursor over its session's events."""

    ctx: Context
    session_id: str
    cursor: int
    # Sent first: events after the given ID are gone (pruned), or it was not this session's.
    reset: Event | None = None
    ended: bool = False

    def read(self) -> list[Event]:
        """The next events in order (up to ``READ_LIMIT``), up to and including the session's
        closing one; after it ``ended`` is set and nothing more is read."""
        if self.ended:
            return []
        found, oldest = self.ctx.catalog.read_events(self.session_id, self.cursor, READ_LIMIT)
        if not found and oldest is not None and self.cursor + 1 < oldest:
            # An idle stream follows the pruned end of the log (it reads every few seconds,
            # long before anything of its session could be pruned).
            self.cursor = oldest - 1
        for index, event in enumerate(found):
            if event.type == CLOSED:
                self.ended = True
                found = found[: index + 1]
                break
        if found:
            self.cursor = found[-1].id
        return found

    @contextmanager
    def wakeups(self, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[Wakeup]:
        """Set whenever an event of this session commits (in any process on PostgreSQL).

        Enter it before the first ``read``, so nothing committed in between goes unnoticed.
        """
        with self.ctx.catalog.notifier.subscribe(session_topic(self.session_id), loop) as woken:
            yield woken


def open_feed(
    ctx: Context, session_id: str, credential: str, last_event_id: int | None
) -> EventFeed:
    """The feed of the live session that ``credential`` opens (a token, or an admin key
    already checked by ``Store.authenticate``), from ``last_event_id``.

    The session's identity and its place in the log are read in one statement: a token
    that no longer opens the session (closed, its ID taken again) is refused here.
    """
    is_key = ids.key_role(credential) is not None
    token_check = None if is_key else (lambda stored: ids.secret_matches(credential, stored))
    return open_feed_checked(ctx, session_id, token_check, last_event_id)


def open_feed_checked(
    ctx: Context,
    session_id: str,
    token_check: Callable[[str], bool] | None,
    last_event_id: int | None,
) -> EventFeed:
    """:func:`open_feed` for a caller authorised another way: ``token_check`` judges the
    session's token hash (None: an operator, already authorised)."""
    start = ctx.catalog.event_start(session_id)
    if start is None:
        raise (session_not_found if token_check is None else session_unreachable)(session_id)
    if token_check is not None and not token_check(start.token_hash):
        raise session_unreachable(session_id)
    if last_event_id is None:
        return EventFeed(ctx, session_id, start.live_head)
    # Not before this session's opening event (when it is kept): earlier ones are another's.
    floor = 0 if start.opened is None else start.opened - 1
    cursor = max(last_event_id, floor)
    # The newest ID this stream could have been given: its session's newest event, or a
    # reset's (the pruned end of the log). Judged within the session only, so that an answer
    # never tells whether other sessions' events have an ID (how busy the service is).
    known = max(start.live_head, 0 if start.oldest is None else start.oldest - 1)
    if last_event_id > known:
        # No event of this session has this ID: following it could skip the next ones.
        return _reset(ctx, session_id, start.live_head, last_event_id, "no event has this ID")
    if start.oldest is not None and cursor + 1 < start.oldest:
        # Some events after it are pruned (maybe this session's): start from the oldest kept.
        return _reset(
            ctx, session_id, start.oldest - 1, last_event_id, "events after it are not kept"
        )
    return EventFeed(ctx, session_id, cursor)


def _reset(ctx: Context, session_id: str, cursor: int, given: int, reason: str) -> EventFeed:
    """A feed that first says events were lost: the client re-reads the state it needs."""
    data = {"last_event_id": given, "reason": f"events were lost: {reason}"}
    reset = Event(cursor, session_id, RESET, data, ctx.clock.now())
    return EventFeed(ctx, session_id, cursor, reset=reset)


def prune(ctx: Context, now: datetime) -> int:
    """Remove events older than ``event_retention_s`` (the ``orphaned`` cleanup does it too)."""
    return ctx.catalog.prune_events(now - timedelta(seconds=ctx.settings.event_retention_s))


class EventMethods:
    """The live events' part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def open_events(
        self, session_id: str, credential: str, last_event_id: int | None = None
    ) -> EventFeed:
        """A feed of the session's events after ``last_event_id`` (None: from now on).

        ``credential`` is the session's token, or an admin key that :meth:`authenticate`
        accepted; a token that no longer opens the session is NotFound. See
        :mod:`ephemera.store.events`.
        """
        return open_feed(self.context, session_id, credential, last_event_id)

    def prune_events(self) -> int:
        """Remove events older than ``event_retention_s``; how many were removed."""
        return prune(self.context, self.context.clock.now())
