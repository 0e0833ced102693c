"""tus-js-client under Node resumes an upload after its process is killed mid-upload."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import NoReturn

import httpx2 as httpx
import pytest

from tests.conftest import Server, bearer

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
JS = Path(__file__).resolve().parents[1] / "js"
TUS = {"Tus-Resumable": "1.0.0"}


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"tus-js-client cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """Node, with tus-js-client installed from the lockfile (``npm ci``) if it is not yet."""
    found = shutil.which("node")
    npm = shutil.which("npm")
    if found is None or npm is None:
        _unavailable("node and npm are not installed")
    if not (JS / "node_modules" / "tus-js-client").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, timeout=300
        )
        if installed.returncode != 0:
            _unavailable(f"npm ci failed: {installed.stderr.decode()[-500:]}")
    return found


class NodeUpload:
    """One run of tests/js/upload.mjs; its output lines arrive in a queue."""

    def __init__(self, node: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [node, str(JS / "upload.mjs"), *args],
            cwd=JS,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in self.process.stdout:
                self.lines.put(line.decode().strip())
        self.lines.put("exit")

    def until(self, wanted: str, timeout_s: float = 60) -> str:
        """The first line starting with ``wanted`` (others are passed over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(wanted):
                return line
            assert line != "exit", "the node process ended"
            assert not line.startswith("error"), line


def test_tus_js_client_resumes_after_its_process_is_killed(
    node: str, server: Server, tmp_path: Path
) -> None:
    size = 48 * MiB
    data = random.Random(7).randbytes(size)
    path = tmp_path / "js.bin"
    path.write_bytes(data)
    created = httpx.post(f"{server.api}/sessions", json={"id": "js"}, headers=server.admin())
    token = created.json()["token"]
    args = (f"{server.api}/sessions/js/uploads", token, str(path), str(tmp_path / "urls.json"))
    chunk = str(4 * MiB)

    first = NodeUpload(node, *args, chunk)
    try:
        url = first.until("url ").split(" ", 1)[1]
        while int(first.until("progress ").split()[1]) < 12 * MiB:
            pass
        first.process.send_signal(signal.SIGKILL)  # mid-upload, with no chance to clean up
    finally:
        first.stop()
    offset = int(httpx.head(url, headers={**bearer(token), **TUS}).headers["Upload-Offset"])
    assert 0 < offset < size

    second = NodeUpload(node, *args, chunk)
    try:
        assert second.until("resuming ") == f"resuming {url}"  # from its URL storage on disk
        progress = int(second.until("progress ").split()[1])
        assert progress >= offset  # it went on from the server's offset, not from zero
        assert second.until("done ", timeout_s=120) == f"done {url}"
        assert second.process.wait(30) == 0
    finally:
        second.stop()

    done = httpx.head(url, headers={**bearer(token), **TUS})
    artifact_id = done.headers["Ephemera-Artifact-Id"]
    artifact = httpx.get(f"{server.api}/sessions/js/artifacts/{artifact_id}", headers=bearer(token))
    assert artifact.json()["sha256"] == hashlib.sha256(data).hexdigest()
    content = httpx.get(
        f"{server.api}/sessions/js/artifacts/{artifact_id}/content", headers=bearer(token)
    )
    assert hashlib.sha256(content.content).hexdigest() == hashlib.sha256(data).hexdigest()
