"""The README's quick start works as written, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import Server, _die_with_parent, bearer, free_port

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"


def blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(
        rf"```{language}\n(.*?)```", README.read_text() if text is None else text, re.S
    )


def section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_readme_opens_with_the_two_commands() -> None:
    first = blocks("sh")[0]
    assert [line.split()[:2] for line in first.splitlines()] == [
        ["make", "serve"],
        ["make", "test"],
    ]


def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    # Run where `make serve` would: ./ephemera-data beside the commands, port 8000 rewritten.
    client_block, library_block = blocks("python", section("Quick start"))
    [curl_block] = blocks("sh", section("Quick start"))
    server = Server(tmp_path / "ephemera-data").start()
    try:
        with_client = subprocess.run(
            [
                sys.executable,
                "-c",
                client_block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert with_client.returncode == 0, with_client.stderr
        assert with_client.stdout.splitlines()[:2] == ["identical", "3 artifacts"]
        assert "CloseReport(closed=True" in with_client.stdout
        assert "artifact_count=3" in with_client.stdout

        script = curl_block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        assert "identical" in shell.stdout
        assert '"closed":true' in shell.stdout
        assert '"artifact_count":3' in shell.stdout
    finally:
        server.stop()

    library = subprocess.run(
        [sys.executable, "-c", library_block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert library.returncode == 0, library.stderr
    assert "closed=True" in library.stdout


def test_the_embedding_example_processes_tasks_and_cleans_up_on_schedule(tmp_path: Path) -> None:
    [example] = re.findall(r"```python\n(.*?)```", section("Inside your own app"), re.S)
    (tmp_path / "host.py").write_text(example)
    env = {
        **os.environ,
        "EPHEMERA_CLEANUP_INTERVAL_S": "1",
        "EPHEMERA_PROCESSORS": '["sample-upper"]',  # a processor of tests/plugins/sample
    }
    # As the README says: the key commands work on a store that exists.
    subprocess.run(
        [sys.executable, "-m", "ephemera", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    key = subprocess.run(
        [sys.executable, "-m", "ephemera", "admin-key", "create", "host"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    port = free_port()
    with open(tmp_path / "host.log", "wb") as log:
        host = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "host:app",
                "--host",
                "127.0.0.1",
                "--port",
                f"{port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/files", timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                assert host.poll() is None, (tmp_path / "host.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "host.log").read_text()
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            api, admin = "/api/v1", bearer(key)
            created = http.post(f"{api}/sessions", json={}, headers=admin).json()
            sid, token = created["id"], bearer(created["token"])
            artifact = http.post(
                f"{api}/sessions/{sid}/artifacts",
                params={"name": "a.txt"},
                content=b"embedded",
                headers=token,
            ).json()
            task = http.post(
                f"{api}/sessions/{sid}/tasks",
                json={"processor": "sample-upper", "inputs": [artifact["id"]]},
                headers=token,
            ).json()
            runs: list[dict[str, object]] = []
            deadline = time.monotonic() + 30
            # The task is the host's workers' to run; a second scheduled run shows a schedule.
            while time.monotonic() < deadline and (task["state"] != "succeeded" or len(runs) < 2):
                time.sleep(0.2)
                task = http.get(f"{api}/sessions/{sid}/tasks/{task['id']}", headers=token).json()
                audit = http.get(
                    f"{api}/admin/audit", params={"action": "cleanup.all"}, headers=admin
                )
                runs = [e for e in audit.json()["items"] if e["actor"] == "scheduler"]
            assert task["state"] == "succeeded", task
            output = task["outputs"][0]["artifact_id"]
            content = http.get(f"{api}/sessions/{sid}/artifacts/{output}/content", headers=token)
            assert content.content == b"EMBEDDED"
            assert len(runs) >= 2, runs
    finally:
        host.terminate()
        host.wait(30)
    # The lifespan's end, which stops the workers and the scheduler, ran and returned.
    assert "Application shutdown complete" in (tmp_path / "host.log").read_text()
