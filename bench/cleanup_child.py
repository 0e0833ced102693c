"""One cleanup in a child process, the way ``ephemera cleanup`` runs from cron: its call time,
its whole-process time and its own peak RSS, reported as one JSON line.

``python -m bench.cleanup_child OPERATION DATA_DIR [--database URL] [--blobs URL]``; the
benchmarks call ``run_child``. The child imports nothing from the benchmarks beyond this
module, so their imports count neither in its start-up time nor in its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.populate import StoreA

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000  # the RSS aim is stated in megabytes


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _report_dict(report: Any) -> dict[str, Any]:
    return {
        "operation": report.operation,
        "deleted_count": report.deleted_count,
        "deleted_size_bytes": report.deleted_size_bytes,
        "skipped_protected": report.skipped_protected,
        "errors": list(report.errors)[:20],
        "error_count": len(report.errors),
        "duration_s": report.duration_s,
        "reports": [_report_dict(r) for r in getattr(report, "reports", [])],
    }


def child_main(operation: str, store_a: StoreA) -> int:
    """Run one cleanup on ``store_a`` and print one JSON line: timings, report, memory."""
    started = time.perf_counter()
    from ephemera import Store

    with Store.open(store_a.settings()) as store:
        opened = time.perf_counter()
        rss_before = _proc_status_kib("VmRSS")
        report = store.cleanup(operation, dry_run=False)
        call = time.perf_counter() - opened
    body = {
        "startup_s": opened - started,
        "call_s": call,
        "rss_before_kib": rss_before,
        "hwm_kib": _proc_status_kib("VmHWM"),
        "report": _report_dict(report),
    }
    print(json.dumps(body))
    return 0


@dataclass
class ChildRun:
    operation: str
    process_s: float
    call_s: float
    rss_before_mb: float
    peak_mb: float
    report: dict[str, Any]
    profile: list[str] = field(default_factory=list)

    def part(self, operation: str) -> dict[str, Any]:
        for part in self.report["reports"]:
            if part["operation"] == operation:
                return dict(part)
        raise KeyError(operation)


def child_argv(operation: str, store_a: StoreA) -> list[str]:
    argv = [sys.executable, "-m", "bench.cleanup_child", operation, str(store_a.data_dir)]
    if store_a.database_url:
        argv += ["--database", store_a.database_url]
    if store_a.blob_url:
        argv += ["--blobs", store_a.blob_url]
    return argv


def run_child(operation: str, store_a: StoreA, profile_to: Path | None = None) -> ChildRun:
    """``sync``, then the child, timed around the whole process."""
    argv = child_argv(operation, store_a)
    if profile_to is not None:
        spy = Path(sys.executable).parent / "py-spy"
        argv = [str(spy), "record", "--idle", "--format", "raw", "-r", "250"]
        argv += ["-o", str(profile_to), "--", *child_argv(operation, store_a)]
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cleanup {operation} failed ({done.returncode}):\n{done.stderr}")
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    body = json.loads(line)
    run = ChildRun(
        operation,
        seconds,
        body["call_s"],
        body["rss_before_kib"] * 1024 / MB,
        body["hwm_kib"] * 1024 / MB,
        body["report"],
    )
    if profile_to is not None:
        run.profile = top_functions(profile_to)
    return run


def top_functions(raw: Path, limit: int = 12) -> list[str]:
    """Top functions of a py-spy raw profile, within ``run_cleanup`` (imports left out)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = inside = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        if not any(f.startswith("run_cleanup (") for f in frames):
            continue
        inside += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not inside:
        return [f"{total} samples, none in run_cleanup"]
    lines = [f"{inside} samples in run_cleanup (of {total}); self time:"]
    lines += [f"  {n / inside:6.1%}  {name}" for name, n in own.most_common(limit)]
    lines.append("inclusive time:")
    lines += [f"  {n / inside:6.1%}  {name}" for name, n in inclusive.most_common(limit + 8)]
    return lines


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.populate import StoreA

    parser = argparse.ArgumentParser(prog="python -m bench.cleanup_child")
    parser.add_argument("operation")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--database")
    parser.add_argument("--blobs")
    args = parser.parse_args(argv)
    return child_main(args.operation, StoreA(args.data_dir, args.database, args.blobs))


if __name__ == "__main__":
    sys.exit(main())
