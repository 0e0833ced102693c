"""The scale table of issue 14 from one run: every figure as a ratio against its limit measured
in the same run, at the sizes asked for, with the machine.

``python -m bench.scale --sizes 200000`` (``make bench``), ``--sizes 200000,1000000``
(``make bench-1m``), ``--quick`` for a smoke run (2,000 and 20,000 artifacts, 2 s of uploads).

Per size (``bench.scale_store``): the population tool against a plain file-writing loop,
``cleanup all`` deleting the expired half against ``find -delete``, ``orphaned`` against a
``find`` walk, ``quota`` and a scheduled tick with nothing to delete, the children's peak RSS.
A 2,000-artifact store is always measured too: the constant figures are compared with it.
Once (``bench.scale_service``): the CLI's start-up against the interpreter's, and 4 KiB uploads
per second against the bare fsync endpoint. Then every registered row provider whose module
exists (``PROVIDERS``: the 1 GiB download, S3 requests, roi-compare end to end).

Trees live under ``bench/out/`` (git-ignored), removed at the end unless ``--keep``. Exit
status 1 if a check failed (a cleanup deleted other than exactly the expired half, a
nothing-to-delete pass deleted something, a provider failed).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from bench.populate import PER_SESSION
from bench.rows import Row, print_rows
from bench.scale_service import startup_rows, upload_rows
from bench.scale_store import SizeRun, measure_size, store_rows

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
REFERENCE_N = 2_000
UPLOAD_SECONDS = 10.0
UPLOAD_MAX = 100_000

# Row providers: a module of bench/ and how to call its ``run`` for the table (``run(...) ->
# list[Row]``). A module not there yet is skipped; one more figure is one more line here.
PROVIDERS: dict[str, Callable[[ModuleType, argparse.Namespace], list[Row]]] = {
    "bench.download": lambda module, args: module.run(),
    "bench.s3": lambda module, args: module.run(),
    "bench.processing": lambda module, args: module.run(),
}


def provider_rows(args: argparse.Namespace, problems: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name, call in PROVIDERS.items():
        if name in args.skip_providers:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            print(f"  {name}: not there, skipped")
            continue
        if not hasattr(module, "run"):
            print(f"  {name}: no run(), skipped")
            continue
        print(f"== {name}.run()")
        try:
            rows += call(module, args)
        except Exception:
            traceback.print_exc()
            problems.append(f"{name}.run() failed")
    return rows


def print_machine(run_dir: Path) -> None:
    import sqlite3

    from bench import transfer

    find = subprocess.run(["find", "--version"], capture_output=True, text=True, check=False)
    load = Path("/proc/loadavg").read_text().split()[:3]
    transfer.print_machine(
        run_dir,
        {
            "SQLite": sqlite3.sqlite_version,
            "find": find.stdout.splitlines()[0] if find.stdout else "unknown",
            "load average": " ".join(load),
        },
    )


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if not sizes or any(s < 2 * PER_SESSION for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be at least {2 * PER_SESSION}")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--sizes", type=parse_sizes, default=[200_000], help="e.g. 200000")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000, short uploads")
    parser.add_argument("--keep", action="store_true", help="keep the trees in bench/out")
    parser.add_argument(
        "--upload-seconds", type=float, default=UPLOAD_SECONDS, help="4 KiB upload phase each"
    )
    parser.add_argument("--no-uploads", action="store_true", help="leave the upload rows out")
    parser.add_argument(
        "--skip-providers",
        type=lambda t: {x.strip() for x in t.split(",") if x.strip()},
        default=set(),
        help=f"row providers to leave out, of: {', '.join(PROVIDERS)} ('all' for every one)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [20_000]
        args.upload_seconds = 2.0
    if "all" in args.skip_providers:
        args.skip_providers = set(PROVIDERS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="scale-", dir=OUT))
    started = time.perf_counter()
    problems: list[str] = []
    runs: list[SizeRun] = []
    rows: list[Row] = []
    try:
        print_machine(run_dir)
        for n in sorted({REFERENCE_N, *args.sizes}):
            print(f"== N = {n:,} artifacts")
            run = measure_size(n, run_dir)
            runs.append(run)
            problems += [f"N = {n:,}: {p}" for p in run.problems]
            if n == REFERENCE_N:
                print("== CLI start-up (best of 5, whole process)")
                rows += startup_rows(run_dir / f"A-{n}", n)
            if not args.keep:
                for tree in ("A", "B"):
                    subprocess.run(["rm", "-rf", "--", str(run_dir / f"{tree}-{n}")], check=False)
        rows = store_rows(runs, REFERENCE_N) + rows
        if not args.no_uploads:
            print("== 4 KiB uploads, concurrency 16")
            rows += upload_rows(run_dir, args.upload_seconds, UPLOAD_MAX)
        rows += provider_rows(args, problems)
    finally:
        if args.keep:
            print(f"\nkept {run_dir}")
        else:
            from bench.transfer import remove_run_dir

            remove_run_dir(run_dir)
    print_rows(rows, f"scale table ({', '.join(f'{n:,}' for n in args.sizes)} artifacts)")
    print(f"\nchecks: {'all passed' if not problems else 'FAILED'}")
    for problem in problems:
        print(f"  - {problem}")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
