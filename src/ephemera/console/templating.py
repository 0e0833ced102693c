"""Rendering: one Jinja2 environment with autoescaping everywhere, and the filters pages use.

Every value a user supplied (labels, names, metadata, audit parameters) is escaped by
Jinja's autoescape; nothing is marked safe but markup we build ourselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ephemera.console.assets import asset_url

env = Environment(
    loader=PackageLoader("ephemera.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in UNITS:
        if abs(amount) < 1024 or unit == UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def when(value: datetime | None) -> str:
    """A timestamp as ISO 8601 UTC to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or, for a future time, in how long), roughly."""
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for span, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= span:
            text = f"{seconds / span:.0f} {unit}"
            break
    else:
        text = f"{seconds:.0f} s"
    return f"in {text}" if future else f"{text} ago"


env.filters.update(size=size, when=when, ago=ago)
env.globals.update(asset_url=asset_url)


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A page or a fragment. ``login`` (the sign-in, or None) and ``request`` are always
    there for the base layout."""
    values = {"request": request, "login": None, "nav": "", **context}
    html = env.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code)
