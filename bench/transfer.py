"""Transfer benchmark: ephemera against a bare Starlette app and the disk itself.

Run from the project root: ``.venv-test/bin/python -m bench.transfer`` (``make bench``), or a quick
smoke run with ``--size-mib 64 --repeat 1 --small-seconds 2``.

Measured in one run, on this machine:

* the disk: ``dd`` writing zeros with ``conv=fsync``, and ``dd`` reading the test file
  (page cache warm);
* one large upload and download (default 1 GiB of random bytes), with ``curl`` against
  ``ephemera serve`` and against ``bench.bare_app`` (the same transfer done the obvious way);
* the servers' peak RSS growth during those transfers;
* 4 KiB uploads per second at concurrency 16, with one ``httpx.AsyncClient``.

With ``--backends embedded,postgresql-s3`` (the default) a third server joins: ``ephemera
serve`` on a fresh PostgreSQL database and a fresh bucket of a moto S3 server started for the
run (``tests/s3server.py``). It gets the same transfers and checks, and the summary gives its
ratios against the embedded default measured in the same run. moto is Python, keeps objects in
its own process and runs on this machine: those numbers bound what ephemera does around S3,
not what a production object store would give. ``--backends embedded`` runs only the first
two servers.

Throughput is in MiB/s (2**20 bytes per second), memory in MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx2 as httpx

if TYPE_CHECKING:
    from tests.s3server import S3Server

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
API = "/api/v1"
SMALL_SIZE = 4096
CONCURRENCY = 16
UPLOAD_AIM = 0.8
DOWNLOAD_AIM = 0.9
RSS_AIM_MB = 100  # megabytes (10**6 bytes), as the aim is stated
CURL_TIMEOUT_S = 900
EMBEDDED = "embedded"
PG_S3 = "postgresql-s3"
PG_LABEL = "pg+s3"  # the PostgreSQL + S3 server, in the output
BACKENDS = (EMBEDDED, PG_S3)
# The server that hands out the benchmark's databases (it must allow CREATE DATABASE); the
# same variable as the tests use.
POSTGRES = os.environ.get("EPHEMERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MOTO_NOTE = (
    "S3 here is moto (Python, objects kept in its own process, on this machine, sharing its\n"
    "CPUs): the PostgreSQL + S3 numbers bound what ephemera does around S3, not what a\n"
    "production object store would give."
)


# ---------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            kib = int(line.split()[1])
            return f"{kib / 1024**2:.1f} GiB"
    return "unknown"


def _filesystem(path: Path) -> str:
    """Type, device and mount point of the filesystem holding ``path`` (longest mount prefix)."""
    target = str(path.resolve())
    best: tuple[str, str, str] | None = None
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fstype = parts[0], parts[1], parts[2]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) >= len(best[1])):
            best = (device, mount, fstype)
    if best is None:
        best = ("?", "?", "?")
    free = shutil.disk_usage(path).free / 1024**3
    return f"{best[2]} on {best[0]} (mounted at {best[1]}), {free:.0f} GiB free"


def _curl_version() -> str:
    result = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


def print_machine(data_dir: Path, extra: dict[str, str] | None = None) -> None:
    """The machine a benchmark runs on; ``extra`` adds the tools that benchmark relies on."""
    rows = {
        "nproc": f"{len(os.sched_getaffinity(0))} (os.cpu_count() = {os.cpu_count()})",
        "CPU": _cpu_model(),
        "memory": _mem_total(),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        **(extra or {}),
        "data fs": _filesystem(data_dir),
    }
    print("== Machine")
    for label, value in rows.items():
        print(f"  {label + ':':<12}{value}")
    print()


# ---------------------------------------------------------------------------- processes


@dataclass
class Run:
    """One finished child process: wall time, exit code, output, and its sampled peak RSS."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float


