"""The environment `make serve` builds holds no test code, and its server offers the built-ins
alone: built here by the same Makefile target, into a temporary directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import BUILTIN_PROCESSORS, bearer, free_port
from tests.waiting import wait_until_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
API = "api/v1"
TEST_ONLY = {"pytest", "schemathesis", "moto", "mypy", "ruff", "hypothesis", "jsonschema"}
SAMPLE_PACKAGE = "ephemera-sample-processors"
SAMPLE_SOURCE = ROOT / "tests" / "plugins" / "sample"


def _die_with_parent_by_sigterm() -> None:
    # `timeout` forwards SIGTERM to its whole process group (make and the server), so the
    # server stops even if this test run is killed.
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "venv"
    # Where it is built, a .venv as the old Makefile left it: the test plugin installed and its
    # stamp up to date. `make serve` must not serve from it.
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "--quiet", "--no-deps", str(SAMPLE_SOURCE)], check=True, timeout=300)
    (path / ".installed").touch()
    built = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "serve-env", f"VENV={path}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return path


def installed(venv: Path) -> set[str]:
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}


def test_the_serving_environment_holds_the_package_and_no_test_code(venv: Path) -> None:
    packages = installed(venv)
    assert "ephemera" in packages
    assert {"fastapi", "uvicorn", "sqlalchemy", "opencv-python-headless"} <= packages
    assert packages & TEST_ONLY == set()
    # The vision extra for the built-ins, and no other: the embedded default needs neither.
    assert packages & {"boto3", "psycopg", "psycopg-binary"} == set()
    assert SAMPLE_PACKAGE not in packages
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ephemera_sample"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'ephemera_sample'" in imported.stderr


def test_the_serving_environment_offers_exactly_the_builtins(venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERA_")}
    listed = subprocess.run(
        [str(venv / "bin" / "ephemera"), "processors", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert [p["name"] for p in json.loads(listed.stdout)] == BUILTIN_PROCESSORS
    # Even named, the test processors are not there to run.
    named = subprocess.run(
        [str(venv / "bin" / "ephemera"), "processors"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "EPHEMERA_PROCESSORS": '["sample-sleep"]'},
        cwd=tmp_path,
    )
    assert named.returncode == 2
    assert "processor 'sample-sleep' is enabled but no installed package provides it" in (
        named.stderr
    )


@pytest.fixture
def make_serve(venv: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`make serve HOST=127.0.0.1 PORT=<free>` on the built environment, its data in tmp_path."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERA_")}
    env |= {"EPHEMERA_DATA_DIR": str(data_dir), "EPHEMERA_SCHEDULED_CLEANUP": "false"}
    log_path = tmp_path / "make-serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "timeout",
                "300",
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "serve",
                f"VENV={venv}",
                "HOST=127.0.0.1",
                f"PORT={port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent_by_sigterm,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, log_path.read_text)
        yield url, data_dir
    finally:
        process.send_signal(signal.SIGTERM)  # timeout passes it to make and the server
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_make_serve_listens_where_asked_and_refuses_the_test_processors(
    make_serve: tuple[str, Path], tmp_path: Path
) -> None:
    url, data_dir = make_serve
    listed = httpx.get(f"{url}/{API}/processors")
    assert [p["name"] for p in listed.json()["items"]] == BUILTIN_PROCESSORS

    admin = bearer((data_dir / "admin.key").read_text().strip())
    created = httpx.post(f"{url}/{API}/sessions", json={"id": "s1"}, headers=admin)
    assert created.status_code == 201, created.text
    journal = tmp_path / "journal"
    refused = httpx.post(
        f"{url}/{API}/sessions/s1/tasks",
        json={"processor": "sample-sleep", "params": {"seconds": 600, "journal": str(journal)}},
        headers=bearer(created.json()["token"]),
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"] == (
        "processor 'sample-sleep' is not enabled (enabled: camera-calibration, "
        "pdf-form-fill, roi-compare)"
    )
    tasks = httpx.get(f"{url}/{API}/sessions/s1/tasks", headers=admin)
    assert tasks.json()["items"] == []
    assert not journal.exists()
