"""Processing benchmark: roi-compare through ephemera against a bare loop, and the queue itself.

Run from the project root: ``.venv-test/bin/python -m bench.processing``
(``make bench-processing``), or a smoke run with ``--quick`` (2 repeats, 50 tiny tasks).

Measured in one run, on this machine:

1. roi-compare on a 12-megapixel capture (4000x3000, 50 regions, one golden per region at
   1.25x the region's size so every golden is resized; ncc, ssim and hist-cosine in turn,
   thresholds as in ``tests/unit/test_roi_compare.py``; one region has a missing part):

   * **bare**: ``RoiCompare().run`` with a ``MemoryTaskContext`` holding the PNG bytes, in a
     plain loop in this process: the same decode, crop, resize, score and PNG encoding of the
     100 outputs, without store, queue or HTTP;
   * **library**: the same task through a ``Store`` in this process, submitted with
     ``submit_task`` and run with ``Worker.run_one``; the store's calls are timed, to show
     where the extra time goes (inputs read from disk, outputs written with fsync, database);
   * **ephemera**: ``ephemera serve`` with one worker (``EPHEMERA_WORKERS=1``, like the
     single-threaded bare loop; OpenCV's own thread pool is the same in all three), once as
     a worker process (``EPHEMERA_WORKER_MODE=processes``, the default on more than one
     core) and once as a thread beside the API (``threads``),
     the capture and goldens uploaded over HTTP, R tasks submitted at once and polled every
     20 ms until all succeeded; then R more polled every 0.5 s, since a worker thread shares
     the GIL with the API that answers the polls; then R more waited on, in order, by the
     Python client's ``wait_task`` (it follows the session's live events, as a user's client
     does): the throughput compared with the bare loop's. Task records (``started_at``,
     ``finished_at``) separate the worker's time from the queue's and HTTP's. One task
     alone, polled every 20 ms, gives the latency.

   Every result is checked: the defective region alone fails, and every score equals the bare
   loop's exactly.

2. Tiny tasks (``sample-sleep`` with ``seconds=0``: one small output, then success), the
   queue's own overhead: N submitted at once over HTTP to the worker-process server (one
   worker) until all succeeded; and in this process, ``store.submit_task`` N times, then
   ``Worker.run_one`` until the queue is empty.

Times are wall-clock; megapixels are 10^6 pixels of the capture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

import httpx2 as httpx

from bench.rows import Row, print_rows
from bench.transfer import Server, remove_run_dir, start_ephemera
from ephemera import Settings
from ephemera.models import Artifact, Claim, NewOutput, Task
from ephemera.processors import Registry
from ephemera.processors.roi_compare import RoiCompare, RoiCompareParams
from ephemera.store import Store
from ephemera.testing import MemoryTaskContext
from ephemera.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
API = "/api/v1"
MiB = 1024 * 1024
TINY_PROCESSOR = "sample-sleep"  # of tests/plugins/sample, in the test environment
# What the benchmark's stores and server enable: entry-point processors run only when named.
PROCESSORS = ["roi-compare", TINY_PROCESSOR]

IMAGE_SIZE = (4000, 3000)  # width, height: 12 megapixels
GRID = (10, 5)  # 50 regions
REGION_SIZE = (300, 240)
SEED = 20261122
GOLDEN_SCALE = 1.25  # goldens larger than the regions: every one is resized
GOLDEN_GAIN = 0.9  # and relit, which the scoring normalises away
GOLDEN_OFFSET = 4.0
DEFECT_REGION = "r17"  # a missing part here: this region, and only this one, must fail
# As in tests/unit/test_roi_compare.py: between the clean scores and the defect scores for
# goldens resized and relit.
THRESHOLDS = {"ncc": 0.95, "ssim": 0.9, "hist-cosine": 0.93}
METHODS = list(THRESHOLDS)

THROUGHPUT_AIM = 0.9
# How `ephemera serve` runs its worker, each measured: the default first.
MODES = ("processes", "threads")
POLL_S = 0.02
SPARSE_POLL_S = 0.5  # a second batch, polled rarely: what the 20 ms polling costs
TASK_TIMEOUT_S = 600
TERMINAL = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------------------- machine


def print_machine(data_dir: Path) -> None:
    import cv2
    import numpy as np

    from bench import transfer

    transfer.print_machine(
        data_dir,
        {
            "SQLite": sqlite3.sqlite_version,
            "OpenCV": f"{cv2.__version__} ({cv2.getNumThreads()} threads), NumPy {np.__version__}",
            "client": f"httpx2 {httpx.__version__}",
            "load avg": f"{_loadavg()} (1, 5, 15 min) at the start",
        },
    )


def _loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ---------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """The capture and goldens as PNG bytes, and the regions to inspect."""

    capture: bytes
    goldens: dict[str, bytes]  # region name -> golden PNG
    boxes: dict[str, dict[str, int]]
    methods: dict[str, str]
    width: int
    height: int
    build_s: float

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def names(self) -> list[str]:
        return list(self.boxes)

    def params(self, capture_id: str, golden_ids: Mapping[str, str]) -> dict[str, Any]:
        regions = [
            {
                "name": name,
                "box": self.boxes[name],
                "goldens": [golden_ids[name]],
                "method": self.methods[name],
                "threshold": THRESHOLDS[self.methods[name]],
            }
            for name in self.names
        ]
        return {"capture": capture_id, "regions": regions}

    def memory_inputs(self) -> dict[str, tuple[str, bytes]]:
        inputs = {"capture": ("capture.png", self.capture)}
        for name, data in self.goldens.items():
            inputs[f"golden-{name}"] = (f"golden-{name}.png", data)
        return inputs


def build_workload() -> Workload:
    from tests.images import inspection_scene, png

    start = time.perf_counter()
    scene = inspection_scene(size=IMAGE_SIZE, grid=GRID, region_size=REGION_SIZE, seed=SEED)
    capture = png(scene.with_defect(DEFECT_REGION, "missing"))
    goldens = {
        name: png(scene.golden(name, scale=GOLDEN_SCALE, gain=GOLDEN_GAIN, offset=GOLDEN_OFFSET))
        for name in scene.boxes
    }
    return Workload(
        capture=capture,
        goldens=goldens,
        boxes={name: scene.box(name) for name in scene.boxes},
        methods={name: METHODS[i % len(METHODS)] for i, name in enumerate(scene.boxes)},
        width=IMAGE_SIZE[0],
        height=IMAGE_SIZE[1],
        build_s=time.perf_counter() - start,
    )


def check_result(result: Mapping[str, Any] | None, workload: Workload, label: str) -> list[str]:
    """The defective region alone fails, every region was scored."""
    if not result:
        return [f"{label}: no result"]
    regions = result.get("regions") or []
    problems = []
    if [r["name"] for r in regions] != workload.names:
        expected = len(workload.names)
        problems.append(f"{label}: {len(regions)} regions in the result, expected {expected}")
    failed = sorted(r["name"] for r in regions if not r["passed"])
    if failed != [DEFECT_REGION]:
        problems.append(f"{label}: regions failing {failed}, expected only {DEFECT_REGION}")
    if result.get("passed") is not False:
        problems.append(f"{label}: result passed = {result.get('passed')}, expected False")
    return problems


def scores(result: Mapping[str, Any] | None) -> dict[str, float]:
    return {r["name"]: float(r["score"]) for r in (result or {}).get("regions", [])}


def check_scores(
    result: Mapping[str, Any] | None, reference: dict[str, float], label: str
) -> list[str]:
    got = scores(result)
    differ = {n: (got.get(n), s) for n, s in reference.items() if got.get(n) != s}
    if not differ:
        return []
    name, (mine, bare) = next(iter(differ.items()))
    return [
        f"{label}: {len(differ)} scores differ from the bare loop's, e.g. {name}: {mine} vs {bare}"
    ]


# ---------------------------------------------------------------------------- bare loop


@dataclass
class BareResult:
    seconds: list[float]
    result: dict[str, Any]
    outputs: dict[str, bytes]


def _rate(seconds: float, workload: Workload) -> str:
    """One task's time, and the rates it makes."""
    mp = workload.megapixels
    return f"{seconds:6.3f} s  {1 / seconds:5.2f} tasks/s  {mp / seconds:5.1f} MP/s"


