"""Pages of a listing: fetch one row more than the limit, to know whether another page follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ephemera.models import Page

T = TypeVar("T")


def page(rows: list[T], limit: int, cursor: Callable[[T], str]) -> Page[T]:
    """The first ``limit`` of ``rows`` (fetched as ``limit + 1``), with the cursor of the last
    one handed out when more follow."""
    if len(rows) > limit:
        return Page(rows[:limit], cursor(rows[limit - 1]))
    return Page(rows, None)
