"""S3 benchmark: what a small artifact costs in requests, and how fast a large body goes up.

Run from the project root: ``.venv-test/bin/python -m bench.s3`` (quick smoke run:
``--size-mib 64 --small 20``). The S3 server is moto (``tests/s3server.py``), started for the
run on 127.0.0.1; every figure comes from the same run.

* **Requests per small artifact**: ``Store.put_artifact`` of ``--small`` 4 KiB bodies into a
  store on SQLite and a fresh bucket, counted twice: by the client (botocore's ``before-send``,
  retries included) and by the server (the request lines moto logs meanwhile). The aim is one
  PutObject each.
* **What the commit costs under its lock**: the commit of a body of at most one part is now a
  PutObject carrying the body; before, it was a CompleteMultipartUpload of a part uploaded
  ahead of it. Both timed (median of ``COMMIT_SAMPLES``) for 4 KiB and for one whole part.
* **A large upload** (``--size-mib``, default 256) through the blob writer, parts one at a
  time in the writer's thread (``parallel_parts=0``, how it went before) and 4 in flight
  (the default), against boto3's own transfer manager (``upload_fileobj``, 4 threads, the same
  8 MiB parts) as the limit. MiB/s is 2**20 bytes a second; each variant runs ``--repeat``
  times, alternating, best kept. For each: CPU seconds of moto's process
  (``/proc/<pid>/stat``) and of this one in the same interval: on a 2-core machine moto's
  share is what it takes from the upload, and where moto's CPU nears the wall time, moto is
  the limit, not ephemera. The writer's peak ``buffered`` is checked against its bound.

moto is Python, keeps objects in its own process (it concatenates parts to complete an upload)
and shares the machine's CPUs: these figures bound what ephemera does around S3, not what a
production object store would give.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.rows import Row, print_rows
from bench.transfer import OUT, cpu_seconds, print_machine, remove_run_dir

MiB = 1024 * 1024
SMALL_SIZE = 4096
COMMIT_SAMPLES = 15
PARALLEL = 4
THROUGHPUT_AIM = 0.8  # of boto3's transfer manager on the same server
# A request line in moto's log (werkzeug): method, path, status.
_LOGGED = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.1[^"]*" (\d{3})')


@dataclass
class Upload:
    """One large upload: wall seconds, CPU seconds of moto and of this process."""

    label: str
    seconds: float
    moto_cpu: float
    own_cpu: float
    peak_buffered: int = 0

    def mib_s(self, size: int) -> float:
        return size / MiB / self.seconds


BLOCK = os.urandom(MiB)


def body(size: int) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB chunks, each different (its number leads it), made cheaply so
    the figure is the upload's, not the generator's."""
    for n in range(0, size, MiB):
        yield (n.to_bytes(8, "big") + BLOCK[8:])[: size - n]


class Moto:
    """The moto server of the run: fresh buckets, its CPU time, the requests it logged."""

    def __init__(self, run_dir: Path) -> None:
        import pytest

        from tests.s3server import S3_ENV, S3_ENV_UNSET, S3Server

        for name in S3_ENV_UNSET:
            os.environ.pop(name, None)
        os.environ.update(S3_ENV)
        self.server = S3Server(run_dir)
        try:
            self.server.start()
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise RuntimeError(str(exc)) from None
        assert self.server.process is not None
        self.pid = self.server.process.pid

    def bucket_url(self) -> str:
        return self.server.bucket_url()

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_offset(self) -> int:
        return self.server.log.stat().st_size

    def logged_since(self, offset: int) -> list[tuple[str, str, str]]:
        with self.server.log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return [(m[1], m[2], m[3]) for m in _LOGGED.finditer(text)]

    def stop(self) -> None:
        self.server.stop()


def small_uploads(moto: Moto, data_dir: Path, count: int) -> tuple[float, float]:
    """Requests per small artifact: as the client counted them, as the server logged them."""
    from ephemera import Settings, Store

    store = Store.open(Settings(data_dir=data_dir, blob_url=moto.bucket_url()))
    try:
        session = store.create_session().session
        sent: list[str] = []
        store.blobs.client().meta.events.register(  # type: ignore[attr-defined]
            "before-send.s3", lambda event_name, **_: sent.append(event_name)
        )
        offset = moto.log_offset()
        for n in range(count):
            store.put_artifact(session.id, os.urandom(SMALL_SIZE), name=f"{n}.bin")
        time.sleep(0.2)  # moto writes its log line after the answer
        logged = moto.logged_since(offset)
    finally:
        store.close()
    return len(sent) / count, len(logged) / count


