"""A large download three ways, side by side: nginx alone, ephemera behind nginx, ephemera alone.

``python -m bench.download`` (quick run: ``--size-mib 64``) prints the machine, then:

1. writes a random file of ``--size-mib`` MiB and uploads it to an ``ephemera serve`` started
   with ``EPHEMERA_ACCEL_REDIRECT_PREFIX``; the stored blob is hard-linked into a folder that
   nginx serves as it is, so all three read the same inode (and the same page cache);
2. starts nginx (Debian's, as a child, tests/nginx.py: the configuration of
   docs/operations.md, ``sendfile on``) proxying to that server;
3. downloads once each way untimed, hashing the body (status, size and sha256 must be right;
   this also warms the page cache), then ``--repeat`` timed ``curl -o /dev/null`` downloads
   each way, alternating, each checked for status and size:

   - **nginx**: ``GET /direct/<file>``, the file served with sendfile: the limit;
   - **accel**: ``GET /api/v1/.../content`` through nginx: ephemera checks the token, the
     artifact, its integrity flag and the file's size, answers ``X-Accel-Redirect``, nginx
     sends the file from its internal location;
   - **stream**: the same request to ephemera directly: uvicorn streams the body through
     sha256 verification (``iter_verified``), the default path.

The summary gives MiB/s (2^20 bytes/s) as median and best, and the median ratios against nginx
from the same run (aim: accel >= 0.5x). Everything lives in ``bench/out/`` and is removed at
the end; servers listen on free ports of 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx2 as httpx

from bench.rows import Row, print_rows
from bench.transfer import (
    API,
    OUT,
    MiB,
    Server,
    curl_download,
    curl_upload,
    print_machine,
    remove_run_dir,
    start_ephemera,
)
from tests.nginx import ACCEL_PREFIX, Nginx

ACCEL_AIM = 0.5
WAYS = ("nginx", "accel", "stream")
LABELS = {
    "nginx": "nginx sendfile",
    "accel": "ephemera behind nginx (X-Accel-Redirect)",
    "stream": "ephemera streaming, verified",
}


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    chunk = os.urandom(MiB)
    with path.open("wb") as f:
        left = size
        while left > 0:
            # A fresh random prefix per MiB, so no two MiB are alike; cheap, unlike urandom.
            block = os.urandom(64) + chunk[64 : min(left, MiB)]
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def check_body(url: str, headers: dict[str, str], size: int, sha: str, way: str) -> None:
    digest = hashlib.sha256()
    got = 0
    with httpx.stream("GET", url, headers=headers, timeout=600) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{way}: GET answered {response.status_code}")
        for chunk in response.iter_bytes(MiB):
            digest.update(chunk)
            got += len(chunk)
    if got != size or digest.hexdigest() != sha:
        raise RuntimeError(f"{way}: {got} bytes, sha256 {digest.hexdigest()}, not the file's")


def nginx_version(binary: str) -> str:
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().removeprefix("nginx version: ")


def run(size_mib: int = 1024, repeat: int = 3) -> list[Row]:
    """Measure, print the details, and return the rows of the scale table."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK) or shutil.which("curl") is None:
        raise RuntimeError("nginx and curl are required (apt-get install -y nginx curl)")
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="download-", dir=OUT))
    server: Server | None = None
    nginx: Nginx | None = None
    try:
        print_machine(run_dir, {"nginx": nginx_version(binary), "server": "uvicorn (ephemera)"})
        size = size_mib * MiB
        src = run_dir / "big.bin"
        sha = write_random(src, size)
        env = {
            "EPHEMERA_ACCEL_REDIRECT_PREFIX": ACCEL_PREFIX,
            "EPHEMERA_SCHEDULED_CLEANUP": "false",
        }
        server, admin_key = start_ephemera(run_dir, env=env)
        admin = {"Authorization": f"Bearer {admin_key}"}
        created = httpx.post(f"{server.base}{API}/sessions", json={}, headers=admin, timeout=30)
        sid, token = created.json()["id"], created.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        _, code, body = curl_upload(
            f"{server.base}{API}/sessions/{sid}/artifacts?name=big.bin",
            src,
            [f"Authorization: Bearer {token}"],
        )
        if code != 201:
            raise RuntimeError(f"upload answered {code}: {body[:300]}")
        aid = json.loads(body)["id"]
        src.unlink()  # the blob is the one copy: all three ways read it
        blobs = run_dir / "ephemera-data" / "blobs"
        direct = run_dir / "direct"
        direct.mkdir()
        os.link(blobs / "sessions" / sid / aid, direct / "big.bin")
        (run_dir / "nginx").mkdir()
        nginx = Nginx(binary, run_dir / "nginx", server.port, blobs, direct).start()

        content = f"{API}/sessions/{sid}/artifacts/{aid}/content"
        urls = {
            "nginx": f"{nginx.url}/direct/big.bin",
            "accel": nginx.url + content,
            "stream": server.base + content,
        }
        headers = {"nginx": {}, "accel": auth, "stream": auth}
        for way in WAYS:
            check_body(urls[way], headers[way], size, sha, way)
        if not any(f"{ACCEL_PREFIX}/sessions/{sid}/{aid}" in line for line in nginx.served()):
            raise RuntimeError("accel: nginx did not serve the download from its internal location")
        print(f"== {size_mib} MiB download, {repeat} runs each, alternating (sha256 checked once)")
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        for i in range(repeat):
            for way in WAYS:
                lines = [f"{k}: {v}" for k, v in headers[way].items()]
                timed, status, got = curl_download(urls[way], lines)
                if status != 200 or got != size:
                    raise RuntimeError(f"{way}: answered {status} with {got} bytes")
                rates[way].append(size / MiB / timed.seconds)
                print(f"  run {i + 1} {way:<7} {timed.seconds:7.3f} s  {rates[way][-1]:8.0f} MiB/s")
        return summarize(rates, size_mib)
    finally:
        if nginx is not None:
            nginx.stop()
        if server is not None:
            server.stop()
        remove_run_dir(run_dir)


def summarize(rates: dict[str, list[float]], size_mib: int) -> list[Row]:
    median = {way: statistics.median(values) for way, values in rates.items()}
    print("\n== Summary (MiB/s: median, best; ratio of medians against nginx)")
    for way in WAYS:
        ratio = median[way] / median["nginx"]
        best = max(rates[way])
        print(f"  {LABELS[way]:<42} {median[way]:8.0f} {best:8.0f}   {ratio:5.2f}x")
    figure = f"{size_mib} MiB download"
    return [
        Row(
            f"{figure}, behind nginx (X-Accel-Redirect)",
            None,
            median["accel"],
            "MiB/s",
            median["nginx"],
            "nginx sendfile",
            ACCEL_AIM,
            higher_is_better=True,
            note="ephemera checks token, state, flag, size; nginx sends without hashing",
        ),
        Row(
            f"{figure}, streamed and verified",
            None,
            median["stream"],
            "MiB/s",
            median["nginx"],
            "nginx sendfile",
            note="the default path: uvicorn, sha256 over every byte",
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each way (default 3)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = run(args.size_mib, args.repeat)
    except RuntimeError as exc:
        print(f"bench.download: {exc}", file=sys.stderr)
        return 1
    print_rows(rows, "download")
    return 0


if __name__ == "__main__":
    sys.exit(main())