def bench_bare(workload: Workload, repeat: int) -> BareResult:
    processor = RoiCompare()
    registry = Registry([processor])
    params = workload.params("capture", {n: f"golden-{n}" for n in workload.names})
    seconds: list[float] = []
    result: dict[str, Any] = {}
    outputs: dict[str, bytes] = {}
    for i in range(repeat):
        ctx = MemoryTaskContext(workload.memory_inputs())
        model = registry.validate("roi-compare", params, ctx.inputs)
        assert isinstance(model, RoiCompareParams)
        start = time.perf_counter()
        result = processor.run(ctx, model)
        seconds.append(time.perf_counter() - start)
        outputs = ctx.outputs
        size = sum(len(b) for b in outputs.values()) / MiB
        print(
            f"  run {i + 1}: {_rate(seconds[-1], workload)}  "
            f"({len(outputs)} outputs, {size:.1f} MiB)"
        )
    return BareResult(seconds, result, outputs)


# ---------------------------------------------------------------------------- library


class _TimedReader:
    """A blob stream whose reads are added to a timer (the worker reads inputs whole)."""

    def __init__(self, stream: BinaryIO, spent: dict[str, float]) -> None:
        self._stream = stream
        self._spent = spent

    def read(self, size: int = -1) -> bytes:
        start = time.perf_counter()
        try:
            return self._stream.read(size)
        finally:
            self._spent["read inputs"] += time.perf_counter() - start

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _TimedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TimedStore(Store):
    """A ``Store`` adding up the time of the calls a worker makes, by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @classmethod
    def open_dir(cls, data_dir: Path) -> TimedStore:
        settings = Settings(data_dir=data_dir, scheduled_cleanup=False, processors=PROCESSORS)
        store = cls.open(settings)
        assert isinstance(store, TimedStore)
        return store

    def reset(self) -> None:
        self.spent.clear()
        self.calls.clear()

    @contextlib.contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent[kind] += time.perf_counter() - start
            self.calls[kind] += 1

    def claim_task(
        self,
        worker: str,
        processors: Sequence[str] | None = None,
        *,
        ttl_s: float | None = None,
    ) -> Claim | None:
        with self._timed("claim"):
            return super().claim_task(worker, processors, ttl_s=ttl_s)

    def heartbeat_task(
        self,
        task_id: str,
        claim_id: str,
        *,
        progress: tuple[int, int | None] | None = None,
        ttl_s: float | None = None,
        progress_steps: Sequence[tuple[int, int | None]] = (),
    ) -> datetime:
        with self._timed("heartbeat"):
            return super().heartbeat_task(
                task_id, claim_id, progress=progress, ttl_s=ttl_s, progress_steps=progress_steps
            )

    def complete_task(
        self,
        task_id: str,
        claim_id: str,
        result: Mapping[str, Any] | None = None,
        *,
        progress_steps: Sequence[tuple[int, int | None]] = (),
    ) -> Task:
        with self._timed("complete"):
            return super().complete_task(task_id, claim_id, result, progress_steps=progress_steps)

    def open_task_input(
        self, task_id: str, claim_id: str, artifact_id: str
    ) -> tuple[Artifact, BinaryIO]:
        with self._timed("read inputs"):
            artifact, stream = super().open_task_input(task_id, claim_id, artifact_id)
        return artifact, cast(BinaryIO, _TimedReader(stream, self.spent))

    def put_task_outputs(
        self, task_id: str, claim_id: str, outputs: Sequence[NewOutput]
    ) -> list[Artifact]:
        # Called by the worker's output thread, in batches, while the processor goes on.
        with self._timed("write outputs (background)"):
            return super().put_task_outputs(task_id, claim_id, outputs)

    def put_task_output(
        self,
        task_id: str,
        claim_id: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        name: str,
        kind: str = "output",
        content_type: str | None = None,
        chunk_size: int = 1024 * 1024,
    ) -> Artifact:
        with self._timed("write outputs"):
            return super().put_task_output(
                task_id,
                claim_id,
                data,
                name=name,
                kind=kind,
                content_type=content_type,
                chunk_size=chunk_size,
            )


@dataclass
class LibraryRoi:
    seconds: list[float]
    parts: list[dict[str, float]]  # per run: seconds by kind of store call
    calls: dict[str, int]
    problems: list[str]

    def part_median(self, kind: str) -> float:
        return statistics.median(p.get(kind, 0.0) for p in self.parts)


def bench_library_roi(
    workload: Workload, repeat: int, data_dir: Path, reference: dict[str, float]
) -> LibraryRoi:
    store = TimedStore.open_dir(data_dir)
    problems: list[str] = []
    seconds: list[float] = []
    parts: list[dict[str, float]] = []
    calls: dict[str, int] = {}
    with store:
        goldens = store.create_session(label="goldens")
        station = store.create_session(label="station")
        gsid, sid = goldens.session.id, station.session.id
        capture = store.put_artifact(sid, workload.capture, name="capture.png")
        golden_ids = {
            name: store.put_artifact(gsid, data, name=f"golden-{name}.png", kind="golden").id
            for name, data in workload.goldens.items()
        }
        inputs: list[str | tuple[str, str]] = [capture.id]
        inputs += [(gsid, golden_ids[n]) for n in workload.names]
        params = workload.params(capture.id, golden_ids)
        worker = Worker(store, name="bench-library")
        for i in range(repeat):
            task = store.submit_task(
                sid, "roi-compare", inputs, params, credentials={gsid: goldens.token}
            )
            store.reset()
            start = time.perf_counter()
            ran = worker.run_one()
            seconds.append(time.perf_counter() - start)
            parts.append(dict(store.spent))
            calls = dict(store.calls)
            done = store.get_task(sid, task.id)
            label = f"library run {i + 1}"
            if not ran or done.state != "succeeded":
                problems.append(f"{label}: task {done.state}: {done.error}")
                continue
            problems += check_result(done.result, workload, label)
            problems += check_scores(done.result, reference, label)
            if len(done.outputs) != 2 * len(workload.names):
                problems.append(
                    f"{label}: {len(done.outputs)} outputs, expected {2 * len(workload.names)}"
                )
            p = parts[-1]
            print(
                f"  run {i + 1}: {_rate(seconds[-1], workload)}  (read inputs "
                f"{p.get('read inputs', 0) * 1e3:.0f} ms, write outputs in the background "
                f"{p.get('write outputs (background)', 0) * 1e3:.0f} ms, claim+heartbeats+complete "
                f"{_db_s(p) * 1e3:.0f} ms)"
            )
    return LibraryRoi(seconds, parts, calls, problems)


def _db_s(parts: Mapping[str, float]) -> float:
    return sum(parts.get(k, 0.0) for k in ("claim", "heartbeat", "complete"))


def fsync_files(outputs: Mapping[str, bytes], directory: Path) -> float:
    """Write ``outputs`` as plain files the way the blob store commits one: staged, fsynced,
    renamed into place, the directory fsynced. Returns the seconds taken."""
    staging, final = directory / "staging", directory / "final"
    staging.mkdir(parents=True)
    final.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    start = time.perf_counter()
    for name, data in outputs.items():
        part = staging / f"{name}.part"
        fd = os.open(part, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, final / name)
        dfd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- the server


def start_server(run_dir: Path, workers: int, mode: str) -> tuple[Server, str]:
    """``ephemera serve`` with ``workers`` workers (``mode``: processes or threads) and no
    scheduled cleanup."""
    env = {
        "EPHEMERA_WORKERS": str(workers),
        "EPHEMERA_WORKER_MODE": mode,
        "EPHEMERA_SCHEDULED_CLEANUP": "false",
        "EPHEMERA_PROCESSORS": json.dumps(PROCESSORS),
    }
    return start_ephemera(run_dir, f"ephemera-{mode}", env=env)


def server_problems(run_dir: Path) -> list[str]:
    """Errors and tracebacks the servers logged."""
    problems = []
    for log in sorted(run_dir.glob("ephemera-*.stderr")):
        text = log.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if " ERROR " in ln or ln.startswith("Traceback")]
        problems += [f"{log.stem} log: {ln[:200]}" for ln in bad[:10]]
    return problems


class Api:
    """The HTTP API through one keep-alive client."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base + API, timeout=120)

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def _json(self, r: httpx.Response, expected: int, what: str) -> dict[str, Any]:
        if r.status_code != expected:
            raise RuntimeError(f"{what} answered {r.status_code}: {r.text[:500]}")
        body: dict[str, Any] = r.json()
        return body

    def new_session(self, admin_key: str, label: str) -> tuple[str, str]:
        r = self.client.post("/sessions", json={"label": label}, headers=self._auth(admin_key))
        body = self._json(r, 201, "creating a session")
        return str(body["id"]), str(body["token"])

    def upload(self, sid: str, token: str, name: str, data: bytes, kind: str = "input") -> str:
        headers = {**self._auth(token), "Content-Type": "application/octet-stream"}
        r = self.client.post(
            f"/sessions/{sid}/artifacts",
            params={"name": name, "kind": kind},
            content=data,
            headers=headers,
        )
        return str(self._json(r, 201, f"uploading {name}")["id"])

    def submit(self, sid: str, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        r = self.client.post(f"/sessions/{sid}/tasks", json=dict(body), headers=self._auth(token))
        return self._json(r, 201, "submitting a task")

    def task(self, sid: str, token: str, task_id: str) -> dict[str, Any]:
        r = self.client.get(f"/sessions/{sid}/tasks/{task_id}", headers=self._auth(token))
        return self._json(r, 200, "reading a task")

    def tasks(self, sid: str, token: str, state: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            q: dict[str, Any] = {"limit": 1000}
            if state:
                q["state"] = state
            if cursor:
                q["cursor"] = cursor
            r = self.client.get(f"/sessions/{sid}/tasks", params=q, headers=self._auth(token))
            page = self._json(r, 200, "listing tasks")
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items


# Wall-clock time of a perf_counter reading: task records carry server wall-clock times.
WALL_OFFSET = time.time() - time.perf_counter()


def _wall(record: Mapping[str, Any], key: str) -> float:
    return datetime.fromisoformat(str(record[key])).timestamp() - WALL_OFFSET


@dataclass
class Submitted:
    """Tasks submitted over HTTP: perf_counter times of the first POST, the last 201, and
    when the client saw each task finished; and the final task records."""

    first_post: float
    last_created: float
    seen: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)  # duration of each GET of a task

    @property
    def wall_s(self) -> float:
        return max(self.seen) - self.first_post

    @property
    def server_s(self) -> float:
        """First POST -> last finished_at: free of the client's polling lag."""
        return max(self.times("finished_at")) - self.first_post

    def worker_s(self) -> list[float]:
        """started_at -> finished_at of each task."""
        pairs = zip(self.times("started_at"), self.times("finished_at"), strict=True)
        return [f - s for s, f in pairs]

    def times(self, key: str) -> list[float]:
        return [_wall(r, key) for r in self.records]


def submit_and_wait(
    api: Api, sid: str, token: str, bodies: Sequence[Mapping[str, Any]], poll_s: float = POLL_S
) -> Submitted:
    """Submit all bodies back to back, then poll the oldest unfinished task every ``poll_s``
    (one worker runs them in order) until every one has ended."""
    first_post = time.perf_counter()
    ids = [str(api.submit(sid, token, body)["id"]) for body in bodies]
    out = Submitted(first_post, time.perf_counter())
    pending = list(ids)
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while pending:
        start = time.perf_counter()
        record = api.task(sid, token, pending[0])
        out.polls.append(time.perf_counter() - start)
        if record["state"] in TERMINAL:
            out.seen.append(time.perf_counter())
            out.records.append(record)
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"task {pending[0]} still {record['state']} after {TASK_TIMEOUT_S} s"
            )
        time.sleep(poll_s)
    return out


