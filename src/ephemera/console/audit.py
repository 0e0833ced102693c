"""The audit log page: newest first, filtered by actor (exact), action (a prefix: ``cleanup.``
finds every cleanup) and time, older pages by keyset (the last entry's ID).

The filters are a GET form: a filtered view works without JavaScript and can be bookmarked.
Times are read and shown in UTC, as the log records them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ephemera.console.auth import Console
from ephemera.console.templating import render
from ephemera.errors import InvalidInput
from ephemera.models import AuditEntry, ConsoleLogin

PAGE_SIZE = 50
# Parameters and results are shown whole up to this many characters.
JSON_CHARS = 2000


def compact(value: dict[str, Any]) -> str:
    """JSON on one line, keys sorted; escaped by the template like any text."""
    if not value:
        return ""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= JSON_CHARS else text[: JSON_CHARS - 1] + "…"


def instant(name: str, text: str) -> datetime | None:
    """A ``datetime-local`` value (or any ISO 8601 time), taken as UTC unless it says."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time such as 2026-01-31T13:45") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Row:
    entry: AuditEntry
    params: str
    result: str


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store

    @router.get("/audit")
    def audit_page(
        request: Request,
        actor: str = Query("", max_length=100),
        action: str = Query("", max_length=100),
        since: str = Query("", max_length=40),
        until: str = Query("", max_length=40),
        before: int | None = Query(None, ge=1, le=2**63 - 1),
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        filters = {"actor": actor.strip(), "action": action.strip(), "since": since, "until": until}
        page = store.audit_log(
            before=before,
            limit=PAGE_SIZE,
            action=filters["action"] or None,
            actor=filters["actor"] or None,
            since=instant("since", since),
            until=instant("until", until),
        )
        kept = {k: v for k, v in filters.items() if v}
        older = None
        if page.next_cursor is not None:
            older = "/console/audit?" + urlencode({**kept, "before": page.next_cursor})
        return render(
            request,
            "audit/list.html",
            {
                "title": "Audit log",
                "nav": "audit",
                "login": login,
                "filters": filters,
                "filtered": bool(kept),
                "rows": [Row(e, compact(e.params), compact(e.result)) for e in page.items],
                "older": older,
                "newest": ("/console/audit?" + urlencode(kept)) if before is not None else None,
            },
        )
