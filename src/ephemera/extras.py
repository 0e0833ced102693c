"""Optional dependency groups: which extra a feature needs, and one clear error without it.

The core install serves sessions, artifacts, leases and cleanup on SQLite and a local
directory. PostgreSQL, an S3-compatible store, the image processors and the document
processors each need an extra; choosing one without it fails at start-up with a line that
names what to install.
"""

from __future__ import annotations

import importlib.util

from ephemera.errors import MissingExtra

# extra -> the modules it provides, checked without importing them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg",),
    "s3": ("boto3", "botocore"),
    "vision": ("cv2", "numpy", "PIL", "imagehash"),
    "documents": ("pypdf", "pdfplumber"),
    "celery": ("celery",),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def needs(extra: str, feature: str) -> str:
    """The sentence that says what to install: ``feature needs the 'x' extra: pip install …``."""
    return f"{feature} needs the {extra!r} extra: pip install 'ephemera[{extra}]'"


def require(extra: str, feature: str) -> None:
    """MissingExtra, naming the extra to install, unless every module of ``extra`` is here."""
    if missing(extra):
        raise MissingExtra(needs(extra, feature))
