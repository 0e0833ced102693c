"""The store's reads for the console's overview: which sessions hold the most, which have
been idle the longest, and what tells when the next scheduled cleanup is due."""

from __future__ import annotations

from datetime import datetime

from ephemera.context import Context
from ephemera.models import AuditEntry, Session

# A page shows a handful; the bound keeps every call a short index walk.
MAX_LISTED = 100


class OverviewMethods:
    """The overview's part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def largest_sessions(self, limit: int = 10) -> list[Session]:
        """The sessions holding the most bytes (ready artifacts), largest first."""
        return self.context.catalog.overview.largest_sessions(_bounded(limit))

    def idlest_sessions(self, limit: int = 10) -> list[Session]:
        """The open sessions idle the longest (oldest last activity first)."""
        return self.context.catalog.overview.idlest_sessions(_bounded(limit))

    def lock_expiry(self, name: str) -> datetime | None:
        """Until when the named lock (:meth:`~ephemera.store.Store.try_lock`) is held, where
        the database keeps it as a row with an expiry; None where it does not (never taken,
        or a PostgreSQL advisory lock, held as long as its process lives). Reads only."""
        return self.context.catalog.overview.lock_expiry(name)

    def last_audit(self, action: str, actor: str) -> AuditEntry | None:
        """The newest audit entry of exactly ``action`` recorded by ``actor``."""
        return self.context.catalog.overview.last_audit(action, actor)


def _bounded(limit: int) -> int:
    return max(1, min(limit, MAX_LISTED))