def submit_and_follow(
    api: Api, sid: str, token: str, bodies: Sequence[Mapping[str, Any]]
) -> Submitted:
    """Submit all bodies back to back, then wait for each, in order, as a user of the Python
    client does: ``Client.wait_task`` follows the session's live events (no polling)."""
    from ephemera.client import Client

    first_post = time.perf_counter()
    ids = [str(api.submit(sid, token, body)["id"]) for body in bodies]
    out = Submitted(first_post, time.perf_counter())
    with Client(api.base, token) as client:
        for task_id in ids:
            client.wait_task(sid, task_id, timeout_s=TASK_TIMEOUT_S)
            out.seen.append(time.perf_counter())
    out.records = [api.task(sid, token, task_id) for task_id in ids]
    return out


# ---------------------------------------------------------------------------- roi over HTTP


@dataclass
class ServerRoi:
    cold: Submitted  # the server's first task, alone
    batch: Submitted  # R at once
    sparse: Submitted  # R at once, polled every SPARSE_POLL_S
    followed: Submitted  # R at once, waited on by the Python client (live events)
    warm: Submitted  # one alone, after the batches
    upload_s: float
    problems: list[str]


def _list_ms(values: Sequence[float]) -> str:
    return ", ".join(f"{v * 1e3:.0f}" for v in values)