def _exec_hwm_kib(pid: int, name: str) -> int:
    """VmHWM of ``pid`` once it runs ``name`` (0 before its exec or after its exit).

    Not ru_maxrss from wait4: a child's maxrss includes the RSS of this (forked) Python
    process from before the exec, which would hide the child's own use.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if fields.get("Name", "").strip() != name[:15] or "VmHWM" not in fields:
        return 0
    return int(fields["VmHWM"].split()[0])


def run_timed(argv: Sequence[str], stdin_path: Path | None = None) -> Run:
    """Run ``argv`` to completion, timed with ``perf_counter`` around the process; its peak
    RSS is sampled every 20 ms (VmHWM only grows, so only the last 20 ms can be missed)."""
    name = Path(argv[0]).name
    peak_kib = 0
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin,
    ):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err)
        pidfd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll(20):  # readable when the process has exited
                peak_kib = max(peak_kib, _exec_hwm_kib(proc.pid, name))
        finally:
            os.close(pidfd)
        seconds = time.perf_counter() - start
        proc.wait()
        out.seek(0)
        err.seek(0)
        return Run(
            seconds,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            peak_kib / 1024,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} server exited with code {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for f in self.logs:
            f.close()


def wait_healthy(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer /healthz within {timeout:.0f} s")


def remove_run_dir(run_dir: Path) -> None:
    """Remove one run's data, and ``bench/out`` itself once no other run is in it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        OUT.rmdir()  # only if empty


def start_ephemera(
    run_dir: Path, name: str = "ephemera", env: dict[str, str] | None = None
) -> tuple[Server, str]:
    """``ephemera serve`` on a free port; returns the server and the admin key it printed.

    ``env`` is added to this process's environment (the backends' URLs, S3 credentials)."""
    exe = Path(sys.executable).parent / "ephemera"
    data_dir = run_dir / f"{name}-data"
    port = free_port()
    # stdout goes to a file, not a pipe: uvicorn's access log also writes there, and an
    # undrained pipe would eventually block the server.
    stdout_path = run_dir / f"{name}.stdout"
    stdout = stdout_path.open("wb")
    stderr = (run_dir / f"{name}.stderr").open("wb")
    argv = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(data_dir)],
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, **env} if env else None,
    )
    server = Server(name, proc, port, [stdout, stderr])
    try:
        key = ""
        deadline = time.monotonic() + 60
        while not key:
            text = stdout_path.read_text(errors="replace")
            if "\n" in text:
                key = text.split("\n", 1)[0].strip()
                break
            server.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("ephemera printed no admin key")
            time.sleep(0.05)
        wait_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server, key


