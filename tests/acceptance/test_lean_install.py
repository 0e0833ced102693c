"""`pip install ephemera` without extras: no OpenCV, NumPy, boto3 or psycopg, and still a server
that keeps sessions and artifacts on the embedded default and cleans up. Asking it for what an
extra provides stops it at start with one line naming the extra.

The package is installed (not editable) from a copy of its sources into a fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from ephemera.processors import BUILTINS
from tests.conftest import bearer, free_port
from tests.waiting import wait_until_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
API = "api/v1"
EXTRA_ONLY = {"numpy", "opencv-python-headless", "boto3", "botocore", "psycopg", "psycopg-binary"}


def _die_with_parent() -> None:
    # A server started here must not outlive the test run, however it ends.
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("lean")
    # A copy of what the package is built from: building leaves nothing in the checkout.
    source = base / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    path = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    built = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return path


def lean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERA_")}
    return {**env, "COLUMNS": "200", **extra}


def ephemera(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "ephemera"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=lean_env(**env),
    )


def test_no_extra_is_installed_and_the_image_libraries_do_not_import(venv: Path) -> None:
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    packages = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"ephemera", "fastapi", "sqlalchemy"} <= packages
    assert packages & EXTRA_ONLY == set()
    for module in ("cv2", "numpy", "boto3", "psycopg"):
        imported = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode != 0
        assert f"No module named '{module}'" in imported.stderr


def test_the_lean_server_keeps_and_cleans_sessions_on_the_embedded_default(
    venv: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(venv / "bin" / "ephemera"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=lean_env(EPHEMERA_DATA_DIR=str(data_dir)),
            preexec_fn=_die_with_parent,
        )
    try:
        wait_until_serving(process, url, log_path.read_text)

        admin = bearer((data_dir / "admin.key").read_text().strip())
        created = httpx.post(f"{url}/{API}/sessions", json={"id": "lean"}, headers=admin)
        assert created.status_code == 201, created.text
        token = bearer(created.json()["token"])
        body = os.urandom(300_000)
        uploaded = httpx.post(
            f"{url}/{API}/sessions/lean/artifacts?name=blob.bin&kind=input",
            content=body,
            headers=token,
        )
        assert uploaded.status_code == 201, uploaded.text
        artifact_id = uploaded.json()["id"]
        downloaded = httpx.get(
            f"{url}/{API}/sessions/lean/artifacts/{artifact_id}/content", headers=token
        )
        assert downloaded.status_code == 200
        assert downloaded.content == body
        # No built-in runs here, and a task for one says what to install.
        assert httpx.get(f"{url}/{API}/processors").json()["items"] == []
        refused = httpx.post(
            f"{url}/{API}/sessions/lean/tasks",
            json={"processor": "roi-compare", "params": {}},
            headers=token,
        )
        assert refused.status_code == 422, refused.text
        assert "pip install 'ephemera[vision]'" in refused.json()["error"]["message"]
        closed = httpx.delete(f"{url}/{API}/sessions/lean", headers=token)
        assert closed.status_code == 200, closed.text
        assert httpx.get(f"{url}/{API}/sessions/lean", headers=admin).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    log = log_path.read_text()
    assert "processors enabled: none" in log
    for extra in ("documents", "vision"):
        names = ", ".join(sorted(n for n, b in BUILTINS.items() if b.extra == extra))
        assert (
            f"note: built-in processors not enabled ({names}): each needs "
            f"the {extra!r} extra: pip install 'ephemera[{extra}]'"
        ) in log
    assert "Traceback" not in log

    cleaned = ephemera(venv, "cleanup", "all", "--data-dir", str(data_dir), cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr


@pytest.mark.parametrize(
    ("command", "setting", "value", "extra"),
    [
        (
            "serve",
            "EPHEMERA_DATABASE_URL",
            "postgresql://ephemera@127.0.0.1:1/db",
            "postgres",
        ),
        ("serve", "EPHEMERA_PROCESSORS", '["roi-compare"]', "vision"),
        ("serve", "EPHEMERA_PROCESSORS", '["camera-calibration"]', "vision"),
        ("serve", "EPHEMERA_BLOB_URL", "s3://bucket", "s3"),
        ("worker", "EPHEMERA_PROCESSORS", '["roi-compare"]', "vision"),
        ("worker", "EPHEMERA_DATABASE_URL", "postgresql://ephemera@127.0.0.1:1/db", "postgres"),
        ("worker", "EPHEMERA_BLOB_URL", "s3://bucket", "s3"),
    ],
)
def test_asking_for_what_an_extra_provides_stops_at_start_naming_it(
    venv: Path, tmp_path: Path, command: str, setting: str, value: str, extra: str
) -> None:
    data_dir = tmp_path / "data"
    args = ["--port", str(free_port())] if command == "serve" else []
    started = ephemera(
        venv, command, *args, cwd=tmp_path, EPHEMERA_DATA_DIR=str(data_dir), **{setting: value}
    )
    assert started.returncode == 2, started.stdout + started.stderr
    errors = [line for line in started.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, started.stderr
    assert f"needs the {extra!r} extra: pip install 'ephemera[{extra}]'" in errors[0]
    assert "Traceback" not in started.stderr
    assert not data_dir.exists()
