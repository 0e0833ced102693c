from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.testing import ManualClock
from tests.databases import PostgresDatabases
from tests.s3server import s3_env, s3_server, s3_url
from tests.waiting import wait_until_serving

__all__ = ["s3_env", "s3_server", "s3_url"]  # fixtures, registered by being imported here

DATABASES = ("sqlite", "postgresql")
BLOB_STORES = ("local", "s3")

# The built-ins and the sample processors (tests/plugins/sample, installed in the test
# environment only). Entry-point processors run only where the settings name them, so the
# tests that run the samples enable them: as a setting, or in a process's environment.
BUILTIN_PROCESSORS = [
    "bol-reconcile",
    "camera-calibration",
    "image-catalog",
    "pdf-extract",
    "pdf-form-fill",
    "roi-compare",
]
WITH_SAMPLES = [*BUILTIN_PROCESSORS, "sample-sleep", "sample-upper"]
# How messages list the built-ins, e.g. "enabled: camera-calibration, roi-compare".
BUILTINS_LISTED = ", ".join(BUILTIN_PROCESSORS)
WITH_SAMPLES_ENV = {"EPHEMERA_PROCESSORS": json.dumps(WITH_SAMPLES)}
# The line sample-sleep logs as it starts a task: which process runs which task, as seen in
# that process's own output (no file path is ever taken from params). Groups: task ID, pid.
SAMPLE_RUN_LINE = re.compile(r"sample-sleep task (\S+) runs in process (\d+)$", re.M)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Contract modules (``CONTRACT = True``) run on every combination of database and blob
    store; the rest on the embedded default (SQLite and a local directory)."""
    contract = getattr(metafunc.module, "CONTRACT", False)
    if "database" in metafunc.fixturenames:
        metafunc.parametrize("database", DATABASES if contract else DATABASES[:1], indirect=True)
    if "blob_store" in metafunc.fixturenames:
        kinds = BLOB_STORES if contract else BLOB_STORES[:1]
        metafunc.parametrize("blob_store", kinds, indirect=True)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def database(
    request: pytest.FixtureRequest, postgres_databases: PostgresDatabases
) -> Iterator[str | None]:
    """The metadata database URL of the test (None: SQLite in the data dir)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    url = postgres_databases.fresh()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture
def blob_store(request: pytest.FixtureRequest) -> str | None:
    """The blob store URL of the test (None: a directory in the data dir)."""
    if getattr(request, "param", "local") == "local":
        return None
    return str(request.getfixturevalue("s3_url"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_settings(
    data_dir: Path, database: str | None, blob_store: str | None
) -> Callable[..., Settings]:
    """Settings on the test's backends, with any setting overridden."""

    def make(**overrides: Any) -> Settings:
        backends = {"database_url": database, "blob_url": blob_store}
        return Settings(**{"data_dir": data_dir, **backends, **overrides})

    return make


MakeSettings = Callable[..., Settings]


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir as opening a store on an empty one leaves it: a SQLite file holding the
    migrated schema and nothing else (the migrations take most of a fresh open)."""
    template = tmp_path_factory.mktemp("migrated") / "data"
    Store.open(Settings(data_dir=template)).close()
    return template


def seed_from_template(settings: Settings, template: Path) -> None:
    """Start a store that does not exist yet from ``template``: what the migrations would write,
    copied. Only for a SQLite store whose data dir is not there yet; tests of opening itself
    (migrations, a fresh data dir) open an empty one."""
    if settings.database_url is None and not settings.data_dir.exists():
        shutil.copytree(template, settings.data_dir)


@pytest.fixture
def store(settings: Settings, clock: ManualClock, migrated_sqlite: Path) -> Iterator[Store]:
    seed_from_template(settings, migrated_sqlite)
    with Store.open(settings, clock=clock) as opened:
        # Opening may take seconds (a fresh PostgreSQL database, an S3 bucket): a test that
        # advances the clock past a file's age must start from the time its files get.
        clock.catch_up()
        yield opened


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, int]
    files: list[str]


def database_dump(store: Store) -> str:
    """Every row of every table, as text, whatever the database."""
    from ephemera.catalog.schema import metadata

    with store.catalog.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in metadata.sorted_tables
            for row in conn.execute(table.select())
        )


def snapshot(store: Store) -> Snapshot:
    """Everything a request could have changed: row counts, every blob and every staged one."""
    blobs = [b.key for b in store.blobs.list()]
    staged = [f"staged:{s.name}" for s in store.blobs.list_staged()]
    return Snapshot(store.catalog.table_row_counts(), sorted(blobs) + sorted(staged))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # A server started by a test must not outlive the test run, however it ends.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Server:
    """A real `ephemera serve` process on 127.0.0.1."""

    # A start takes a few seconds; on a machine loaded by parallel test workers, tens.
    start_timeout_s: float = 60

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_key = ""
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ephemera",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_until_serving(self.process, self.url, self.log.read_text, self.start_timeout_s)
        except BaseException:
            # Not serving in time (or interrupted): no caller will stop it, so stop it here.
            # A server left running by a failed start loads the machine for the rest of the run
            # and slows every later test, so that more starts time out.
            self.kill()
            raise
        self.admin_key = (self.data_dir / "admin.key").read_text().strip()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@contextmanager
def serving(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A started server, stopped when the block ends however it ends."""
    running = Server(data_dir, env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "data") as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
