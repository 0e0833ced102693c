"""Crash safety of cleanup: SIGKILL in the middle of a directory-ordered delete batch."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from tests.populate import populate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SESSIONS, PER_SESSION = 250, 40  # 5,000 expired: more than two delete batches
KILL_AFTER = 3000  # unlinks: part-way through the second batch


def build(data_dir: Path) -> int:
    with Store.open(Settings(data_dir=data_dir)) as store:
        return populate(store, sessions_count=SESSIONS, per_session=PER_SESSION)


def cleaner(
    data_dir: Path, operation: str, kill_after: int = 0
) -> subprocess.CompletedProcess[str]:
    module = "tests.acceptance.dying_cleaner"
    return subprocess.run(
        [sys.executable, "-m", module, str(data_dir), operation, str(kill_after)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def told(run: subprocess.CompletedProcess[str]) -> list[tuple[str, str, int]]:
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    return [(d["session_id"], d["id"], d["size"]) for d in (x.get("deleted") for x in lines) if d]


def report(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    body: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])["report"]
    return body


def records(data_dir: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("select session_id, id, state from artifacts order by id").fetchall()
    finally:
        db.close()


def files(data_dir: Path) -> list[str]:
    blobs = data_dir / "blobs"
    return sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file())


@pytest.mark.parametrize("operation", ["expired", "all"])
def test_a_delete_killed_mid_batch_is_finished_like_an_uninterrupted_one(
    tmp_path: Path, operation: str
) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    expired = build(killed)
    assert build(whole) == expired
    stored = len(files(killed))

    dying = cleaner(killed, operation, KILL_AFTER)
    assert dying.returncode == -signal.SIGKILL, dying.stderr
    where = json.loads(dying.stderr.splitlines()[-1])
    assert 0 < where["killed_after"] < where["of"], "the kill did not land inside a batch"
    assert where["waited"], "the cleanup never waited for the batch's unlinks"
    assert len(files(killed)) == stored - KILL_AFTER
    left = records(killed)
    # Mark, bytes, record: no record was dropped while its bytes were still there.
    recorded = {f"sessions/{sid}/{aid}" for sid, aid, _ in left}
    unrecorded = [f for f in files(killed) if f not in recorded]
    assert unrecorded == [], f"{len(unrecorded)} files outlived their records"
    assert any(state == "deleting" for _, _, state in left), "nothing was left marked"
    first = told(dying)
    assert 0 < len(first) < KILL_AFTER  # told: whole batches before the one it died in

    finishing = cleaner(killed, operation)
    uninterrupted = cleaner(whole, operation)
    assert report(finishing)["errors"] == report(uninterrupted)["errors"] == []

    assert records(killed) == records(whole)
    assert files(killed) == files(whole)
    assert len(files(whole)) == stored - expired
    # Each deleted artifact told once, by one of the two runs.
    assert Counter(first + told(finishing)) == Counter(told(uninterrupted))
    assert len(told(uninterrupted)) == expired == report(uninterrupted)["deleted_count"]
    assert report(finishing)["deleted_count"] == expired - len(first)
