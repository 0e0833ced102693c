"""The bounds on what callers send: labels, timeouts, metadata, page sizes, task payloads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ephemera.config import Settings
from ephemera.errors import InvalidInput
from ephemera.jsonvalues import check_json
from ephemera.models import MAX_TIMEOUT_S

MAX_PAGE = 1000
MAX_TASK_INPUTS = 1000
MAX_TASK_JSON_BYTES = 1024 * 1024
LABEL_MAX = 200
METADATA_MAX_BYTES = 64 * 1024


def check_label(label: str | None) -> str | None:
    if label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
        raise InvalidInput(f"label must be text of at most {LABEL_MAX} characters")
    return label


def check_timeout(name: str, value: int | None) -> int | None:
    if value is not None and not (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TIMEOUT_S
    ):
        raise InvalidInput(f"{name} must be between 1 and {MAX_TIMEOUT_S}, or null")
    return value


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a JSON object")
    checked: dict[str, Any] = check_json(
        dict(metadata or {}), "metadata", max_bytes=METADATA_MAX_BYTES
    )
    return checked


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def check_ceilings(settings: Settings, timeouts: Mapping[str, Any]) -> None:
    """Refuse timeouts beyond what a caller without an admin key may ask for.

    ``timeouts`` holds the ``idle_timeout_s`` and ``max_age_s`` asked for (either may be
    absent). The idle timeout must be at most ``max_idle_timeout_s`` ("never" is for admin
    keys); where ``max_age_s`` is configured, the max age must be at most that. Without
    these, a session's own token (or a client key) could make it live forever.
    """
    ceiling = settings.max_idle_timeout_s
    if "idle_timeout_s" in timeouts:
        idle = timeouts["idle_timeout_s"]
        if idle is None or idle > ceiling:
            raise InvalidInput(
                f"idle_timeout_s must be at most {ceiling} (max_idle_timeout_s); "
                "a longer one, or null (never), takes an admin key"
            )
    limit = settings.max_age_s
    if "max_age_s" in timeouts and limit is not None:
        max_age = timeouts["max_age_s"]
        if max_age is None or max_age > limit:
            raise InvalidInput(
                f"max_age_s must be at most {limit} (the configured max_age_s); "
                "a longer one, or null (never), takes an admin key"
            )
