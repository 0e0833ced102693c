"""`ephemera import` on the command line: the JSON summary, per-file errors, exit codes."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.client import Client
from ephemera.importer import Filter, scan
from tests.cli import BACKEND_VARIABLES, ephemera
from tests.conftest import Server

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {
    "session_id",
    "source",
    "found",
    "imported",
    "skipped",
    "failed",
    "bytes",
    "errors",
    "tasks",
    "duration_s",
}
LIMIT = 32 * 1024 * 1024


def _without_root_file_access() -> None:
    # Root reads a file whatever its mode: drop the two capabilities that let it (from the
    # bounding set, so the exec'd process never gets them), and chmod 000 means unreadable.
    if os.geteuid() == 0:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    with Store.open(Settings(data_dir=data_dir)) as opened:
        yield opened


def import_command(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ephemera", "import", *args, "--data-dir", str(data_dir)]


def environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    return {**base, **extra}


def opened_by(pid: int, path: Path) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def scan_waits(pid: int) -> bool:
    """The main thread (the scan) has been waiting on a lock for a few looks in a row: on
    the full queue, since the worker lets go of the interpreter while it reads and hashes."""
    for _ in range(3):
        try:
            with open(f"/proc/{pid}/task/{pid}/wchan") as wchan:
                if not wchan.read().startswith("futex"):
                    return False
        except OSError:
            return False
        time.sleep(0.005)
    return True


def test_per_file_errors_are_listed_counted_and_exit_1_the_rest_imported(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(8):
        (root / f"img{i}.png").write_bytes(os.urandom(3000 + i))
    # The roles go by the order the scan finds the files in (the same for an unchanged
    # folder): with one worker, the first is read while the next ones wait in the queue.
    order = [f.path for f in scan(root, Filter())]
    too_large, vanishing, unreadable = order[0], order[1], order[2]
    os.truncate(root / too_large, 2 * LIMIT)  # sparse: nothing written
    (root / unreadable).chmod(0)
    session_id = store.create_session().session.id

    process = subprocess.Popen(
        import_command(
            root.as_posix(), "--session", session_id, "--workers", "1", "--json", data_dir=data_dir
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(EPHEMERA_MAX_UPLOAD_BYTES=str(LIMIT)),
        preexec_fn=_without_root_file_access,
    )
    # While the worker reads the first file, the scan queues the next ones until the queue
    # is full and waits: then freeze the importer, delete one of them, and let it go on.
    deadline = time.monotonic() + 20
    while not (opened_by(process.pid, root / too_large) and scan_waits(process.pid)):
        assert process.poll() is None, process.stderr
        assert time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGSTOP)
    (root / vanishing).unlink()
    process.send_signal(signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 1, stderr
    summary = json.loads(stdout)
    assert set(summary) == SUMMARY_KEYS
    assert summary["session_id"] == session_id
    assert summary["source"].endswith(f":{root}")
    errors = {e["path"]: e["error"] for e in summary["errors"]}
    assert set(errors) == {too_large, vanishing, unreadable}
    assert errors[vanishing] == "vanished before it was read"
    assert errors[unreadable] == "permission denied"
    assert "limit" in errors[too_large].lower() or "large" in errors[too_large].lower()
    assert (summary["found"], summary["imported"], summary["failed"]) == (8, 5, 3)
    assert summary["bytes"] == sum((root / p).stat().st_size for p in order[3:])
    names = sorted(a.name for a in store.list_artifacts(session_id).items)
    assert names == sorted(order[3:])


def test_new_session_prints_its_id_and_token_once(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"a")

    as_json = ephemera(
        "import", str(root), "--new-session", "--label", "cam", "--json", data_dir=data_dir
    )
    human = ephemera("import", str(root), "--new-session", data_dir=data_dir)

    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert set(summary) == SUMMARY_KEYS | {"token"}
    assert store.authenticate(summary["session_id"], summary["token"]) is None
    assert store.get_session(summary["session_id"]).label == "cam"
    assert summary["token"] not in as_json.stderr
    assert human.returncode == 0, human.stderr
    session_id = human.stdout.splitlines()[0]
    [token] = [w for w in human.stderr.split() if w.startswith("eps_")]
    assert store.authenticate(session_id, token) is None
    assert token not in human.stdout
    assert "1 imported, 0 skipped, 0 failed" in human.stdout


def test_usage_errors_exit_2_with_one_line_and_import_nothing(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"a")
    session_id = store.create_session().session.id
    cases = [
        ("not a folder", [str(root / "a.png"), "--session", session_id]),
        ("not a folder", [str(tmp_path / "nowhere"), "--session", session_id]),
        ("session no-such-session not found", [str(root), "--session", "no-such-session"]),
        ("give exactly one of --session SID and --new-session", [str(root)]),
        ("--kind: kind must be", [str(root), "--session", session_id, "--kind", "Bad Kind"]),
        (
            "--params is not valid JSON",
            [str(root), "--session", session_id, "--then", "roi-compare", "--params", "{bad"],
        ),
        (
            "--params must be a JSON object",
            [str(root), "--session", session_id, "--then", "roi-compare", "--params", "[1]"],
        ),
        (
            "'no-such-processor' is not enabled",
            [str(root), "--session", session_id, "--then", "no-such-processor"],
        ),
        ("--server needs --token", [str(root), "--session", session_id, "--server", "http://x"]),
    ]
    for expected, args in cases:
        done = ephemera("import", *args, data_dir=data_dir)
        lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert done.returncode == 2, (expected, done.stderr)
        assert len(lines) == 1, lines
        assert expected in lines[0], lines
    assert store.list_artifacts(session_id).items == []
    assert store.list_imports(session_id).items == []
    # An unknown processor is refused before a new session is made.
    before = store.totals()
    done = ephemera("import", str(root), "--new-session", "--then", "nope", data_dir=data_dir)
    assert done.returncode == 2
    assert store.totals() == before


def test_remote_import_with_a_client_key_into_a_new_session_and_a_wrong_token(
    server: Server, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(os.urandom(500))
    key = ephemera("client-key", "create", "camera-pc", data_dir=server.data_dir)
    assert key.returncode == 0, key.stderr
    remote = ["--server", server.url, "--json"]

    created = ephemera(
        "import", str(root), "--new-session", *remote, env={"EPHEMERA_TOKEN": key.stdout.strip()}
    )
    wrong = ephemera(
        "import", str(root), "--session", "x", "--server", server.url, "--token", "eps_wrong"
    )

    assert created.returncode == 0, created.stderr
    summary = json.loads(created.stdout)
    assert (summary["imported"], summary["failed"]) == (3, 0)
    with Client(server.url, summary["token"]) as own:
        assert len(list(own.list_imports(summary["session_id"]))) == 3
    assert wrong.returncode == 2
    assert "not found" in wrong.stderr


def test_sigterm_stops_a_run_cleanly_and_a_rerun_imports_the_rest_once(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(40):
        (root / f"img{i:02}.png").write_bytes(os.urandom(2000))
    first = next(scan(root, Filter())).path
    os.truncate(root / first, 64 * 1024 * 1024)  # sparse, and long enough to read
    session_id = store.create_session().session.id
    args = [root.as_posix(), "--session", session_id, "--workers", "1", "--json"]
    process = subprocess.Popen(
        import_command(*args, data_dir=data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    deadline = time.monotonic() + 20
    while not opened_by(process.pid, root / first):
        assert process.poll() is None, process.stderr
        assert time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    stopped = json.loads(stdout)
    assert stopped["failed"] == 0
    assert 1 <= stopped["imported"] < 40  # the file in flight finished; the queue did not
    rerun = ephemera("import", *args, data_dir=data_dir)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["imported"], summary["skipped"]) == (
        40 - stopped["imported"],
        stopped["imported"],
    )
    paths = [e.origin.path for e in store.list_imports(session_id).items]
    assert sorted(paths) == sorted(f"img{i:02}.png" for i in range(40))
