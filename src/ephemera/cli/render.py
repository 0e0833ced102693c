"""How values read on a terminal: sizes, instants, session states."""

from __future__ import annotations

from datetime import datetime

from ephemera.fsutil import binary_size
from ephemera.models import Session, SessionState


def size(n: int | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.0 GiB``; ``-`` for none."""
    return "-" if n is None else binary_size(n)


def instant(at: datetime | None, never: str = "never") -> str:
    return at.isoformat(timespec="seconds") if at is not None else never


def session_state(session: Session, now: datetime, leases: int) -> str:
    """``expired`` for an open session past its deadline and under no lease: it no longer
    answers and the next cleanup removes it, so calling it open would mislead."""
    if (
        session.state is SessionState.OPEN
        and session.expires_at is not None
        and session.expires_at <= now
        and not leases
    ):
        return "expired"
    return session.state.value
