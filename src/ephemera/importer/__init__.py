"""Folder import: files under a root into a session, exactly once each, then as they change."""

from __future__ import annotations

from ephemera.importer.run import (
    FileError,
    Importer,
    Known,
    Plan,
    Progress,
    Summary,
)
from ephemera.importer.scan import Filter, FoundFile, scan
from ephemera.importer.targets import HttpTarget, StoreTarget, Target

__all__ = [
    "FileError",
    "Filter",
    "FoundFile",
    "HttpTarget",
    "Importer",
    "Known",
    "Plan",
    "Progress",
    "StoreTarget",
    "Summary",
    "Target",
    "scan",
]
