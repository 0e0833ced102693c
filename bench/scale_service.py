"""The scale table's rows that do not depend on the store's size: the CLI's start-up, whole
process, against the interpreter's own (``python -c pass``), and 4 KiB uploads per second at
concurrency 16 against the bare endpoint that writes and fsyncs each (``bench.transfer``'s
servers and client)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.rows import Row

REPEAT = 5
HELP_AIM_S = 0.3
CLEANUP_AIM_S = 0.5
UPLOAD_AIM = 0.6
P50_AIM_S = 0.05
UPLOAD_SESSIONS = 4


def best_of(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Best wall-clock seconds of ``REPEAT`` runs of ``argv`` (which must succeed)."""
    best = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, env={**os.environ, **(env or {})}, check=False
        )
        best = min(best, time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    return best


def ephemera_exe() -> str:
    return str(Path(sys.executable).parent / "ephemera")


def startup_rows(data_dir: Path, artifacts: int) -> list[Row]:
    """``ephemera --help`` and ``ephemera cleanup expired`` (nothing to do) on the store in
    ``data_dir`` (``artifacts`` in it), each the whole process, best of ``REPEAT``."""
    floor = best_of([sys.executable, "-c", "pass"])
    helped = best_of([ephemera_exe(), "--help"])
    cleaned = best_of([ephemera_exe(), "cleanup", "expired", "--data-dir", str(data_dir)])
    floor_name = "python -c pass"
    return [
        Row(
            "CLI start-up: ephemera --help",
            None,
            helped,
            "s",
            limit=floor,
            limit_name=floor_name,
            aim=HELP_AIM_S,
            aim_on_value=True,
        ),
        Row(
            "CLI: cleanup expired, nothing to do",
            None,
            cleaned,
            "s",
            limit=floor,
            limit_name=floor_name,
            aim=CLEANUP_AIM_S,
            aim_on_value=True,
            note=f"whole process, on a store of {artifacts:,} artifacts",
        ),
    ]


def upload_rows(run_dir: Path, seconds: float, max_requests: int) -> list[Row]:
    """4 KiB uploads at concurrency 16: ``ephemera serve`` (embedded default, a few sessions)
    against ``bench.bare_app``'s ``/upload-small``, in turn, from one ``httpx.AsyncClient``."""
    from bench.transfer import Ephemera, start_bare, start_ephemera

    eph_server, admin_key = start_ephemera(run_dir)
    try:
        bare = start_bare(run_dir)
        try:
            eph = Ephemera(eph_server, admin_key)
            targets = []
            for _ in range(UPLOAD_SESSIONS):
                sid, token = eph.new_session()
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                }
                targets.append((eph.artifacts_url(sid) + "?name=small-{n}.bin", headers))
            bare_targets = [
                (f"{bare.base}/upload-small", {"Content-Type": "application/octet-stream"})
            ]
            return _small(targets, bare_targets, seconds, max_requests)
        finally:
            bare.stop()
    finally:
        eph_server.stop()


def _small(
    targets: list[tuple[str, dict[str, str]]],
    bare_targets: list[tuple[str, dict[str, str]]],
    seconds: float,
    max_requests: int,
) -> list[Row]:
    from bench.transfer import CONCURRENCY, small_uploads

    ours = small_uploads(f"ephemera ({UPLOAD_SESSIONS} sess.)", targets, seconds, max_requests)
    bare = small_uploads("bare /upload-small", bare_targets, seconds, max_requests)
    if ours.errors or bare.errors or not ours.ok or not bare.ok:
        raise RuntimeError(f"4 KiB uploads failed: ephemera {ours.errors}, bare {bare.errors}")
    p50, bare_p50 = ours.percentile(50) / 1000, bare.percentile(50) / 1000
    return [
        Row(
            f"4 KiB uploads/s, concurrency {CONCURRENCY}",
            None,
            ours.rate,
            "/s",
            limit=bare.rate,
            limit_name="bare write+fsync",
            aim=UPLOAD_AIM,
            higher_is_better=True,
        ),
        Row(
            "  p50 latency",
            None,
            p50,
            "s",
            limit=bare_p50,
            limit_name="bare",
            aim=P50_AIM_S,
            aim_on_value=True,
        ),
    ]
