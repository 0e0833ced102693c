"""Running the real `ephemera` command in a subprocess, and looking at what it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What a maintenance command may read from the environment is set per test, never inherited.
BACKEND_VARIABLES = ("EPHEMERA_DATA_DIR", "EPHEMERA_DATABASE_URL", "EPHEMERA_BLOB_URL")


def ephemera(
    *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    where = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "ephemera", *args, *where],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "COLUMNS": "200", **(env or {})},
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file and folder under ``root`` (folders as ``b""``), with contents."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }
