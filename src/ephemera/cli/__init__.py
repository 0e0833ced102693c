"""The ``ephemera`` command: a thin face over the library.

Importing the command modules registers their commands on :data:`app`.
"""

from __future__ import annotations

from ephemera.cli import (
    importing,
    keys,
    linkkeys,
    maintenance,
    processors,
    serve,
    sessions,
    verify,
)
from ephemera.cli.app import app

__all__ = [
    "app",
    "importing",
    "keys",
    "linkkeys",
    "main",
    "maintenance",
    "processors",
    "serve",
    "sessions",
    "verify",
]


def main() -> None:
    """The ``ephemera`` process (its console script and ``python -m ephemera``)."""
    from ephemera.cli.common import whole_process

    whole_process.append(True)
    app()