def start_bare(run_dir: Path) -> Server:
    port = free_port()
    (run_dir / "bare-small").mkdir()
    env = {
        **os.environ,
        "BENCH_BARE_FILE": str(run_dir / "bare-big.bin"),
        "BENCH_BARE_DIR": str(run_dir / "bare-small"),
    }
    log = (run_dir / "bare.log").open("wb")
    argv = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--http", "httptools", "--loop", "uvloop"]
    proc = subprocess.Popen(
        [*argv, "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    server = Server("bare", proc, port, [log])
    try:
        wait_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------- backends


def parse_backends(text: str) -> list[str]:
    """``embedded,postgresql-s3`` -> the names, in BACKENDS order; the embedded default is
    always among them, as the reference of every ratio."""
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(names - set(BACKENDS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}"
        )
    if EMBEDDED not in names:
        raise argparse.ArgumentTypeError(
            f"{EMBEDDED} is required: the other backends are measured against it"
        )
    return [b for b in BACKENDS if b in names]


def _database_url(name: str) -> str:
    base, _, _ = POSTGRES.rpartition("/")
    return f"{base}/{name}"


class PostgresS3:
    """Fresh PostgreSQL databases and S3 buckets for one benchmark run.

    Databases are created on the server of ``POSTGRES``; buckets on a moto server
    (``tests/s3server.py``), started on first use with its log in ``run_dir``. ``drop`` removes
    one pair, ``close`` whatever is left and stops moto. Opening makes this process an S3
    client of moto: its dummy credentials go into ``os.environ``.
    """

    def __init__(self, run_dir: Path) -> None:
        from tests.s3server import S3_ENV, S3_ENV_UNSET

        self.run_dir = run_dir
        self.env = dict(S3_ENV)
        for name in S3_ENV_UNSET:
            os.environ.pop(name, None)
        os.environ.update(S3_ENV)
        self._s3: S3Server | None = None
        self._made: list[tuple[str, str]] = []  # (database URL, bucket URL)

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)

    def postgres_version(self) -> str:
        with self._admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'} ({POSTGRES.rpartition('/')[0]})"

    @staticmethod
    def moto_version() -> str:
        return f"moto {version('moto')} server (Python, in-memory, on this machine)"

    def _server(self) -> S3Server:
        if self._s3 is None:
            import pytest

            from tests.s3server import S3Server

            self._s3 = S3Server(self.run_dir)
            try:
                self._s3.start()
            except (pytest.skip.Exception, pytest.fail.Exception) as exc:
                raise RuntimeError(str(exc)) from None
        return self._s3

    def fresh(self) -> tuple[str, str]:
        """A new empty database and a new empty bucket, as ``EPHEMERA_DATABASE_URL`` and
        ``EPHEMERA_BLOB_URL``; the database is migrated by whoever opens it first."""
        from psycopg import sql

        name = f"ephemera_bench_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        database_url = _database_url(name)
        try:
            blob_url = self._server().bucket_url()
        except BaseException:
            self._drop_database(database_url)
            raise
        self._made.append((database_url, blob_url))
        return database_url, blob_url

    def server_env(self, database_url: str, blob_url: str) -> dict[str, str]:
        """What ``ephemera serve`` on these backends needs in its environment."""
        return {**self.env, "EPHEMERA_DATABASE_URL": database_url, "EPHEMERA_BLOB_URL": blob_url}

    def _drop_database(self, database_url: str) -> None:
        from psycopg import sql

        name = database_url.rpartition("/")[2]
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @staticmethod
    def _drop_bucket(blob_url: str) -> None:
        from ephemera.blobs.s3 import S3BlobStore

        store = S3BlobStore.from_url(blob_url)
        for staged in list(store.list_staged()):
            store.delete_staged(staged.name)
        keys = [stat.key for stat in store.list()]
        failed = store.delete_many(keys)
        if failed:
            raise RuntimeError(f"{len(failed)} objects not deleted from {store.bucket}")
        store.client().delete_bucket(Bucket=store.bucket)

    def drop(self, database_url: str, blob_url: str) -> None:
        """Drop the database (connections closed by force) and empty and delete the bucket;
        if that fails, ``close`` tries again."""
        self._drop_database(database_url)
        self._drop_bucket(blob_url)
        self._made.remove((database_url, blob_url))

    def close(self) -> None:
        """Drop what is left (reporting, not raising, what fails) and stop moto."""
        try:
            for database_url, blob_url in list(self._made):
                try:
                    self.drop(database_url, blob_url)
                except Exception as exc:  # clean up the rest regardless
                    print(f"cleanup of {database_url} / {blob_url} failed: {exc}", file=sys.stderr)
        finally:
            if self._s3 is not None:
                self._s3.stop()


# ---------------------------------------------------------------------------- memory


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all threads of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class MemoryProbe:
    """Peak RSS growth of one process over a baseline taken before any transfer (and the CPU
    time it used since the last ``before``)."""

    pid: int
    baseline_kib: int = 0
    resettable: bool = True
    cpu_start: float = 0.0

    def start(self) -> None:
        self.baseline_kib = proc_status_kib(self.pid, "VmRSS")
        self.resettable = reset_peak(self.pid)

    def before(self) -> None:
        if self.resettable:
            self.resettable = reset_peak(self.pid)
        self.cpu_start = cpu_seconds(self.pid)

    def cpu_used(self) -> float:
        return cpu_seconds(self.pid) - self.cpu_start

    def growth_mib(self) -> float:
        return (proc_status_kib(self.pid, "VmHWM") - self.baseline_kib) / 1024


# ---------------------------------------------------------------------------- transfers


@dataclass
class Series:
    """Throughput samples (MiB/s) and peak RSS growth samples (MiB) of one kind of transfer."""

    rates: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def peak_rss(self) -> float:
        return max(self.rss) if self.rss else float("nan")


def make_input(path: Path, size: int) -> str:
    """``size`` random bytes to ``path``, fsynced; returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(MiB, remaining))
            digest.update(block)
            f.write(block)
            remaining -= len(block)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def dd_write(path: Path, size_mib: int) -> float:
    argv = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mib}", "conv=fsync"]
    run = run_timed(argv)
    path.unlink(missing_ok=True)
    if run.returncode != 0:
        raise RuntimeError(f"dd write failed: {run.stderr.strip()}")
    return size_mib / run.seconds


def dd_read(path: Path, size_mib: int) -> float:
    run = run_timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])
    if run.returncode != 0:
        raise RuntimeError(f"dd read failed: {run.stderr.strip()}")
    return size_mib / run.seconds


CURL = ["curl", "-sS", "--max-time", str(CURL_TIMEOUT_S)]


def curl_upload(url: str, path: Path, headers: Sequence[str]) -> tuple[Run, int, str]:
    """POST ``path`` with ``-T`` (streamed from the file; ``--data-binary @file`` would read
    it all into curl's memory first). ``Expect:`` is blanked so no 100-continue round trip.
    Returns the run, the HTTP status and the response body."""
    argv = [*CURL, "-X", "POST", "-T", str(path), "-H", "Content-Type: application/octet-stream"]
    argv += ["-H", "Expect:", "-w", "\n%{http_code}"]
    for h in headers:
        argv += ["-H", h]
    run = run_timed([*argv, url])
    body, _, code = run.stdout.rpartition("\n")
    if run.returncode != 0:
        raise RuntimeError(f"curl upload failed ({run.returncode}): {run.stderr.strip()}")
    return run, int(code), body


def curl_download(url: str, headers: Sequence[str]) -> tuple[Run, int, int]:
    argv = [*CURL, "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    for h in headers:
        argv += ["-H", h]
    run = run_timed([*argv, url])
    if run.returncode != 0:
        raise RuntimeError(f"curl download failed ({run.returncode}): {run.stderr.strip()}")
    code, size = run.stdout.split()
    return run, int(code), int(size)


@dataclass
class Ephemera:
    server: Server
    admin_key: str
    session_id: str = ""
    token: str = ""
    artifact_id: str = ""

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def new_session(self) -> tuple[str, str]:
        url = f"{self.server.base}{API}/sessions"
        r = httpx.post(url, json={}, headers=self.auth(self.admin_key), timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"creating a session answered {r.status_code}: {r.text}")
        data: dict[str, Any] = r.json()
        return str(data["id"]), str(data["token"])

    def artifacts_url(self, session_id: str | None = None) -> str:
        return f"{self.server.base}{API}/sessions/{session_id or self.session_id}/artifacts"

    def delete(self, artifact_id: str) -> None:
        r = httpx.delete(f"{self.artifacts_url()}/{artifact_id}", headers=self.auth(), timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"deleting {artifact_id} answered {r.status_code}: {r.text}")


def report_line(label: str, size: int, run: Run, mem: MemoryProbe, note: str = "") -> float:
    """Print one transfer; returns the server's peak RSS growth."""
    rss, cpu = mem.growth_mib(), mem.cpu_used()
    rate = size / MiB / run.seconds
    print(
        f"  {label:<18} {run.seconds:6.2f} s {rate:7.1f} MiB/s  server: CPU {cpu:5.2f} s,"
        f" peak RSS +{rss:5.1f} MiB  curl peak RSS {run.peak_rss_mib:4.1f} MiB{note}"
    )
    return rss


def upload_ephemera(
    eph: Ephemera, mem: MemoryProbe, src: Path, sha: str, out: Series, name: str = "ephemera"
) -> None:
    size = src.stat().st_size
    headers = [f"Authorization: Bearer {eph.token}"]
    mem.before()
    run, code, body = curl_upload(f"{eph.artifacts_url()}?name=big.bin", src, headers)
    if code != 201:
        raise RuntimeError(f"{name} upload answered {code}: {body[:500]}")
    data: dict[str, Any] = json.loads(body)
    if data["sha256"] != sha or data["size"] != size:
        raise RuntimeError(f"{name} stored {data['size']} bytes, sha256 {data['sha256']}")
    out.rates.append(size / MiB / run.seconds)
    out.rss.append(report_line(f"upload {name}", size, run, mem, "  (201, sha256 ok)"))
    if eph.artifact_id:  # keep only the newest copy, for the downloads; not timed
        eph.delete(eph.artifact_id)
    eph.artifact_id = str(data["id"])


def upload_bare(bare: Server, mem: MemoryProbe, src: Path, out: Series) -> None:
    size = src.stat().st_size
    mem.before()
    run, code, body = curl_upload(f"{bare.base}/upload", src, [])
    if code != 201 or json.loads(body)["size"] != size:
        raise RuntimeError(f"bare upload answered {code}: {body[:500]}")
    out.rates.append(size / MiB / run.seconds)
    out.rss.append(report_line("upload bare", size, run, mem, "  (201, size ok)"))


def download(
    label: str, url: str, headers: Sequence[str], size: int, mem: MemoryProbe, out: Series
) -> None:
    mem.before()
    run, code, got = curl_download(url, headers)
    if code != 200 or got != size:
        raise RuntimeError(f"{label} answered {code} with {got} bytes, expected 200, {size}")
    out.rates.append(size / MiB / run.seconds)
    out.rss.append(report_line(label, size, run, mem, "  (200, size ok)"))


# ---------------------------------------------------------------------------- small uploads


@dataclass
class SmallResult:
    ok: int
    seconds: float
    errors: Counter[str]
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def _small_run(
    targets: Sequence[tuple[str, dict[str, str]]],
    seconds: float,
    max_requests: int,
    warmup: int,
) -> SmallResult:
    """``CONCURRENCY`` tasks on one client, each POSTing 4 KiB bodies until time or count runs
    out; task ``i`` uses ``targets[i % len(targets)]`` (a URL prefix and its headers)."""
    body = os.urandom(SMALL_SIZE)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    issued = 0
    ok = 0

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(i: int, n: int) -> int | str:
            url, headers = targets[i % len(targets)]
            try:
                r = await client.post(url.format(n=n), content=body, headers=headers)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return r.status_code

        # Warm-up: open the connections and let the servers settle; not counted.
        await asyncio.gather(*(one(i, -1 - i) for i in range(warmup)))

        deadline = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal issued, ok
            while time.perf_counter() < deadline and issued < max_requests:
                issued += 1
                n = issued
                start = time.perf_counter()
                result = await one(i, n)
                if result in (200, 201):
                    ok += 1
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(result)] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    return SmallResult(ok, elapsed, errors, latencies)


def small_uploads(
    label: str, targets: Sequence[tuple[str, dict[str, str]]], seconds: float, max_requests: int
) -> SmallResult:
    result = asyncio.run(_small_run(targets, seconds, max_requests, warmup=2 * CONCURRENCY))
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items())) or "none"
    print(
        f"  {label:<22} {result.ok:6d} ok in {result.seconds:5.2f} s = {result.rate:7.1f}/s"
        f"  latency p50 {result.percentile(50):6.1f} ms, p99 {result.percentile(99):6.1f} ms"
        f"  errors: {errs}"
    )
    return result