def bench_server_roi(
    api: Api, admin_key: str, workload: Workload, repeat: int, reference: dict[str, float]
) -> ServerRoi:
    gsid, gtoken = api.new_session(admin_key, "goldens")
    sid, token = api.new_session(admin_key, "station")
    start = time.perf_counter()
    capture_id = api.upload(sid, token, "capture.png", workload.capture)
    golden_ids = {
        name: api.upload(gsid, gtoken, f"golden-{name}.png", data, kind="golden")
        for name, data in workload.goldens.items()
    }
    upload_s = time.perf_counter() - start
    body = {
        "processor": "roi-compare",
        "inputs": [
            capture_id,
            *({"session_id": gsid, "artifact_id": golden_ids[n]} for n in workload.names),
        ],
        "params": workload.params(capture_id, golden_ids),
        "reference_tokens": {gsid: gtoken},
    }
    print(f"  uploaded the capture and {len(golden_ids)} goldens in {upload_s:.2f} s")
    cold = submit_and_wait(api, sid, token, [body])
    print(f"  first task of the server, alone: {cold.wall_s:6.3f} s submit -> succeeded seen")
    batch = submit_and_wait(api, sid, token, [body] * repeat)
    print(
        f"  {repeat} at once: {batch.wall_s:6.3f} s first submit -> last succeeded seen = "
        f"{_rate(batch.wall_s / repeat, workload)} per task"
    )
    print(f"    worker time per task (records): {_list_ms(batch.worker_s())} ms")
    sparse = submit_and_wait(api, sid, token, [body] * repeat, SPARSE_POLL_S)
    print(
        f"  {repeat} at once, polled every {SPARSE_POLL_S} s: {sparse.server_s:6.3f} s first "
        f"submit -> last finished_at = {_rate(sparse.server_s / repeat, workload)} per task"
    )
    print(f"    worker time per task (records): {_list_ms(sparse.worker_s())} ms")
    followed = submit_and_follow(api, sid, token, [body] * repeat)
    print(
        f"  {repeat} at once, waited on by the Python client (live events): "
        f"{followed.wall_s:6.3f} s first submit -> last succeeded seen = "
        f"{_rate(followed.wall_s / repeat, workload)} per task"
    )
    print(f"    worker time per task (records): {_list_ms(followed.worker_s())} ms")
    warm = submit_and_wait(api, sid, token, [body])
    print(f"  one task alone (warm): {warm.wall_s:6.3f} s submit -> succeeded seen")
    problems: list[str] = []
    runs = (
        ("cold", cold),
        ("batch", batch),
        ("sparse batch", sparse),
        ("followed batch", followed),
        ("warm", warm),
    )
    for label, run in runs:
        for i, record in enumerate(run.records):
            name = f"server {label} task {i + 1}"
            if record["state"] != "succeeded":
                problems.append(f"{name}: {record['state']}: {record.get('error')}")
                continue
            problems += check_result(record["result"], workload, name)
            problems += check_scores(record["result"], reference, name)
            if len(record["outputs"]) != 2 * len(workload.names):
                problems.append(
                    f"{name}: {len(record['outputs'])} outputs, expected {2 * len(workload.names)}"
                )
    return ServerRoi(cold, batch, sparse, followed, warm, upload_s, problems)


