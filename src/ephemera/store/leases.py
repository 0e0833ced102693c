"""Leases: a holder protects a session, or some of its artifacts, from every cleanup until
the lease expires or is released."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from ephemera import ids
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import Conflict, InvalidInput, NotFound
from ephemera.models import Lease
from ephemera.store.sessions import require_live

HOLDER_MAX = 200
ARTIFACTS_MAX = 1000


def take(
    ctx: Context, session_id: str, ttl_s: int | None, holder: str, artifact_ids: Sequence[str]
) -> Lease:
    ttl = _ttl(ctx.settings, ttl_s)
    if len(holder) > HOLDER_MAX:
        raise InvalidInput(f"holder must be at most {HOLDER_MAX} characters")
    names = tuple(dict.fromkeys(artifact_ids))
    if len(names) > ARTIFACTS_MAX:
        raise InvalidInput(f"a lease names at most {ARTIFACTS_MAX} artifacts")
    for name in names:
        if not ids.is_artifact_id(name):
            raise NotFound(f"artifact {name[:40]} not found")
    require_live(ctx, session_id)
    now = ctx.clock.now()
    lease = Lease(
        id=ids.new_uuid7(),
        session_id=session_id,
        holder=holder,
        artifact_ids=names,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    ctx.catalog.insert_lease(lease)
    return lease


def renew(ctx: Context, session_id: str, lease_id: str, ttl_s: int | None) -> Lease:
    ttl = _ttl(ctx.settings, ttl_s)
    require_live(ctx, session_id)
    now = ctx.clock.now()
    lease = ctx.catalog.renew_lease(session_id, lease_id, now, now + timedelta(seconds=ttl))
    if lease is None:
        if ctx.catalog.get_lease(session_id, lease_id) is None:
            raise NotFound(f"lease {lease_id} not found")
        raise Conflict(f"lease {lease_id} has expired; take a new one")
    return lease


def release(ctx: Context, session_id: str, lease_id: str) -> None:
    require_live(ctx, session_id)
    if not ctx.catalog.delete_lease(session_id, lease_id):
        raise NotFound(f"lease {lease_id} not found")


def list_leases(ctx: Context, session_id: str) -> list[Lease]:
    require_live(ctx, session_id)
    return ctx.catalog.list_leases(session_id)


def get(ctx: Context, session_id: str, lease_id: str) -> Lease:
    require_live(ctx, session_id)
    lease = ctx.catalog.get_lease(session_id, lease_id)
    if lease is None:
        raise NotFound(f"lease {lease_id} not found")
    return lease


def _ttl(settings: Settings, ttl_s: int | None) -> int:
    ttl = settings.lease_default_ttl_s if ttl_s is None else ttl_s
    if not 1 <= ttl <= settings.lease_max_ttl_s:
        raise InvalidInput(f"ttl_s must be between 1 and {settings.lease_max_ttl_s}")
    return ttl


class LeaseMethods:
    """The leases' part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def take_lease(
        self,
        session_id: str,
        *,
        ttl_s: int | None = None,
        holder: str = "",
        artifact_ids: Sequence[str] = (),
    ) -> Lease:
        """Protect a session (no ``artifact_ids``) or the named artifacts from any cleanup."""
        return take(self.context, session_id, ttl_s, holder, artifact_ids)

    def renew_lease(self, session_id: str, lease_id: str, *, ttl_s: int | None = None) -> Lease:
        """Extend a valid lease; an expired one is a Conflict (it protected nothing meanwhile)."""
        return renew(self.context, session_id, lease_id, ttl_s)

    def release_lease(self, session_id: str, lease_id: str) -> None:
        release(self.context, session_id, lease_id)

    def list_leases(self, session_id: str) -> list[Lease]:
        return list_leases(self.context, session_id)

    def get_lease(self, session_id: str, lease_id: str) -> Lease:
        return get(self.context, session_id, lease_id)
