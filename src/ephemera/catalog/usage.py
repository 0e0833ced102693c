"""How much a session holds: inside a caller's transaction."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from ephemera.catalog.schema import artifacts
from ephemera.models import ArtifactState


def ready_usage(conn: Connection, session_id: str) -> tuple[int, int]:
    """Number and bytes of a session's ready artifacts."""
    count, total = conn.execute(
        select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.session_id == session_id, artifacts.c.state == ArtifactState.READY
        )
    ).one()
    return int(count), int(total)


def all_usage(conn: Connection, session_id: str) -> tuple[int, int]:
    """Number and bytes of a session's artifact records, whatever their state."""
    count, total = conn.execute(
        select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.session_id == session_id
        )
    ).one()
    return int(count), int(total)