def commit_costs(moto: Moto, size: int) -> tuple[float, float]:
    """Median seconds of the commit: PutObject of the body, and CompleteMultipartUpload of
    the same body uploaded as one part beforehand."""
    from ephemera.blobs.s3 import S3BlobStore

    store = S3BlobStore.from_url(moto.bucket_url())
    client, bucket = store.client(), store.bucket
    data = os.urandom(size)
    puts: list[float] = []
    completes: list[float] = []
    for n in range(COMMIT_SAMPLES):
        key = f"commit/{n}"
        start = time.perf_counter()
        client.put_object(Bucket=bucket, Key=key, Body=data)
        puts.append(time.perf_counter() - start)
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)[
            "ETag"
        ]
        start = time.perf_counter()
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]},
        )
        completes.append(time.perf_counter() - start)
        client.delete_object(Bucket=bucket, Key=key)
    return statistics.median(puts), statistics.median(completes)


def timed(moto: Moto, label: str, upload: Callable[[], int]) -> Upload:
    moto_start, own_start = moto.cpu(), time.process_time()
    start = time.perf_counter()
    peak = upload()
    seconds = time.perf_counter() - start
    return Upload(label, seconds, moto.cpu() - moto_start, time.process_time() - own_start, peak)


def writer_upload(moto: Moto, bucket_url: str, size: int, parallel: int) -> Upload:
    from ephemera.blobs.s3 import S3BlobStore

    store = S3BlobStore.from_url(bucket_url)
    store.parallel_parts = parallel
    expected = hashlib.sha256()
    for chunk in body(size):
        expected.update(chunk)

    def upload() -> int:
        writer = store.writer("bench/large")
        peak = 0
        for chunk in body(size):
            writer.write(chunk)
            peak = max(peak, writer.buffered)
        stat = writer.commit()
        if stat.size != size or writer.sha256() != expected.hexdigest():
            raise RuntimeError(f"the writer stored {stat.size} bytes, not the body")
        return peak

    label = f"{parallel} parts in flight" if parallel else "one part at a time"
    try:
        return timed(moto, label, upload)
    finally:
        if store.stat("bench/large").size != size:
            raise RuntimeError("the object stored is not the size written")
        store.delete("bench/large")


def boto3_upload(moto: Moto, bucket_url: str, size: int) -> Upload:
    """boto3's transfer manager with the writer's part size and parallelism: the limit."""
    from boto3.s3.transfer import TransferConfig

    from ephemera.blobs.s3 import S3BlobStore
    from ephemera.blobs.s3_requests import PART_SIZE

    store = S3BlobStore.from_url(bucket_url)
    config = TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=PARALLEL,
        use_threads=True,
    )

    class Stream(io.RawIOBase):
        """The same body as a file, read as the transfer manager asks."""

        def __init__(self) -> None:
            self._chunks = body(size)
            self._rest = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if not self._rest:
                self._rest = next(self._chunks, b"")
            n = min(len(buffer), len(self._rest))
            buffer[:n] = self._rest[:n]
            self._rest = self._rest[n:]
            return n

    def upload() -> int:
        store.client().upload_fileobj(
            io.BufferedReader(Stream(), MiB), store.bucket, "bench/large", Config=config
        )
        return 0

    try:
        return timed(moto, "boto3 upload_fileobj", upload)
    finally:
        if store.stat("bench/large").size != size:
            raise RuntimeError("boto3 stored an object not the size written")
        store.delete("bench/large")


