"""tus benchmark: a resumable upload in chunks against the plain streamed upload, same run.

Run from the project root: ``.venv-test/bin/python -m bench.tus`` (``make bench-tus``), or a
quick smoke run with ``--size-mib 128 --repeat 1``.

One ``ephemera serve`` on the embedded default (SQLite and a directory) takes, alternately:

* the plain upload: ``curl -T file`` to ``POST …/artifacts`` (one streamed request);
* the tus upload: a creation, then one ``curl -T chunk`` PATCH per chunk (default 64 MiB),
  each at the offset the last one answered; the chunks are cut from the same file before
  timing (page cache warm for both).

It prints each kind's throughput (MiB/s, best and median), the ratio tus/plain of the
medians (the aim is at least 0.8) and the server's peak RSS growth during each kind. Both
artifacts are checked against the source's sha256.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx2 as httpx

from bench.transfer import (
    CURL,
    OUT,
    MemoryProbe,
    Run,
    Series,
    _curl_version,
    curl_upload,
    make_input,
    print_machine,
    remove_run_dir,
    run_timed,
    start_ephemera,
)

MiB = 1024 * 1024
API = "/api/v1"
AIM = 0.8
TUS = ["-H", "Tus-Resumable: 1.0.0"]


def cut_chunks(source: Path, folder: Path, chunk: int) -> list[Path]:
    folder.mkdir()
    paths: list[Path] = []
    with source.open("rb") as f:
        while data := f.read(chunk):
            path = folder / f"{len(paths):04d}"
            path.write_bytes(data)
            paths.append(path)
    return paths


def tus_upload(base: str, auth: str, size: int, chunks: list[Path]) -> tuple[float, str]:
    """Seconds for the whole tus upload, and the artifact ID it became."""
    started = time.perf_counter()
    created = httpx.post(
        f"{base}/uploads",
        headers={
            "Authorization": auth,
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(size),
            "Upload-Metadata": "filename dHVzLmJpbg==",
        },
    )
    if created.status_code != 201:
        raise RuntimeError(f"tus creation failed: {created.status_code} {created.text}")
    # The Location is relative to the server, as tus allows.
    url = str(httpx.URL(f"{base}/uploads").join(created.headers["Location"]))
    offset = 0
    artifact_id = ""
    for chunk in chunks:
        argv = [*CURL, "-X", "PATCH", "-T", str(chunk), *TUS, "-H", f"Authorization: {auth}"]
        argv += ["-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:"]
        argv += ["-H", f"Upload-Offset: {offset}", "-D", "-", "-o", "/dev/null", url]
        run: Run = run_timed(argv)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in run.stdout.splitlines())
        }
        if run.returncode != 0 or "upload-offset" not in headers:
            raise RuntimeError(f"tus PATCH failed: {run.stdout} {run.stderr}")
        offset = int(headers["upload-offset"])
        artifact_id = headers.get("ephemera-artifact-id", "")
    if offset != size or not artifact_id:
        raise RuntimeError(f"tus upload ended at {offset} of {size} without an artifact")
    return time.perf_counter() - started, artifact_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    size = args.size_mib * MiB
    run_dir = OUT / f"tus-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    try:
        print_machine(run_dir, {"client": _curl_version()})
        source = run_dir / "source.bin"
        digest = make_input(source, size)
        chunks = cut_chunks(source, run_dir / "chunks", args.chunk_mib * MiB)
        server, key = start_ephemera(run_dir, env={"EPHEMERA_SCHEDULED_CLEANUP": "false"})
        try:
            body = {"id": "bench", "idle_timeout_s": 86400}
            created = httpx.post(
                f"{server.base}{API}/sessions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ).json()
            auth = f"Bearer {created['token']}"
            base = f"{server.base}{API}/sessions/bench"
            probe = MemoryProbe(server.pid)
            probe.start()
            plain, tus = Series(), Series()
            for i in range(args.repeat):
                for kind in ("plain", "tus") if i % 2 == 0 else ("tus", "plain"):
                    probe.before()
                    if kind == "plain":
                        run, code, text = curl_upload(
                            f"{base}/artifacts?name=plain.bin", source, [f"Authorization: {auth}"]
                        )
                        if code != 201 or json.loads(text)["sha256"] != digest:
                            raise RuntimeError(f"plain upload failed: {code} {text[:200]}")
                        plain.rates.append(args.size_mib / run.seconds)
                        plain.rss.append(probe.growth_mib())
                    else:
                        seconds, artifact_id = tus_upload(base, auth, size, chunks)
                        got = httpx.get(
                            f"{base}/artifacts/{artifact_id}", headers={"Authorization": auth}
                        ).json()
                        if got["sha256"] != digest:
                            raise RuntimeError("the tus artifact's sha256 differs from the source")
                        tus.rates.append(args.size_mib / seconds)
                        tus.rss.append(probe.growth_mib())
                    rate = (plain if kind == "plain" else tus).rates[-1]
                    print(f"  {kind:5} run {i + 1}: {rate:7.1f} MiB/s")
            ratio = statistics.median(tus.rates) / statistics.median(plain.rates)
            print()
            print(f"== {args.size_mib} MiB, tus in {args.chunk_mib} MiB chunks, embedded default")
            for label, series in (("plain POST", plain), ("tus", tus)):
                print(
                    f"  {label:10} best {series.best:7.1f} MiB/s  median {series.median:7.1f} MiB/s"
                    f"  server peak RSS +{series.peak_rss:5.1f} MiB"
                )
            verdict = "meets" if ratio >= AIM else "misses"
            print(f"  tus/plain (medians): {ratio:.2f}x ({verdict} the aim of {AIM}x)")
        finally:
            server.stop()
    finally:
        remove_run_dir(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
