"""pdf-form-fill on a real 1 GiB CSV: stopped at the limit within seconds, in bounded memory.

The CSV is generated as it is read (tests/documents.py, LazyStream), so the test neither
holds nor stores a gibibyte; the run is in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024
# What reading the CSV may add to the process's peak: buffers of 64 KiB and one row, plus
# headroom for the allocator. Reading it whole would add at least the 64 MiB limit.
GROWTH_KIB = 24 * MiB


def probe(case: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.form_fill_probe", case],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_1_gib_csv_is_refused_at_its_recorded_size_without_being_read() -> None:
    report = probe("recorded")
    assert (
        report["error"] == "rows.csv (r) is 1073741824 bytes, more than the CSV limit of 67108864"
    )
    assert report["outputs"] == 0
    assert report["seconds"] < 5  # a shared machine: generous, the point is "unread"
    assert report["peak_kib"] - report["baseline_kib"] < GROWTH_KIB


def test_a_1_gib_csv_stream_stops_at_the_byte_limit_in_bounded_memory() -> None:
    report = probe("streamed")
    assert report["error"] == "rows.csv: CSV is larger than the limit of 67108864 bytes"
    assert report["outputs"] == 0
    assert report["seconds"] < 20
    assert report["peak_kib"] - report["baseline_kib"] < GROWTH_KIB
