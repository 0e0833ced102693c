"""A real S3-protocol server for tests: moto's, as a child process on 127.0.0.1.

Started on first use and shared by the whole run; each test gets a bucket of its own. To use
the fixtures, name this module in ``pytest_plugins``. Outside CI a server that cannot start
skips the S3 tests with the reason; under ``CI=true`` it fails them, so a CI run never passes
without having run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REGION = "us-east-1"

# What a client of the test server needs in its environment: dummy credentials (moto takes
# any), and nothing from the developer's own AWS setup.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
S3_ENV_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class S3Server:
    """``moto.server`` on a free port; started by the first ``bucket_url``, stopped by ``stop``."""

    def __init__(self, log_dir: Path) -> None:
        # Imported here, not above: conftest may import this module.
        from tests.conftest import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"s3-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._failure: str | None = None
        self._client: Any = None

    def _admin(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
        ).client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self) -> None:
        """Start the server and wait until it answers; skip or fail the test if it cannot."""
        if self.process is not None and self._failure is None:
            return
        if self._failure is None:
            self._failure = self._start()
        if self._failure is not None:
            _unavailable(self._failure)

    def _start(self) -> str | None:
        from tests.conftest import _die_with_parent

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        admin = self._admin()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (status := self.process.poll()) is not None:
                tail = self.log.read_text()[-2000:]
                return f"the S3 test server (moto) exited with status {status}: {tail}"
            try:
                admin.list_buckets()
            except (BotoCoreError, ClientError):
                time.sleep(0.05)
            else:
                return None
        self.stop()
        return f"the S3 test server (moto) did not answer at {self.endpoint} within 30 s"

    def bucket_url(self, prefix: str = "") -> str:
        """A store URL on a new, empty bucket."""
        self.start()
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        self._admin().create_bucket(Bucket=bucket)
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint={self.endpoint}&region={REGION}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test's environment made that of an S3 test client; returned for child processes."""
    for name in S3_ENV_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(S3_ENV)


@pytest.fixture
def s3_url(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    """``EPHEMERA_BLOB_URL`` for a fresh bucket of the running server."""
    return s3_server.bucket_url()
