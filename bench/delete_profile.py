"""Where the ``expired`` pass's time goes, part by part, on a fresh population.

``python -m bench.delete_profile --size 200000`` populates store A (``bench.populate``) in a
temporary folder under ``bench/out``, then runs ``store.cleanup("expired")`` in this process
with each part of the pass timed: the main thread's selection, claim and mark, and record
drop; the unlink thread's removal of the files; and how long the main thread waited for it.
Prints one line per part with its share of the call; removes the folder at the end.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.populate import StoreA, make_layout, populate

OUT = Path(__file__).resolve().parent / "out"
PARTS = {
    "select": "main: selecting candidates",
    "claim": "main: claiming and marking",
    "drop": "main: dropping records",
    "unlink": "unlink thread: removing the files",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200_000, help="artifacts (half expire)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="delete-profile-", dir=OUT))
    try:
        store_a = StoreA(root / "A")
        populate(make_layout(args.size), store_a, None)
        subprocess.run(["sync"], check=True)
        profile(store_a)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def profile(store_a: StoreA) -> None:
    import ephemera.cleanup.run as run_module
    from ephemera import Store
    from ephemera.catalog import Catalog

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(owner: Any, name: str, part: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started
                calls[part] += 1

        setattr(owner, name, wrapper)

    timed(Catalog, "artifact_candidates", "select")
    timed(Catalog, "claim_artifacts", "claim")
    timed(run_module, "drop_records", "drop")
    timed(run_module, "remove_bytes", "unlink")
    timed(run_module.DeletePipeline, "_finish", "finish")  # waiting for the unlinks + drop

    with Store.open(store_a.settings()) as store:
        started = time.perf_counter()
        report = store.cleanup("expired")
        call = time.perf_counter() - started
    deleted = report.deleted_count
    print(
        f"expired: {deleted:,} deleted, {len(report.errors)} errors, call {call:.2f} s, "
        f"{call / max(deleted, 1) * 1e3:.3f} ms per item"
    )
    for part, label in PARTS.items():
        print(f"  {label:36} {spent[part]:8.2f} s  {spent[part] / call:6.1%}  {calls[part]} calls")
    waited = spent["finish"] - spent["drop"]
    print(f"  {'main: waiting for the unlink thread':36} {waited:8.2f} s  {waited / call:6.1%}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS of this process (population included): {peak:.0f} MB")


if __name__ == "__main__":
    raise SystemExit(main())
