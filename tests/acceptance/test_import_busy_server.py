"""`ephemera import --server` against a server that is busy, or that stops answering.

A server allowing fewer uploads at once than the importer has threads answers 429 to the
rest: they wait as told and try again, and every file arrives. A server call that hangs
cannot hold the importer hostage: the third SIGINT ends it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera.client import Client
from tests.cli import BACKEND_VARIABLES
from tests.conftest import Server, serving
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}


def import_command(root: Path, session_id: str, url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ephemera",
        "import",
        str(root),
        "--session",
        session_id,
        "--server",
        url,
        *args,
    ]


@pytest.fixture
def one_slot_server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "data", {"EPHEMERA_MAX_CONCURRENT_UPLOADS": "1"}) as running:
        yield running


def test_more_upload_threads_than_the_server_allows_still_import_every_file(
    one_slot_server: Server, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    files = {f"img{i:02}.png": os.urandom(300_000 + i) for i in range(24)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    with Client(one_slot_server.url, one_slot_server.admin_key) as admin:
        created = admin.create_session()
    session_id = created.session.id

    done = subprocess.run(
        import_command(root, session_id, one_slot_server.url, "--workers", "6", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment(), "EPHEMERA_TOKEN": created.token},
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["imported"], summary["failed"], summary["errors"]) == (24, 0, [])
    with Client(one_slot_server.url, created.token) as client:
        entries = list(client.list_imports(session_id, summary["source"]))
    assert sorted((e.origin.path, e.sha256) for e in entries) == sorted(
        (name, hashlib.sha256(data).hexdigest()) for name, data in files.items()
    )
    log = one_slot_server.log.read_text()
    assert " 429 Too Many Requests" in log, "the server never refused an upload: nothing tested"


def test_a_third_sigint_ends_an_import_stuck_in_a_server_call(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"picture")
    # A "server" that takes connections and never answers.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            pass  # closed: the test is over

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    process = subprocess.Popen(
        import_command(root, "s1", url, "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**environment(), "EPHEMERA_TOKEN": "t"},
    )
    try:
        wait_for(lambda: accepted, 20, "the importer to call the server")
        # The first stops, the second aborts, the third kills: a few spaced out, as a
        # user presses Ctrl-C, until the process is gone (or clearly never will be).
        for _ in range(8):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        process.kill()
        process.wait(10)
        listener.close()
        for conn in accepted:
            conn.close()
    assert process.returncode == -signal.SIGINT