# ---------------------------------------------------------------------------- summary


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def _aim(value: float, aim: float) -> str:
    return f">= {aim:.1f}x {'ok' if value >= aim else 'MISSED'}"


def print_summary(
    size_mib: int,
    repeat: int,
    up: dict[str, Series],
    down: dict[str, Series],
    small: dict[str, SmallResult],
    resettable: bool,
) -> None:
    aim_mib = RSS_AIM_MB * 1e6 / MiB
    es, bs = small["ephemera"], small["bare"]
    print()
    print(f"== Summary: {size_mib} MiB per transfer; MiB/s as best (median) of {repeat}")
    cols = ("", "ephemera", "bare", "dd", "eph/bare", "aim (on best)", "eph/dd")
    widths = (25, 17, 17, 19, 13, 20, 13)

    def row(*cells: str) -> None:
        text = "".join(
            f"{c:<{w}}" if i in (0, 5) else f"{c:>{w}}  " if i == 4 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print("  " + text.rstrip())

    def rate(s: Series) -> str:
        return f"{s.best:.1f} ({s.median:.1f})"

    def ratio(a: Series, b: Series) -> str:
        return f"{_ratio(a.best, b.best)} ({_ratio(a.median, b.median)})"

    row(*cols)
    print("  " + "-" * (sum(widths) + 2))
    for title, series, aim in (("upload", up, UPLOAD_AIM), ("download", down, DOWNLOAD_AIM)):
        e, b, d = series["ephemera"], series["bare"], series["dd"]
        verdict = "ok" if e.best >= aim * b.best else "MISSED"
        row(f"{title} MiB/s", rate(e), rate(b), rate(d), ratio(e, b), f">= {aim}x {verdict}",
            ratio(e, d))  # fmt: skip
    for title, series in (("upload", up), ("download", down)):
        e, b = series["ephemera"], series["bare"]
        verdict = "ok" if e.peak_rss < aim_mib else "MISSED"
        row(f"RSS growth {title} MiB", f"{e.peak_rss:.1f}", f"{b.peak_rss:.1f}", "", "",
            f"< {RSS_AIM_MB} MB {verdict}", "")  # fmt: skip
    row("4 KiB uploads/s", f"{es.rate:.1f}", f"{bs.rate:.1f}", "", _ratio(es.rate, bs.rate),
        "(none)", "")  # fmt: skip
    how = "reset with clear_refs before each" if resettable else "VmHWM since start"
    print()
    print("  dd: upload row = dd if=/dev/zero bs=1M conv=fsync (write incl. fsync); download row =")
    print("      dd of=/dev/null bs=1M of the input file (page cache warm).")
    print(f"  RSS growth: max over transfers of server VmHWM ({how}) minus VmRSS")
    print(f"      before the first transfer; aim {RSS_AIM_MB} MB = {aim_mib:.1f} MiB.")
    print(f"  4 KiB uploads: {CONCURRENCY} tasks on one httpx.AsyncClient, 201s counted;")
    print(f"      errors: ephemera {sum(es.errors.values())}, bare {sum(bs.errors.values())}.")


def print_pg_s3_summary(
    repeat: int,
    up: dict[str, Series],
    down: dict[str, Series],
    small: dict[str, SmallResult],
) -> None:
    """PostgreSQL + S3 against the embedded default, both measured in this run."""
    aim_mib = RSS_AIM_MB * 1e6 / MiB
    print()
    print(f"== PostgreSQL + S3 against the embedded default (same run; best (median) of {repeat})")
    widths = (25, 17, 17, 17, 18)

    def row(*cells: str) -> None:
        text = "".join(
            f"{c:<{w}}" if i in (0, 4) else f"{c:>{w}}  " if i == 3 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print("  " + text.rstrip())

    row("", "pg+s3", "embedded", "pg+s3/embedded", "")
    print("  " + "-" * (sum(widths) + 2))
    for title, series in (("upload", up), ("download", down)):
        p, e = series[PG_LABEL], series["ephemera"]
        row(f"{title} MiB/s", f"{p.best:.1f} ({p.median:.1f})", f"{e.best:.1f} ({e.median:.1f})",
            f"{_ratio(p.best, e.best)} ({_ratio(p.median, e.median)})", "")  # fmt: skip
    for title, series in (("upload", up), ("download", down)):
        p, e = series[PG_LABEL], series["ephemera"]
        verdict = "ok" if p.peak_rss < aim_mib else "MISSED"
        row(f"RSS growth {title} MiB", f"{p.peak_rss:.1f}", f"{e.peak_rss:.1f}", "",
            f"< {RSS_AIM_MB} MB {verdict}")  # fmt: skip
    ps, es = small[PG_LABEL], small["ephemera"]
    row("4 KiB uploads/s", f"{ps.rate:.1f}", f"{es.rate:.1f}", _ratio(ps.rate, es.rate), "")
    print()
    for line in MOTO_NOTE.splitlines():
        print(f"  {line}")
    print("  Downloads from S3 stream through the server (a GET to the bucket, relayed 1 MiB at a")
    print("      time; no local file, no zero-copy); the embedded default answers from its file")
    print("      (FileResponse).")
    print("  Uploads to S3 go up in 8 MiB multipart parts as they arrive; moto's own memory")
    print("      and CPU are not counted in the server's figures.")
    print(f"  4 KiB uploads errors: pg+s3 {sum(ps.errors.values())}.")


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="transfer size (1..1024, def. 1024)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each transfer (default 3)")
    p.add_argument("--small-seconds", type=float, default=10, help="4 KiB upload phase length")
    p.add_argument(
        "--small-max", type=int, default=100_000, help="at most this many 4 KiB uploads per server"
    )
    p.add_argument("--small-sessions", type=int, default=4, help="ephemera sessions for 4 KiB")
    p.add_argument(
        "--backends",
        type=parse_backends,
        default=list(BACKENDS),
        help=f"ephemera servers to measure (default {','.join(BACKENDS)}; {EMBEDDED} alone for"
        " the embedded default only)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.size_mib <= 1024:
        p.error("--size-mib must be between 1 and 1024 (ephemera's default limit is 1 GiB)")
    if args.repeat < 1 or args.small_seconds <= 0 or args.small_max < 1 or args.small_sessions < 1:
        p.error("--repeat, --small-seconds, --small-max and --small-sessions must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None or shutil.which("dd") is None:
        print("curl and dd are required", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    servers: list[Server] = []
    remote: PostgresS3 | None = None
    try:
        if PG_S3 in args.backends:
            remote = PostgresS3(run_dir)
        return _bench(args, run_dir, servers, remote)
    finally:
        for s in servers:
            s.stop()
        if remote is not None:
            remote.close()
        remove_run_dir(run_dir)


def _session_targets(eph: Ephemera, sessions: int) -> list[tuple[str, dict[str, str]]]:
    targets: list[tuple[str, dict[str, str]]] = []
    for _ in range(sessions):
        sid, token = eph.new_session()
        url = eph.artifacts_url(sid) + "?name=small-{n}.bin"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        targets.append((url, headers))
    return targets


def _bench(
    args: argparse.Namespace, run_dir: Path, servers: list[Server], remote: PostgresS3 | None
) -> int:
    size_mib: int = args.size_mib
    size = size_mib * MiB
    extra = {"client": _curl_version()}
    if remote is not None:
        extra["database"] = remote.postgres_version()
        extra["S3"] = remote.moto_version()
    print_machine(run_dir, extra)

    src = run_dir / "input.bin"
    print(f"== Input: {size_mib} MiB of random bytes in {run_dir}")
    t = time.perf_counter()
    sha = make_input(src, size)
    print(f"  sha256 {sha}  ({time.perf_counter() - t:.1f} s to create and hash)")
    print()

    kinds = ("ephemera", "bare", "dd") + ((PG_LABEL,) if remote is not None else ())
    up = {k: Series() for k in kinds}
    down = {k: Series() for k in kinds}

    print(f"== Disk: dd, {size_mib} x 1 MiB blocks")
    for _ in range(args.repeat):
        up["dd"].rates.append(dd_write(run_dir / "dd.bin", size_mib))
        down["dd"].rates.append(dd_read(src, size_mib))
        print(
            f"  dd write (conv=fsync) {up['dd'].rates[-1]:8.1f} MiB/s"
            f"   dd read (page cache warm) {down['dd'].rates[-1]:8.1f} MiB/s"
        )
    print()

    eph_server, admin_key = start_ephemera(run_dir)
    servers.append(eph_server)
    bare = start_bare(run_dir)
    servers.append(bare)
    eph = Ephemera(eph_server, admin_key)
    eph.session_id, eph.token = eph.new_session()
    pg: Ephemera | None = None
    if remote is not None:
        database_url, blob_url = remote.fresh()
        env = remote.server_env(database_url, blob_url)
        pg_server, pg_key = start_ephemera(run_dir, "ephemera-pg-s3", env)
        servers.append(pg_server)
        pg = Ephemera(pg_server, pg_key)
        pg.session_id, pg.token = pg.new_session()
    print(
        f"== Servers: ephemera pid {eph_server.pid} on :{eph_server.port}, "
        f"bare pid {bare.pid} on :{bare.port}"
    )
    if pg is not None and remote is not None:
        print(
            f"  {PG_LABEL}: ephemera pid {pg.server.pid} on :{pg.server.port}, "
            f"EPHEMERA_DATABASE_URL={database_url}"
        )
        print(f"    EPHEMERA_BLOB_URL={blob_url}")
        for line in MOTO_NOTE.splitlines():
            print(f"    {line}")

    eph_mem = MemoryProbe(eph_server.pid)
    bare_mem = MemoryProbe(bare.pid)
    eph_mem.start()
    bare_mem.start()
    pg_mem = MemoryProbe(pg.server.pid) if pg is not None else None
    if pg_mem is not None:
        pg_mem.start()
    print(
        f"  baseline VmRSS: ephemera {eph_mem.baseline_kib / 1024:.1f} MiB, "
        f"bare {bare_mem.baseline_kib / 1024:.1f} MiB"
        + (f", {PG_LABEL} {pg_mem.baseline_kib / 1024:.1f} MiB" if pg_mem is not None else "")
        + "; peak reset via clear_refs: "
        f"{'yes' if eph_mem.resettable else 'no, using VmHWM since start'}"
    )
    print()

    print(f"== Upload {size_mib} MiB with curl -T (alternating servers)")
    for _ in range(args.repeat):
        upload_ephemera(eph, eph_mem, src, sha, up["ephemera"])
        upload_bare(bare, bare_mem, src, up["bare"])
        if pg is not None and pg_mem is not None:
            upload_ephemera(pg, pg_mem, src, sha, up[PG_LABEL], PG_LABEL)
    print()

    print(f"== Download {size_mib} MiB with curl -o /dev/null (alternating servers)")
    eph_url = f"{eph.artifacts_url()}/{eph.artifact_id}/content"
    for _ in range(args.repeat):
        auth = [f"Authorization: Bearer {eph.token}"]
        download("download ephemera", eph_url, auth, size, eph_mem, down["ephemera"])
        download("download bare", f"{bare.base}/download", [], size, bare_mem, down["bare"])
        if pg is not None and pg_mem is not None:
            pg_url = f"{pg.artifacts_url()}/{pg.artifact_id}/content"
            pg_auth = [f"Authorization: Bearer {pg.token}"]
            download(f"download {PG_LABEL}", pg_url, pg_auth, size, pg_mem, down[PG_LABEL])
    print()

    print(
        f"== 4 KiB uploads, concurrency {CONCURRENCY}, {args.small_seconds:g} s "
        f"or {args.small_max} requests each"
    )
    sessions = args.small_sessions
    small = {
        "ephemera": small_uploads(
            f"ephemera ({sessions} sess.)",
            _session_targets(eph, sessions),
            args.small_seconds,
            args.small_max,
        ),
        "bare": small_uploads(
            "bare /upload-small",
            [(f"{bare.base}/upload-small", {"Content-Type": "application/octet-stream"})],
            args.small_seconds,
            args.small_max,
        ),
    }
    if pg is not None:
        small[PG_LABEL] = small_uploads(
            f"{PG_LABEL} ({sessions} sess.)",
            _session_targets(pg, sessions),
            args.small_seconds,
            args.small_max,
        )
    for s in servers:
        s.check_alive()

    print_summary(size_mib, args.repeat, up, down, small, eph_mem.resettable)
    if pg is not None:
        print_pg_s3_summary(args.repeat, up, down, small)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
