"""A 1 GiB upload to S3 through a real server: streamed, with flat memory, given back."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import Server, bearer

pytestmark = pytest.mark.slow

GiB = 1024**3
CHUNK = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_1_gib_upload_to_s3_holds_little_more_than_its_parts_and_gives_them_back(
    tmp_path: Path, s3_url: str
) -> None:
    server = Server(tmp_path / "data", {"EPHEMERA_BLOB_URL": s3_url}).start()
    try:
        assert server.process is not None
        pid = server.process.pid
        token = httpx.post(
            f"{server.api}/sessions", json={"id": "big"}, headers=server.admin()
        ).json()["token"]
        block = os.urandom(CHUNK)
        digest = hashlib.sha256()
        for _ in range(GiB // CHUNK):
            digest.update(block)

        def body() -> Iterator[bytes]:
            for _ in range(GiB // CHUNK):
                yield block

        # Peak resident memory from here on: reset the high-water mark to the current RSS.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        baseline = status_kib(pid, "VmRSS")
        answer = httpx.post(
            f"{server.api}/sessions/big/artifacts",
            params={"name": "big.bin", "sha256": digest.hexdigest()},
            content=body(),
            headers=bearer(token),
            timeout=600,
        )
        peak, after = status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS")
        assert answer.status_code == 201, answer.text
        assert answer.json()["size"] == GiB
        # The writer holds at most 5 parts of 8 MiB (42 MB); the request's own buffers are
        # small. Parts in bytearrays, which malloc keeps once freed, grew it by 90 to 116 MB.
        growth_mb = (peak - baseline) * 1024 / 1e6
        assert growth_mb < 75, f"server grew by {growth_mb:.0f} MB"
        # Each part's memory went back to the system once S3 had it (bytearrays: 32-57 MB).
        kept_mb = (after - baseline) * 1024 / 1e6
        assert kept_mb < 20, f"server kept {kept_mb:.0f} MB"

        # And it reads back: a range from the middle, without fetching the rest.
        middle = httpx.get(
            f"{server.api}/sessions/big/artifacts/{answer.json()['id']}/content",
            headers={**bearer(token), "range": f"bytes={GiB // 2}-{GiB // 2 + 99}"},
        )
        assert middle.status_code == 206
        offset = (GiB // 2) % CHUNK
        assert middle.content == block[offset : offset + 100]
    finally:
        server.stop()
