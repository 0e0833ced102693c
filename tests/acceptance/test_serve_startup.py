"""`ephemera serve` checks its backends at start: a broken one fails it at once, with one line
saying what and how to fix it, instead of a server that reports ready and then fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from ephemera.volume import RESERVE_FILE
from tests.cli import BACKEND_VARIABLES, ephemera, tree
from tests.conftest import _die_with_parent, free_port
from tests.mounts import tmpfs
from tests.s3server import REGION, S3Server
from tests.waiting import wait_until_serving

pytestmark = pytest.mark.slow

# Imports and start-up take about 2 s on a loaded machine; a failed check must not add to it.
FAILS_WITHIN_S = 10


@dataclass
class Outcome:
    returncode: int
    stderr: str
    seconds: float

    @property
    def error(self) -> str:
        (line,) = [line for line in self.stderr.splitlines() if line.startswith("error:")]
        return line


def serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Outcome:
    base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    command = [sys.executable, "-m", "ephemera", "serve", "--port", str(free_port())]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, "COLUMNS": "80", **(env or {})},
        preexec_fn=_die_with_parent,
    )
    try:
        _, stderr = process.communicate(timeout=FAILS_WITHIN_S * 3)
    finally:
        if process.poll() is None:  # it started after all: the test fails below
            process.kill()
            process.wait()
    return Outcome(process.returncode, stderr, time.monotonic() - started)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder in which nobody, root included, can create a file: a read-only tmpfs."""
    with tmpfs(tmp_path / "locked", "ro,size=1m,mode=0700") as folder:
        yield folder


def test_serve_fails_at_once_on_an_unreachable_database(data_dir: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"  # a closed local port
    outcome = serve(data_dir, "--database-url", url)
    assert outcome.returncode == 3
    assert outcome.seconds < FAILS_WITHIN_S
    assert outcome.error.startswith(
        "error: cannot start: cannot reach the database postgresql+psycopg://postgres@127.0.0.1:1"
    )
    assert "check --database-url or EPHEMERA_DATABASE_URL" in outcome.error
    assert "Traceback" not in outcome.stderr
    assert not (data_dir / "deployment.json").exists()
    assert not (data_dir / RESERVE_FILE).exists()


def test_serve_fails_at_once_on_a_data_dir_it_cannot_write(read_only_dir: Path) -> None:
    outcome = serve(read_only_dir)
    assert outcome.returncode == 3
    assert outcome.seconds < FAILS_WITHIN_S
    assert outcome.error == (
        f"error: cannot start: data dir {read_only_dir} is not writable (Read-only file "
        "system): fix its permissions, or choose another with --data-dir or EPHEMERA_DATA_DIR"
    )
    assert tree(read_only_dir) == {}


def test_serve_fails_at_once_on_a_missing_bucket(
    data_dir: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    s3_server.start()
    url = f"s3://never-made/p?endpoint={s3_server.endpoint}&region={REGION}"
    outcome = serve(data_dir, "--blob-url", url, env=s3_env)
    assert outcome.returncode == 3
    assert outcome.seconds < FAILS_WITHIN_S
    assert outcome.error == (
        "error: cannot start: S3 bucket never-made does not exist: create it, or set "
        "EPHEMERA_CREATE_BUCKET=true to have ephemera create it"
    )
    assert not (data_dir / "deployment.json").exists()


def test_create_bucket_lets_serve_make_the_missing_bucket(
    tmp_path: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    from tests.conftest import Server

    s3_server.start()
    bucket = f"made-{tmp_path.name[-20:].lower().replace('_', '-')}"
    url = f"s3://{bucket}?endpoint={s3_server.endpoint}&region={REGION}"
    env = {**s3_env, "EPHEMERA_BLOB_URL": url, "EPHEMERA_CREATE_BUCKET": "true"}
    server = Server(tmp_path / "data", env).start()
    server.stop()
    client = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    ).client("s3", endpoint_url=s3_server.endpoint, config=Config(s3={"addressing_style": "path"}))
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    # A second start finds the bucket there: creating it again is no error.
    Server(tmp_path / "data", env).start().stop()


def test_serve_refuses_other_backends_than_its_deployment_recorded(data_dir: Path) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    before = tree(data_dir)
    outcome = serve(data_dir, "--database-url", "postgresql://postgres@127.0.0.1:5432/other")
    assert outcome.returncode == 2
    assert "drop --database-url and EPHEMERA_DATABASE_URL" in outcome.error
    assert tree(data_dir) == before


def test_serve_refuses_a_port_out_of_range_and_creates_nothing(data_dir: Path) -> None:
    outcome = serve(data_dir, "--port", "70000")
    assert outcome.returncode == 2
    assert "Invalid value for '--port'" in outcome.stderr
    assert not data_dir.exists()


def test_serve_refuses_a_bad_port_setting_and_creates_nothing(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-m", "ephemera", "serve", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "EPHEMERA_PORT": "eighty"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid settings")
    assert "EPHEMERA_PORT" in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_listens_on_the_port_of_the_settings(tmp_path: Path) -> None:

    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    process = subprocess.Popen(
        [sys.executable, "-m", "ephemera", "serve", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**base, "EPHEMERA_PORT": str(port), "EPHEMERA_HOST": "127.0.0.1"},
        preexec_fn=_die_with_parent,
    )
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}", lambda: "", timeout_s=30)
    finally:
        process.terminate()
        process.wait(15)


def test_a_worker_fails_at_once_on_a_missing_bucket(
    data_dir: Path, s3_server: S3Server, s3_env: dict[str, str]
) -> None:
    s3_server.start()
    url = f"s3://never-made/p?endpoint={s3_server.endpoint}&region={REGION}"
    assert ephemera("migrate", "--blob-url", url, data_dir=data_dir, env=s3_env).returncode == 0
    started = time.monotonic()
    result = ephemera("worker", "--blob-url", url, data_dir=data_dir, env=s3_env)
    assert result.returncode == 3
    assert time.monotonic() - started < FAILS_WITHIN_S
    assert "error: cannot start: S3 bucket never-made does not exist" in result.stderr
