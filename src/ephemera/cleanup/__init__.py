"""The cleanup engine: each operation is a plain function over a Context (see ``engine``)."""

from ephemera.cleanup.engine import run_cleanup
from ephemera.cleanup.records import (
    ALL_ORDER,
    CleanupItem,
    CleanupReport,
    CleanupRequest,
    ItemKind,
    Operation,
    Progress,
    ProtectedItem,
    ProtectedReason,
    Rule,
)
from ephemera.cleanup.stats import cleanup_stats

__all__ = [
    "ALL_ORDER",
    "CleanupItem",
    "CleanupReport",
    "CleanupRequest",
    "ItemKind",
    "Operation",
    "Progress",
    "ProtectedItem",
    "ProtectedReason",
    "Rule",
    "cleanup_stats",
    "run_cleanup",
]
