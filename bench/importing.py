"""Import benchmark: ``ephemera import`` against the store's own upload rate and ``cp -r``.

Run from the project root: ``.venv-test/bin/python -m bench.importing`` (trees of 2,000 and
10,000 files), ``--sizes 2000,10000,50000`` for a larger one, ``--quick`` for a smoke run.

For each size N it builds, under ``bench/out/``, a tree of N files of 1-4 KiB (random bytes,
100 per folder) and measures, ``sync`` run before each step so that no write-back is pending:

1. the physical limits: ``cp -r`` of the tree (the page cache only); ``cp -r`` followed by
   one ``sync`` (the copy made durable in one batch); and a durable copy file by file from
   ``--workers`` threads (write a temporary file, fsync, rename), which is what a store that
   says "stored" per file must at least do, and so the limit the import is held against;
2. the store's own upload rate: ``Store.put_artifact`` of every file from a thread pool of
   ``--workers`` threads, in this process, into a fresh store (the embedded default);
3. ``ephemera import TREE --new-session --json --workers W`` as a child process into another
   fresh store: its files/s (from the import alone, as its summary reports it, and for the
   whole process) and its peak RSS (``VmHWM``, sampled every 20 ms);
4. the same command again (``--session``): every file is in the ledger, so every file is
   skipped without being read; its files/s and peak RSS.

Each imported store is checked: N ready artifacts, each sha256 equal to its file's. The
importer's peak RSS at the different sizes shows whether memory grows with the number of
files; the summary gives the growth per thousand files between the smallest and largest.

With ``--remote`` (default on; ``--remote-files``, default 2,000) it also starts ``ephemera
serve`` and compares ``ephemera import --server`` against HTTP uploads of the same files
from ``--workers`` threads (httpx2 clients, one per thread, raw-body uploads with the
sha256): what the importer adds over a client that already knows what to send.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.transfer import Run, print_machine, run_timed, start_ephemera

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "importing"
PER_FOLDER = 100
MIN_SIZE = 1024
MAX_SIZE = 4096
SEED = 20261206
EXE = str(Path(sys.executable).parent / "ephemera")


@dataclass
class Tree:
    root: Path
    files: int
    bytes: int
    sha256: dict[str, str]  # relative path -> sha256


def build_tree(root: Path, count: int) -> Tree:
    rng = random.Random(SEED + count)  # noqa: S311 - reproducible test data, not secrets
    shas: dict[str, str] = {}
    total = 0
    for i in range(count):
        folder = root / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        data = rng.randbytes(rng.randint(MIN_SIZE, MAX_SIZE))
        name = f"f{i:06d}.bin"
        (folder / name).write_bytes(data)
        shas[f"{folder.name}/{name}"] = hashlib.sha256(data).hexdigest()
        total += len(data)
    return Tree(root, count, total, shas)


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed(argv: Sequence[str]) -> float:
    sync()
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def cp_r(tree: Tree, work: Path) -> tuple[float, float]:
    """Seconds for ``cp -r`` alone, and for ``cp -r`` then ``sync`` (each on a fresh copy)."""
    plain = timed(["cp", "-r", str(tree.root), str(work / "copy-1")])
    durable = timed(["sh", "-c", f"cp -r '{tree.root}' '{work / 'copy-2'}' && sync"])
    return plain, durable


def fsync_rate(tree: Tree, work: Path, workers: int) -> float:
    """Seconds to copy every file durably, one by one, from ``workers`` threads: write to a
    temporary name, fsync, rename (what a store must do per file before it says "stored")."""
    dest = work / "fsynced"
    paths = sorted(tree.sha256)
    for rel in paths:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)

    def copy(rel: str) -> None:
        data = (tree.root / rel).read_bytes()
        tmp = dest / f"{rel}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest / rel)

    sync()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(copy, paths))
    return time.perf_counter() - start


def store_rate(tree: Tree, work: Path, workers: int) -> float:
    """Seconds for ``put_artifact`` of every file from ``workers`` threads, in process."""
    from ephemera import Settings, Store

    paths = sorted(tree.sha256)
    sync()
    with Store.open(Settings(data_dir=work / "store-data")) as store:
        sid = store.create_session().session.id

        def put(rel: str) -> None:
            with open(tree.root / rel, "rb") as file:
                store.put_artifact(sid, file, name=rel.rsplit("/", 1)[1], sha256=tree.sha256[rel])

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(put, paths))
        seconds = time.perf_counter() - start
        assert store.get_session(sid).artifact_count == tree.files
    return seconds


def run_import(argv: Sequence[str]) -> tuple[Run, dict[str, Any]]:
    sync()
    run = run_timed([EXE, "import", *argv, "--json"])
    if run.returncode != 0:
        raise SystemExit(f"ephemera import exited {run.returncode}: {run.stderr[-2000:]}")
    return run, json.loads(run.stdout)


def check_store(data_dir: Path, session_id: str, tree: Tree) -> None:
    """N ready artifacts, one per file, each with its file's sha256."""
    from ephemera import Settings, Store

    with Store.open(Settings(data_dir=data_dir)) as store:
        seen: dict[str, str] = {}
        cursor = None
        while True:
            page = store.list_imports(session_id, cursor=cursor, limit=1000)
            for entry in page.items:
                seen[entry.origin.path] = entry.sha256
                assert store.get_artifact(session_id, entry.artifact_id).sha256 == entry.sha256
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if seen != tree.sha256:
            raise SystemExit("the ledger does not hold every file with its sha256")
        count = store.get_session(session_id).artifact_count
        if count != tree.files:
            raise SystemExit(f"{count} artifacts for {tree.files} files")


