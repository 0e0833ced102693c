"""Client-supplied JSON values that ephemera stores and later serves back.

A value is accepted only if it can be stored and rendered again, by every database and every
reader: plain JSON types, finite numbers, text without lone surrogates, at most ``MAX_DEPTH``
levels of nesting and a bounded size. Depth is measured without recursion, so a hostile depth
cannot exhaust the stack, and before anything else looks at the value.
"""

from __future__ import annotations

import json
from typing import Any

from ephemera.errors import InvalidInput

MAX_DEPTH = 32


def depth_of(value: Any, limit: int) -> int:
    """Levels of objects and arrays in ``value``, counted up to ``limit + 1`` at most."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:  # also stops a value that contains itself
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def check_json(value: Any, what: str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """A plain copy of ``value`` that round-trips through JSON, or InvalidInput."""
    if depth_of(value, max_depth) > max_depth:
        raise InvalidInput(f"{what} must not be nested deeper than {max_depth} levels")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        encoded = text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} must be valid Unicode text (no lone surrogates)") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be plain JSON with finite numbers: {exc}") from exc
    if len(encoded) > max_bytes:
        raise InvalidInput(f"{what} must be at most {max_bytes} bytes of JSON")
    return json.loads(encoded)
