"""Cleanup as real processes: killed part-way, and two at once on one store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ephemera import Settings, Store
from tests.populate import populate

pytestmark = pytest.mark.slow


def build(data_dir: Path, sessions_count: int = 200, per_session: int = 200) -> int:
    with Store.open(Settings(data_dir=data_dir)) as store:
        return populate(store, sessions_count=sessions_count, per_session=per_session)


def cleanup(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ephemera", "cleanup", *args, "--json", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def state(data_dir: Path) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """Records, files and staging leftovers: everything a cleanup can change."""
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("select session_id, id, state from artifacts order by id").fetchall()
    finally:
        db.close()
    blobs = data_dir / "blobs"
    files = sorted(
        str(p.relative_to(blobs)) for p in (blobs / "sessions").rglob("*") if p.is_file()
    )
    staging_dir = blobs / "staging"
    staging = sorted(p.name for p in staging_dir.iterdir()) if staging_dir.exists() else []
    return rows, files, staging


def temporary_left(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True, timeout=30)
    try:
        return int(
            db.execute("select count(*) from artifacts where storage_class='temporary'").fetchone()[
                0
            ]
        )
    finally:
        db.close()


def test_a_cleanup_killed_part_way_is_finished_by_the_next_run(tmp_path: Path) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    expired = build(killed)
    assert build(whole) == expired

    run = cleanup(killed, "all")
    deadline = time.monotonic() + 60
    while (left := temporary_left(killed)) > expired * 0.8:
        assert run.poll() is None, "the cleanup finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    assert 0 < temporary_left(killed) <= left, "the kill did not land part-way"

    again = cleanup(killed, "all")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert json.loads(out)["errors"] == []

    uninterrupted = cleanup(whole, "all")
    out, err = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, err
    assert json.loads(out)["totals"]["deleted_count"] == expired

    assert state(killed) == state(whole)
    records, files, staging = state(killed)
    assert len(records) == len(files) == 200 * 200 - expired
    assert staging == []


def test_two_cleanups_at_once_delete_each_item_once_without_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    expired = build(data_dir, sessions_count=100)
    planned = cleanup(data_dir, "all", "--dry-run")
    out, _ = planned.communicate(timeout=120)
    plan = json.loads(out)
    assert plan["totals"]["deleted_count"] == expired

    runs = [cleanup(data_dir, "all") for _ in range(2)]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        reports.append(json.loads(out))
    assert [r["errors"] for r in reports] == [[], []]
    assert sum(r["totals"]["deleted_count"] for r in reports) == expired
    assert (
        sum(r["totals"]["deleted_size_bytes"] for r in reports)
        == plan["totals"]["deleted_size_bytes"]
    )
    records, files, _ = state(data_dir)
    assert len(records) == len(files) == 100 * 200 - expired