@dataclass
class Result:
    files: int
    kib: float
    cp_s: float
    cp_sync_s: float
    fsync_s: float
    store_s: float
    import_s: float  # the import call, from the summary
    import_process_s: float
    import_rss_mib: float
    rerun_s: float
    rerun_rss_mib: float

    def rate(self, seconds: float) -> float:
        return self.files / seconds


def measure(count: int, workers: int) -> Result:
    work = OUT / f"n{count}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        tree = build_tree(work / "tree", count)
        cp_s, cp_sync_s = cp_r(tree, work)
        fsync_s = fsync_rate(tree, work, workers)
        store_s = store_rate(tree, work, workers)
        data_dir = work / "import-data"
        # `ephemera import` never creates a store (a mistyped --data-dir must not start one).
        subprocess.run(
            [EXE, "migrate", "--data-dir", str(data_dir)], check=True, capture_output=True
        )
        common = ["--data-dir", str(data_dir), "--workers", str(workers)]
        first, summary = run_import([str(tree.root), "--new-session", *common])
        if summary["imported"] != count or summary["failed"]:
            raise SystemExit(f"the import did not import every file: {summary}")
        sid = summary["session_id"]
        again, rerun = run_import([str(tree.root), "--session", sid, *common])
        if rerun["skipped"] != count or rerun["imported"]:
            raise SystemExit(f"the rerun did not skip every file: {rerun}")
        check_store(data_dir, sid, tree)
        return Result(
            files=count,
            kib=tree.bytes / 1024,
            cp_s=cp_s,
            cp_sync_s=cp_sync_s,
            fsync_s=fsync_s,
            store_s=store_s,
            import_s=summary["duration_s"],
            import_process_s=first.seconds,
            import_rss_mib=first.peak_rss_mib,
            rerun_s=rerun["duration_s"],
            rerun_rss_mib=again.peak_rss_mib,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remote(count: int, workers: int) -> tuple[float, float, float, Run]:
    """(HTTP upload s, import s, import process s, import run) against one ``ephemera serve``."""
    import httpx2 as httpx

    work = OUT / "remote"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server, key = start_ephemera(work)
    try:
        api = f"http://127.0.0.1:{server.port}/api/v1"
        admin = {"Authorization": f"Bearer {key}"}
        tree = build_tree(work / "tree", count)
        created = httpx.post(f"{api}/sessions", json={}, headers=admin).json()
        sid, token = created["id"], created["token"]
        auth = {"Authorization": f"Bearer {token}"}
        paths = sorted(tree.sha256)
        clients = [httpx.Client(headers=auth, timeout=60) for _ in range(workers)]

        def upload(index_rel: tuple[int, str]) -> None:
            index, rel = index_rel
            client = clients[index % workers]
            name = rel.rsplit("/", 1)[1]
            with open(tree.root / rel, "rb") as file:
                answer = client.post(
                    f"{api}/sessions/{sid}/artifacts",
                    params={"name": name, "sha256": tree.sha256[rel]},
                    content=file.read(),
                )
            answer.raise_for_status()

        sync()
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(upload, enumerate(paths)))
        http_s = time.perf_counter() - start
        for client in clients:
            client.close()
        os.environ["EPHEMERA_TOKEN"] = key
        try:
            run, summary = run_import(
                [
                    str(tree.root),
                    "--new-session",
                    "--server",
                    f"http://127.0.0.1:{server.port}",
                    "--workers",
                    str(workers),
                ]
            )
        finally:
            del os.environ["EPHEMERA_TOKEN"]
        if summary["imported"] != count or summary["failed"]:
            raise SystemExit(f"the remote import did not import every file: {summary}")
        return http_s, summary["duration_s"], run.seconds, run
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def print_summary(results: list[Result], workers: int) -> None:
    print(f"== Import ({workers} workers; files of 1-4 KiB; files/s)")
    header = (
        f"{'files':>7} {'cp -r':>8} {'cp+sync':>8} {'fsync each':>10} {'store put':>10}"
        f" {'import':>8} {'imp/put':>8} {'imp/fsync':>10} {'imp/cp+sync':>12}"
        f" {'process':>8} {'rerun':>8} {'RSS MiB':>8} {'rerun RSS':>10}"
    )
    print(header)
    for r in results:
        imp = r.rate(r.import_s)
        print(
            f"{r.files:>7} {r.rate(r.cp_s):>8.0f} {r.rate(r.cp_sync_s):>8.0f}"
            f" {r.rate(r.fsync_s):>10.0f} {r.rate(r.store_s):>10.0f} {imp:>8.0f}"
            f" {imp / r.rate(r.store_s):>8.2f} {imp / r.rate(r.fsync_s):>10.2f}"
            f" {imp / r.rate(r.cp_sync_s):>12.3f} {r.rate(r.import_process_s):>8.0f}"
            f" {r.rate(r.rerun_s):>8.0f} {r.import_rss_mib:>8.1f} {r.rerun_rss_mib:>10.1f}"
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        per_k = (large.import_rss_mib - small.import_rss_mib) / ((large.files - small.files) / 1000)
        per_k_rerun = (large.rerun_rss_mib - small.rerun_rss_mib) / (
            (large.files - small.files) / 1000
        )
        print(
            f"peak RSS growth per 1,000 files ({small.files} -> {large.files}):"
            f" import {per_k:+.2f} MiB, rerun {per_k_rerun:+.2f} MiB"
        )
    print()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", default="2000,10000", help="tree sizes, comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--remote", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--remote-files", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="sizes 500,1000; remote 300")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    remote_files = args.remote_files
    if args.quick:
        sizes, remote_files = [500, 1000], 300
    OUT.mkdir(parents=True, exist_ok=True)
    print_machine(OUT)
    results = []
    for count in sizes:
        print(f"-- {count} files ...", flush=True)
        results.append(measure(count, args.workers))
    print()
    print_summary(results, args.workers)
    if args.remote:
        http_s, import_s, process_s, run = remote(remote_files, args.workers)
        n = remote_files
        print(f"== Remote import over HTTP ({n} files, {args.workers} workers; files/s)")
        print(
            f"  HTTP uploads {n / http_s:.0f}, ephemera import --server {n / import_s:.0f}"
            f" (process {n / process_s:.0f}), import/uploads {http_s / import_s:.2f},"
            f" importer peak RSS {run.peak_rss_mib:.1f} MiB"
        )
        print()


if __name__ == "__main__":
    main()
