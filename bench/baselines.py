"""The physical limits the cleanup figures are compared with: ``find`` on tree B, the same
files as store A with no database (the expired half named ``<id>-x``)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.populate import EXPIRED_SUFFIX


@dataclass
class Timed:
    seconds: float
    stdout: str


def timed(argv: Sequence[str]) -> Timed:
    """``sync`` (so that no write-back is pending), then ``argv``, timed around the process."""
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr}")
    return Timed(seconds, done.stdout)


def find_delete(sessions_dir: Path) -> Timed:
    """The classic purge without a database: walk the tree, delete by name, in one pass."""
    return timed(
        ["find", str(sessions_dir), "-type", "f", "-name", f"*{EXPIRED_SUFFIX}", "-delete"]
    )


def find_walk(sessions_dir: Path) -> tuple[Timed, int]:
    """Every file of the tree listed and counted: the orphan walk's limit."""
    walk = timed(["sh", "-c", f"find '{sessions_dir}' -type f | wc -l"])
    return walk, int(walk.stdout.strip() or 0)