def run(
    size_mib: int = 256, small_count: int = 50, repeat: int = 1, run_dir: Path | None = None
) -> list[Row]:
    """Measure on a moto server started for the call; its rows, and a report on stdout."""
    from ephemera.blobs.s3_requests import PART_SIZE

    size = size_mib * MiB
    own_dir = run_dir is None
    if run_dir is None:
        OUT.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    moto = Moto(run_dir)
    try:
        client_count, server_count = small_uploads(moto, run_dir / "data", small_count)
        costs = {n: commit_costs(moto, n) for n in (SMALL_SIZE, PART_SIZE)}
        bucket_url = moto.bucket_url()
        runs: dict[str, list[Upload]] = {}
        for _ in range(repeat):
            for upload in (
                writer_upload(moto, bucket_url, size, 0),
                writer_upload(moto, bucket_url, size, PARALLEL),
                boto3_upload(moto, bucket_url, size),
            ):
                runs.setdefault(upload.label, []).append(upload)
    finally:
        moto.stop()
        if own_dir:
            remove_run_dir(run_dir)

    best = {label: min(uploads, key=lambda u: u.seconds) for label, uploads in runs.items()}
    sequential = best["one part at a time"]
    parallel = best[f"{PARALLEL} parts in flight"]
    limit = best["boto3 upload_fileobj"]
    print(f"\nsmall artifacts ({small_count} x {SMALL_SIZE} B through Store.put_artifact):")
    print(f"  S3 requests each: {client_count:.2f} sent by the client, {server_count:.2f} seen")
    print("the commit (under the catalog's lock), median of", COMMIT_SAMPLES)
    for n, (put, complete) in costs.items():
        print(
            f"  {n:>9,} B: PutObject {put * 1000:.1f} ms "
            f"(was CompleteMultipartUpload {complete * 1000:.1f} ms)"
        )
    print(f"large upload, {size_mib} MiB, best of {repeat}:")
    for upload in best.values():
        print(
            f"  {upload.label:<22} {upload.mib_s(size):7.1f} MiB/s  {upload.seconds:6.2f} s wall;"
            f" moto CPU {upload.moto_cpu:5.2f} s ({upload.moto_cpu / upload.seconds:4.0%} of the"
            f" wall), this process {upload.own_cpu:5.2f} s"
        )
    bound = (PARALLEL + 1) * PART_SIZE

    def moto_share(upload: Upload) -> str:
        # moto serves from one interpreter: its CPU time alone caps the rate on any machine.
        cap = size / MiB / upload.moto_cpu if upload.moto_cpu else float("inf")
        return (
            f"moto on CPU {upload.moto_cpu / upload.seconds:.0%} of the wall time "
            f"(its CPU alone caps this at {cap:.0f} MiB/s)"
        )

    return [
        Row(
            "small artifact on S3: requests",
            None,
            server_count,
            "requests",
            limit=1,
            limit_name="one PutObject",
            aim=1,
            note=f"as moto logged them; the client sent {client_count:.2f} each",
        ),
        Row(
            "small artifact on S3: commit under the lock",
            None,
            costs[SMALL_SIZE][0],
            "s",
            limit=costs[SMALL_SIZE][1],
            limit_name="CompleteMultipartUpload",
            note=(
                f"a 4 KiB PutObject vs the completion it replaces; for a whole part "
                f"(8 MiB) {costs[PART_SIZE][0] * 1000:.0f} ms vs "
                f"{costs[PART_SIZE][1] * 1000:.0f} ms"
            ),
        ),
        Row(
            f"{size_mib} MiB upload to S3 (moto), {PARALLEL} parts in flight",
            None,
            parallel.mib_s(size),
            "MiB/s",
            limit=limit.mib_s(size),
            limit_name="boto3 upload_fileobj",
            aim=THROUGHPUT_AIM,
            higher_is_better=True,
            note=f"{moto_share(parallel)}; boto3's run: {moto_share(limit)}",
        ),
        Row(
            f"{size_mib} MiB upload to S3 (moto), one part at a time",
            None,
            sequential.mib_s(size),
            "MiB/s",
            limit=limit.mib_s(size),
            limit_name="boto3 upload_fileobj",
            higher_is_better=True,
            note=f"as before parallel parts; {moto_share(sequential)}",
        ),
        Row(
            f"{size_mib} MiB upload to S3: writer memory",
            None,
            parallel.peak_buffered / MiB,
            "MiB",
            limit=bound / MiB,
            limit_name=f"{PARALLEL + 1} parts",
            aim=1,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256, help="the large upload (MiB)")
    parser.add_argument("--small", type=int, default=50, help="small artifacts to count")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each large upload")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    try:
        print_machine(run_dir, {"S3": f"moto {version('moto')} server (Python, on this machine)"})
        rows = run(args.size_mib, args.small, args.repeat, run_dir)
    finally:
        remove_run_dir(run_dir)
    print_rows(rows, "S3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