# ---------------------------------------------------------------------------- tiny tasks

TINY_PARAMS: dict[str, Any] = {"seconds": 0}
TINY: dict[str, Any] = {"processor": TINY_PROCESSOR, "params": TINY_PARAMS}


@dataclass
class TinyHttp:
    n: int
    submit_s: float
    wall_s: float
    server_s: float  # first created_at -> last finished_at, from the records
    problems: list[str]


def bench_tiny_http(api: Api, admin_key: str, n: int) -> TinyHttp:
    sid, token = api.new_session(admin_key, "tiny")
    problems: list[str] = []
    first_post = time.perf_counter()
    ids = [str(api.submit(sid, token, TINY)["id"]) for _ in range(n)]
    submitted = time.perf_counter()
    # One worker runs them oldest first: when the last has ended, all have. Checked below.
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while api.task(sid, token, ids[-1])["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"tiny tasks not done after {TASK_TIMEOUT_S} s")
        time.sleep(POLL_S)
    seen = time.perf_counter()
    records = api.tasks(sid, token)
    succeeded = [r for r in records if r["state"] == "succeeded"]
    if len(succeeded) != n:
        states: dict[str, int] = defaultdict(int)
        for r in records:
            states[r["state"]] += 1
        problems.append(f"tiny over HTTP: {len(succeeded)} of {n} succeeded ({dict(states)})")
    server_s = float("nan")
    if succeeded:
        created = min(_wall(r, "created_at") for r in records)
        server_s = max(_wall(r, "finished_at") for r in succeeded) - created
    listed = len(api.tasks(sid, token, "succeeded"))
    if listed != len(succeeded):
        problems.append(f"tiny over HTTP: ?state=succeeded listed {listed}, not {len(succeeded)}")
    result = TinyHttp(n, submitted - first_post, seen - first_post, server_s, problems)
    print(
        f"  HTTP: {n} submitted in {result.submit_s:.2f} s, all succeeded after "
        f"{result.wall_s:.2f} s = {n / result.wall_s:.1f} tasks/s "
        f"({result.wall_s / n * 1e3:.1f} ms per task)"
    )
    return result


@dataclass
class TinyLibrary:
    n: int
    submit_s: float
    drain_s: float
    spent: dict[str, float]
    problems: list[str]


def bench_tiny_library(n: int, data_dir: Path) -> TinyLibrary:
    store = TimedStore.open_dir(data_dir)
    problems: list[str] = []
    with store:
        sid = store.create_session(label="tiny").session.id
        _ = store.processors  # load the registry (entry points) before timing
        start = time.perf_counter()
        for _ in range(n):
            store.submit_task(sid, TINY_PROCESSOR, [], TINY_PARAMS)
        submit_s = time.perf_counter() - start
        worker = Worker(store, name="bench-tiny")
        store.reset()
        start = time.perf_counter()
        ran = 0
        while worker.run_one():
            ran += 1
        drain_s = time.perf_counter() - start
        spent = dict(store.spent)
        succeeded = 0
        cursor: str | None = None
        while True:
            page = store.list_tasks(sid, state="succeeded", cursor=cursor, limit=1000)
            succeeded += len(page.items)
            cursor = page.next_cursor
            if not cursor:
                break
        if ran != n or succeeded != n:
            problems.append(f"tiny in-process: ran {ran}, {succeeded} succeeded, of {n}")
    print(
        f"  library: {n} submit_task in {submit_s:.2f} s = {n / submit_s:.0f}/s; "
        f"Worker.run_one x {ran} in {drain_s:.2f} s = {n / drain_s:.0f}/s"
    )
    return TinyLibrary(n, submit_s, drain_s, spent, problems)


# ---------------------------------------------------------------------------- summary


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_summary(
    workload: Workload,
    repeat: int,
    bare: BareResult,
    library: LibraryRoi,
    servers: Mapping[str, ServerRoi],
    fsync_s: list[float],
    tiny_http: TinyHttp,
    tiny_lib: TinyLibrary,
) -> None:
    mp = workload.megapixels
    nout = len(bare.outputs)
    bare_row = repeat / sum(bare.seconds)  # R back to back, like the others
    lib_row = repeat / sum(library.seconds)
    print()
    print(
        f"== Summary: roi-compare on a {workload.width}x{workload.height} capture ({mp:.1f} MP), "
        f"{len(workload.boxes)} regions, {nout} PNG outputs per task; R = {repeat}"
    )
    print(
        f"   per-run rates are best (median) of {repeat}; 'in a row' = R tasks back to back, "
        "R / total time"
    )
    widths = (44, 15, 15, 15, 9, 16)

    def row(*cells: str) -> None:
        text = "".join(
            f"{c:<{w}}" if i in (0, 5) else f"{c:>{w}}  " if i == 4 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print("  " + text.rstrip())

    def pair(values: Sequence[float], fmt: str) -> str:
        return f"{max(values):{fmt}} ({_med(values):{fmt}})"

    def rate_row(label: str, rate: float, aim: str = "") -> None:
        row(label, f"{rate:.2f}", f"{mp * rate:.1f}", f"{1 / rate:.2f}", f"{rate / bare_row:.2f}",
            aim)  # fmt: skip

    rates = [1 / s for s in bare.seconds]
    row("", "tasks/s", "MP/s", "s/task", "vs bare", "aim")
    print("  " + "-" * (sum(widths) + 2))
    row("bare loop, per run", pair(rates, ".2f"), pair([mp * r for r in rates], ".1f"),
        f"{min(bare.seconds):.2f} ({_med(bare.seconds):.2f})", "", "")  # fmt: skip
    rate_row(f"bare loop, {repeat} in a row", bare_row)
    rate_row(f"library in-process, {repeat} in a row", lib_row)
    for mode, server in servers.items():
        eph_row = repeat / server.followed.wall_s
        verdict = "ok" if eph_row / bare_row >= THROUGHPUT_AIM else "MISSED"
        rate_row(f"serve ({mode}), {repeat} at once, client waits", eph_row,
                 f">= {THROUGHPUT_AIM} {verdict}")  # fmt: skip
        rate_row(f"serve ({mode}), {repeat} at once, poll 20 ms", repeat / server.batch.wall_s)
        rate_row(f"serve ({mode}), {repeat} at once, poll {SPARSE_POLL_S:g} s (*)",
                 repeat / server.sparse.server_s)  # fmt: skip
    print(
        f"  (*) first POST -> last finished_at from the task records, so the client's poll lag "
        f"(up to {SPARSE_POLL_S:g} s) is left out; 'client waits': the Python client's "
        "wait_task, which follows the session's live events"
    )
    for mode, server in servers.items():
        print(
            f"  one task alone over HTTP, {mode} (submit -> succeeded seen, poll 20 ms): "
            f"{server.warm.wall_s:.2f} s warm, {server.cold.wall_s:.2f} s as the server's first"
        )

    # Where the time goes: each line adds its difference to the line above; means over R.
    ms = 1e3
    bare_task = sum(bare.seconds) / repeat
    lib_task = sum(library.seconds) / repeat

    def part(kind: str) -> float:
        return sum(p.get(kind, 0.0) for p in library.parts) / repeat

    read_s, write_s = part("read inputs"), part("write outputs")
    background_s = part("write outputs (background)")
    db_s = part("claim") + part("heartbeat") + part("complete")
    own_s = lib_task - read_s - write_s - db_s
    nin = len(workload.goldens) + 1

    def line(label: str, value: float, delta: float | None = None, note: str = "") -> None:
        more = "" if delta is None else f"{delta * ms:+8.0f}"
        tail = f"   {note}" if note else ""
        print(f"    {label:<62}{value * ms:7.0f}{more:>8}{tail}".rstrip())

    print()
    print(f"  Where the time goes, per task (ms, means of {repeat}); + = more than the line above")
    line("bare loop: decode, crop, resize, score, PNG-encode", bare_task)
    line("library in-process, Worker.run_one (claim -> complete)", lib_task, lib_task - bare_task)
    line(f"  reading {nin} inputs from disk (lookup, open, read)", read_s)
    line(
        f"  writing {nout} PNG outputs, on the processor's thread",
        write_s,
        note=f"(the same files, same fsyncs, no DB: {_med(fsync_s) * ms:.0f})",
    )
    line(
        "  (the same, on the worker's output thread, overlapping the rest)",
        background_s,
        note="(staged, fsynced, renamed; a transaction per batch)",
    )
    beats = library.calls.get("heartbeat", 0)
    line(f"  database: claim, {beats} progress heartbeats, complete", db_s)
    line(
        "  the processor's own work and the wait for the last outputs (the rest)",
        own_s,
        note=f"(bare: {bare_task * ms:.0f})",
    )
    for mode, server in servers.items():
        batch, sparse = server.batch, server.sparse
        w_sparse = statistics.fmean(sparse.worker_s())
        w_batch = statistics.fmean(batch.worker_s())
        eph_task = batch.wall_s / repeat
        started, finished = batch.times("started_at"), batch.times("finished_at")
        handoff = [started[i + 1] - finished[i] for i in range(len(started) - 1)]
        first_wait = started[0] - batch.first_post
        poll_lag = max(batch.seen) - finished[-1]
        line(
            f"serve ({mode}) worker, started_at -> finished_at, poll {SPARSE_POLL_S:g} s",
            w_sparse,
            w_sparse - lib_task,
        )
        line(
            f"serve ({mode}) worker, started_at -> finished_at, poll 20 ms",
            w_batch,
            w_batch - w_sparse,
            note=f"({len(batch.polls)} GETs of the running task, "
            f"{_med(batch.polls) * ms:.1f} ms each)",
        )
        line(
            f"serve ({mode}), first POST -> last succeeded seen, / R (poll 20 ms)",
            eph_task,
            eph_task - w_batch,
            note=f"(first POST -> started {first_wait * ms:.0f}, hand-offs "
            f"{_med(handoff) * ms if handoff else 0:.0f} each, poll lag {poll_lag * ms:.0f})",
        )
        print(
            f"    => serve ({mode}) - bare = {(eph_task - bare_task) * ms:.0f} ms per task: "
            f"outputs {write_s * ms:.0f}, inputs {read_s * ms:.0f}, database {db_s * ms:.0f}, "
            f"polling {(w_batch - w_sparse) * ms:.0f}, queue/HTTP {(eph_task - w_batch) * ms:.0f}, "
            f"other {(own_s - bare_task + w_sparse - lib_task) * ms:.0f}"
        )

    # Tiny tasks.
    n = tiny_http.n
    lib_n = tiny_lib.n
    print()
    print(
        f"== Summary: tiny tasks (sample-sleep, seconds=0: one small output each); "
        f"N = {n}, the worker-process server (EPHEMERA_WORKERS=1)"
    )
    widths2 = (56, 12, 12)

    def row2(*cells: str) -> None:
        text = "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths2, strict=True))
        )
        print("  " + text.rstrip())

    row2("", "tasks/s", "ms/task")
    print("  " + "-" * (sum(widths2) + 2))
    for label, count, seconds in (
        ("HTTP: N POSTs, one client (worker draining meanwhile)", n, tiny_http.submit_s),
        ("HTTP: first POST -> all succeeded seen", n, tiny_http.wall_s),
        ("server records: first created_at -> last finished_at", n, tiny_http.server_s),
        ("library: store.submit_task, N in a row", lib_n, tiny_lib.submit_s),
        ("library: Worker.run_one (claim + run + complete)", lib_n, tiny_lib.drain_s),
    ):
        row2(label, f"{count / seconds:.1f}", f"{seconds / count * 1e3:.2f}")
    sp = tiny_lib.spent
    rest = tiny_lib.drain_s - sum(sp.values())
    print(
        f"    Worker.run_one per task: claim {sp.get('claim', 0) / lib_n * 1e3:.2f} ms, write the "
        f"output {sp.get('write outputs (background)', 0) / lib_n * 1e3:.2f} ms, complete "
        f"{sp.get('complete', 0) / lib_n * 1e3:.2f} ms, the rest {rest / lib_n * 1e3:.2f} ms"
    )
    print(
        "    SQLite (WAL, synchronous=NORMAL) takes one writer at a time: each submit, claim,\n"
        "    batch of outputs and completion is its own write transaction, and the output's\n"
        "    bytes are fsynced with their directory; that bounds these rates."
    )


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.processing", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--repeat", type=int, default=5, help="roi-compare tasks per measure (def. 5)")
    p.add_argument("--tiny", type=int, default=300, help="tiny tasks (default 300)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 50 tiny tasks")
    p.add_argument("--keep", action="store_true", help="keep the run directory in bench/out")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.tiny = 2, 50
    if args.repeat < 2 or args.tiny < 1:
        p.error("--repeat must be at least 2 and --tiny at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    problems, rows = _run(parse_args(argv))
    print_rows(rows, "scale table row")
    return 1 if problems else 0


def run(repeat: int = 5, *, tiny: int = 300, keep: bool = False) -> list[Row]:
    """Run the benchmark, printing as ``main`` does; the scale table's row: roi-compare
    through ``ephemera serve`` (worker processes) against the bare loop, in tasks/s."""
    argv = ["--repeat", str(repeat), "--tiny", str(tiny), *(["--keep"] if keep else [])]
    _, rows = _run(parse_args(argv))
    return rows


def _run(args: argparse.Namespace) -> tuple[list[str], list[Row]]:
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="processing-", dir=OUT))
    started = time.perf_counter()
    servers: list[Server] = []
    problems: list[str] = []
    rows: list[Row] = []
    try:
        problems, rows = _bench(args, run_dir, servers)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            print(f"\nkept {run_dir}")
        else:
            remove_run_dir(run_dir)
    print(f"\nload average at the end: {_loadavg()} (other work on the machine skews timings)")
    print(f"checks: {'all passed' if not problems else 'FAILED'}")
    for problem in problems:
        print(f"  - {problem}")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    return problems, rows


