"""The audit log: who ran which administrative action, with what, and what came of it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ephemera.context import Context
from ephemera.errors import InvalidInput
from ephemera.models import AuditEntry, Page
from ephemera.store.limits import check_limit
from ephemera.store.paging import page


def record(
    ctx: Context,
    actor: str,
    action: str,
    target: str | None,
    params: dict[str, Any] | None,
    result: dict[str, Any] | None,
) -> int:
    return ctx.catalog.insert_audit(
        ctx.clock.now(), actor, action, target, params or {}, result or {}
    )


def entries(
    ctx: Context,
    before: int | None,
    limit: int,
    action: str | None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditEntry]:
    limit = check_limit(limit)
    if before is not None and not 1 <= before < 2**63:
        raise InvalidInput("cursor must be an entry ID from a previous page")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} must carry a time zone")
    rows = ctx.catalog.list_audit(before, limit + 1, action, actor, since, until)
    return page(rows, limit, lambda entry: str(entry.id))
