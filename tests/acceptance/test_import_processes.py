"""`ephemera import --watch` as a real process: files copied in while it runs, a SIGKILL and a
restart part-way, and still every file exactly once, complete, with its sha256."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.client import Client
from ephemera.models import ImportEntry
from tests.cli import BACKEND_VARIABLES
from tests.conftest import Server, _die_with_parent
from tests.databases import PostgresDatabases
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

FILES = 200  # 197 written at once, 3 slowly
SLOW = ("slow/a.bin", "slow/b.bin", "slow/c.bin")


class ImporterProcess:
    """One `ephemera import --watch --json` process; its output goes to files."""

    def __init__(self, args: list[str], env: dict[str, str], logs: Path, n: int) -> None:
        self.out = logs / f"import-{n}.out"
        self.err = logs / f"import-{n}.err"
        base = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ephemera", "import", *args],
                stdout=out,
                stderr=err,
                env={**base, **env},
                preexec_fn=_die_with_parent,
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> tuple[int, dict[str, object]]:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        return code, json.loads(self.out.read_text())

    def log(self) -> str:
        return self.err.read_text()


@dataclass
class Ledger:
    """How the test reads what arrived: the import entries, and each artifact's sha256."""

    entries: Callable[[], list[ImportEntry]]
    artifacts: Callable[[], dict[str, str]]


class Camera:
    """Copies files in as a camera would: most at once, a few written slowly in chunks (one
    handle, pauses shorter than the settle time) until told to finish them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {
            f"day{i % 5}/img{i:03}.png": os.urandom(1000 + 97 * i) for i in range(FILES - 3)
        }
        for rel in SLOW:
            self.files[rel] = b""
        self.slow_started = threading.Event()
        self.finish_slow = threading.Event()
        self._thread = threading.Thread(target=self._write)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.finish_slow.set()
        self._thread.join()

    def _slowly(self, rel: str) -> None:
        written = bytearray()
        with (self.root / rel).open("wb") as out:
            while True:
                chunk = os.urandom(4096)
                out.write(chunk)
                out.flush()
                written += chunk
                if self.finish_slow.is_set():
                    break
                time.sleep(0.3)
        self.files[rel] = bytes(written)

    def _write(self) -> None:
        (self.root / "slow").mkdir(parents=True)
        fast = [rel for rel in self.files if rel not in SLOW]
        writers = [threading.Thread(target=self._slowly, args=(rel,)) for rel in SLOW]
        for i, rel in enumerate(fast):
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_bytes(self.files[rel])
            if i == len(fast) // 4:
                for writer in writers:
                    writer.start()
                self.slow_started.set()
            time.sleep(0.01)
        for writer in writers:
            writer.join()


def exactly_once_across_a_kill(
    tmp_path: Path, start: Callable[[int], ImporterProcess], ledger: Ledger
) -> None:
    root = tmp_path / "camera"
    root.mkdir()
    camera = Camera(root)
    first = start(1)
    camera.start()
    try:
        wait_for(lambda: len(ledger.entries()) >= 40, 20, lambda: "40 imports; " + first.log())
        camera.slow_started.wait(20)
        # Part-way: some files imported, some in flight, the slow ones half written.
        first.kill()
        second = start(2)

        def fast_ones_there() -> bool:
            return len({e.origin.path for e in ledger.entries()} - set(SLOW)) == FILES - 3

        # The restarted importer has scanned the folder while the slow files were written.
        wait_for(fast_ones_there, 30, lambda: "the fast files; " + second.log())
    finally:
        camera.join()
    files = camera.files

    def all_there() -> bool:
        return len({e.origin.path for e in ledger.entries()}) == len(files)

    wait_for(all_there, 30, lambda: "the slow files; " + second.log())
    # Changed afterwards: a new artifact, replacing the first.
    changed = "day2/img002.png"
    files[changed] = b"retouched"
    (root / changed).write_bytes(files[changed])
    count = len(files) + 1
    wait_for(lambda: len(ledger.entries()) >= count, 20, lambda: "the change; " + second.log())
    code, summary = second.terminate()

    assert code == 0, second.log()
    assert summary["failed"] == 0
    entries = ledger.entries()
    by_path: dict[str, list[ImportEntry]] = {}
    for entry in entries:
        by_path.setdefault(entry.origin.path, []).append(entry)
    assert sorted(by_path) == sorted(files)
    assert {p for p, e in by_path.items() if len(e) > 1} == {changed}
    old, new = by_path[changed]
    assert new.replaces == old.artifact_id
    artifacts = ledger.artifacts()
    # No duplicates, nothing left over from the killed importer's uploads.
    assert sorted(artifacts) == sorted(e.artifact_id for e in entries)
    for rel, data in files.items():
        latest = by_path[rel][-1]
        assert latest.sha256 == hashlib.sha256(data).hexdigest(), rel
        assert artifacts[latest.artifact_id] == latest.sha256
    for rel in SLOW:  # imported once, and complete
        [entry] = by_path[rel]
        assert entry.origin.size == len(files[rel]) > 4096


def test_import_to_a_server_exactly_once_across_a_sigkill(server: Server, tmp_path: Path) -> None:
    with Client(server.url, server.admin_key) as admin:
        session_id = admin.create_session(label="camera").session.id

        def start(n: int) -> ImporterProcess:
            args = [str(tmp_path / "camera"), "--session", session_id, "--watch", "--json"]
            args += ["--server", server.url, "--settle", "1.5"]
            return ImporterProcess(args, {"EPHEMERA_TOKEN": server.admin_key}, tmp_path, n)

        ledger = Ledger(
            entries=lambda: list(admin.list_imports(session_id)),
            artifacts=lambda: {a.id: a.sha256 for a in admin.list_artifacts(session_id)},
        )
        exactly_once_across_a_kill(tmp_path, start, ledger)


def _in_process(tmp_path: Path, database_url: str | None) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=database_url)
    with Store.open(settings) as store:
        session_id = store.create_session(label="camera").session.id
        env = {"EPHEMERA_DATA_DIR": str(data_dir)}
        if database_url:
            env["EPHEMERA_DATABASE_URL"] = database_url

        def start(n: int) -> ImporterProcess:
            args = [str(tmp_path / "camera"), "--session", session_id, "--watch", "--json"]
            return ImporterProcess([*args, "--settle", "1.5"], env, tmp_path, n)

        def artifacts() -> dict[str, str]:
            page = store.list_artifacts(session_id, limit=1000)
            assert page.next_cursor is None
            return {a.id: a.sha256 for a in page.items}

        ledger = Ledger(
            entries=lambda: store.list_imports(session_id, limit=1000).items,
            artifacts=artifacts,
        )
        exactly_once_across_a_kill(tmp_path, start, ledger)


def test_import_in_process_on_sqlite_exactly_once_across_a_sigkill(tmp_path: Path) -> None:
    _in_process(tmp_path, None)


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.fresh()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


def test_import_in_process_on_postgresql_exactly_once_across_a_sigkill(
    tmp_path: Path, postgres_url: str
) -> None:
    _in_process(tmp_path, postgres_url)