def _bench(
    args: argparse.Namespace, run_dir: Path, servers: list[Server]
) -> tuple[list[str], list[Row]]:
    repeat: int = args.repeat
    print_machine(run_dir)

    print(f"== Workload: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} capture, {GRID[0] * GRID[1]} regions")
    workload = build_workload()
    golden_mib = sum(len(b) for b in workload.goldens.values()) / MiB
    print(
        f"  capture PNG {len(workload.capture) / MiB:.1f} MiB, {len(workload.goldens)} goldens "
        f"({GOLDEN_SCALE}x the {REGION_SIZE[0]}x{REGION_SIZE[1]} regions) {golden_mib:.1f} MiB; "
        f"methods {'/'.join(METHODS)} in turn; missing part in {DEFECT_REGION}; "
        f"built in {workload.build_s:.1f} s"
    )
    print()

    print(f"== roi-compare, bare loop (RoiCompare().run, MemoryTaskContext), {repeat} runs")
    bare = bench_bare(workload, repeat)
    problems = check_result(bare.result, workload, "bare")
    reference = scores(bare.result)
    print()

    print(f"== roi-compare, library in-process (Store, Worker.run_one), {repeat} runs")
    library = bench_library_roi(workload, repeat, run_dir / "library-roi", reference)
    problems += library.problems
    fsync_s = [fsync_files(bare.outputs, run_dir / f"fsync-{i}") for i in range(repeat)]
    print(
        f"  the {len(bare.outputs)} outputs as plain files with fsync (file and directory): "
        + ", ".join(f"{s * 1e3:.0f}" for s in fsync_s)
        + " ms"
    )
    print()

    rois: dict[str, ServerRoi] = {}
    tiny_http: TinyHttp | None = None
    for mode in MODES:
        server, admin_key = start_server(run_dir, 1, mode)
        servers.append(server)
        print(
            f"== roi-compare, ephemera serve (pid {server.pid} on :{server.port}, "
            f"EPHEMERA_WORKERS=1, EPHEMERA_WORKER_MODE={mode}, EPHEMERA_SCHEDULED_CLEANUP=false)"
        )
        api = Api(server.base)
        try:
            rois[mode] = bench_server_roi(api, admin_key, workload, repeat, reference)
            problems += rois[mode].problems
            if tiny_http is None:
                print()
                print(f"== Tiny tasks over HTTP ({mode}), N = {args.tiny}")
                tiny_http = bench_tiny_http(api, admin_key, args.tiny)
                problems += tiny_http.problems
        finally:
            api.close()
        server.check_alive()
        # One server at a time: the other's idle worker and API take no share of the cores.
        server.stop()
        print()
    assert tiny_http is not None
    tiny_lib = bench_tiny_library(args.tiny, run_dir / "library-tiny")
    problems += tiny_lib.problems
    problems += server_problems(run_dir)

    print_summary(workload, repeat, bare, library, rois, fsync_s, tiny_http, tiny_lib)
    bare_rate = repeat / sum(bare.seconds)
    default = rois[MODES[0]]
    row = Row(
        figure="roi-compare end to end through `ephemera serve` vs the bare loop",
        size=None,
        value=repeat / default.followed.wall_s,
        unit="tasks/s",
        limit=bare_rate,
        limit_name="bare loop",
        aim=THROUGHPUT_AIM,
        higher_is_better=True,
        note=f"{MODES[0]} mode, {repeat} at once, waited on by the Python client's live "
        f"events; polled every {POLL_S * 1e3:.0f} ms: "
        f"{repeat / default.batch.wall_s / bare_rate:.2f}x; threads: "
        f"{repeat / rois['threads'].followed.wall_s / bare_rate:.2f}x",
    )
    return problems, [row]


if __name__ == "__main__":
    raise SystemExit(main())
