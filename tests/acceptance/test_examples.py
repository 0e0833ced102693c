"""The recipes' scripts in examples/ run as written against a real server and reach their
outcome; each exits non-zero, saying why, when the outcome it promises does not happen."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import Server, serving

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the examples that succeed: each cleans up after itself."""
    with serving(tmp_path_factory.mktemp("examples") / "data") as running:
        yield running


def run_example(name: str, server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--server", server.url, *args],
        capture_output=True,
        text=True,
        timeout=180,
        # The key from the environment, as the scripts document.
        env={**server.env, "EPHEMERA_ADMIN_KEY": server.admin_key},
    )


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # one line of JSON, nothing else
    summary: dict[str, Any] = json.loads(lines[0])
    return summary


def live_sessions(server: Server) -> list[str]:
    answer = httpx.get(f"{server.api}/admin/sessions", headers=server.admin(), timeout=10)
    assert answer.status_code == 200, answer.text
    return [s["id"] for s in answer.json()["items"]]


def test_the_inspection_station_fails_exactly_the_defective_boards_region(
    shared_server: Server,
) -> None:
    summary = summary_of(
        run_example("inspection_station.py", shared_server, "--boards", "3", "--defect", "c12")
    )
    assert summary["workflow"] == "inspection-station"
    assert summary["boards"] == 3
    assert len(summary["passed"]) == 2
    [(defective, regions)] = summary["failed"].items()
    assert defective.endswith("-0003")
    assert regions == ["c12"]
    assert summary["crops_verified"] == 3 * 4  # every region of every board
    assert summary["sessions_closed"] == 4
    assert not [s for s in live_sessions(shared_server) if s.startswith(("board-", "goldens-"))]


def test_calibration_finds_the_camera_and_reset_leaves_nothing_on_disk(
    shared_server: Server,
) -> None:
    data_dir = shared_server.data_dir
    summary = summary_of(run_example("calibration.py", shared_server, "--data-dir", str(data_dir)))
    assert summary["workflow"] == "calibration"
    assert summary["views"] == 7
    assert summary["used"] == 6  # the blank view is reported, not used
    assert abs(summary["fx"] - 600) < 18
    assert abs(summary["fy"] - 600) < 18
    assert summary["closed_artifacts"] == 8  # seven views and the preview
    assert summary["disk_checked"] is True
    # Checked here too, not only by the script: no folder of the session in the blob store.
    assert not (data_dir / "blobs" / "sessions" / summary["session"]).exists()
    assert summary["session"] not in live_sessions(shared_server)


def test_the_batch_services_dry_run_names_exactly_what_the_real_run_deletes(
    shared_server: Server,
) -> None:
    summary = summary_of(run_example("batch_service.py", shared_server, "--inputs", "4"))
    assert summary["workflow"] == "batch-service"
    assert summary["inputs"] == 4
    assert summary["results_retained"] == 4
    # The examples before it closed their sessions: only this batch's inputs had expired.
    expected = {"count": 4, "bytes": summary["input_bytes"]}
    assert summary["dry_run"] == expected
    assert summary["real_run"] == expected
    assert summary["audited_runs"] == 2
    assert summary["closed_artifacts"] == 4


def test_concurrent_bol_jobs_under_their_callers_ids_see_only_their_own_documents(
    shared_server: Server,
) -> None:
    summary = summary_of(
        run_example("bol_processor.py", shared_server, "--jobs", "3", "--rows", "4")
    )
    assert summary["workflow"] == "bol-processor"
    jobs = summary["jobs"]
    assert len(jobs) == 3
    # Each job filled, extracted and reconciled its own four BOLs and found the one weight
    # its shipper corrected; the script fails on any key of another job in its report.
    assert all(job == {"documents": 4, "mismatches": 1} for job in jobs.values())
    assert not set(jobs) & set(live_sessions(shared_server))


def test_the_bol_processor_stops_with_a_message_when_reconciling_is_not_enabled(
    tmp_path: Path,
) -> None:
    enabled = '["pdf-form-fill", "pdf-extract"]'
    server = Server(tmp_path / "data", env={"EPHEMERA_PROCESSORS": enabled}).start()
    try:
        done = run_example("bol_processor.py", server, "--jobs", "2", "--rows", "2")
        assert done.returncode != 0
        assert done.stdout == ""
        assert "bol-reconcile" in done.stderr
        # Each job closed its session on the way out, failed or not.
        assert live_sessions(server) == []
    finally:
        server.stop()


def test_the_inspection_station_stops_with_a_message_when_roi_compare_is_not_enabled(
    tmp_path: Path,
) -> None:
    server = Server(
        tmp_path / "data", env={"EPHEMERA_PROCESSORS": '["camera-calibration"]'}
    ).start()
    try:
        done = run_example("inspection_station.py", server)
        assert done.returncode != 0
        assert done.stdout == ""
        assert "inspection station:" in done.stderr
        assert "roi-compare" in done.stderr
        # The board that could not be inspected and the library were closed all the same.
        assert live_sessions(server) == []
    finally:
        server.stop()


def test_calibration_stops_with_a_message_when_it_cannot_calibrate(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"EPHEMERA_PROCESSORS": '["roi-compare"]'}).start()
    try:
        done = run_example("calibration.py", server)
        assert done.returncode != 0
        assert done.stdout == ""
        assert "calibration:" in done.stderr
        assert "camera-calibration" in done.stderr
    finally:
        server.stop()


def test_the_batch_service_notices_when_its_inputs_were_not_deleted_by_its_own_runs(
    tmp_path: Path,
) -> None:
    # A scheduled cleanup every second takes the expired inputs before the script's dry run
    # (it waits 4 s, so several scheduled runs come after the inputs expire, however loaded the
    # machine): the script's promise (its dry run names them, its real run deletes them) does
    # not hold.
    server = Server(tmp_path / "data", env={"EPHEMERA_CLEANUP_INTERVAL_S": "1"}).start()
    try:
        done = run_example("batch_service.py", server, "--inputs", "2", "--wait", "4")
        assert done.returncode != 0
        assert done.stdout == ""
        assert "batch service: expired inputs not deleted" in done.stderr
    finally:
        server.stop()


def test_the_photo_library_groups_the_copies_written_into_a_watched_folder(
    shared_server: Server,
) -> None:
    summary = summary_of(run_example("photo_library.py", shared_server))
    assert summary["workflow"] == "photo-library"
    assert summary["pictures"] == 3
    # Each picture imported once by the watching importer, each with its catalog task.
    assert summary["imported"] == 3
    assert summary["catalog_tasks"] == 3
    # The two encodings of the beach share a group; the forest is in none.
    assert summary["groups"] == [["beach-copy.jpg", "beach.jpg"]]
    # Three pictures, a thumbnail and a catalog entry each: closed with the session.
    assert summary["closed_artifacts"] == 9
    assert summary["session"] not in live_sessions(shared_server)


def test_the_photo_library_stops_with_a_message_when_image_catalog_is_not_enabled(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "data", env={"EPHEMERA_PROCESSORS": '["roi-compare"]'}).start()
    try:
        done = run_example("photo_library.py", server)
        assert done.returncode != 0
        assert done.stdout == ""
        assert "photo library:" in done.stderr
        assert "image-catalog" in done.stderr
        # The session it opened for the pictures was closed on the way out.
        assert live_sessions(server) == []
    finally:
        server.stop()
