"""ephemera.client.AsyncClient against a real `ephemera serve`: the README's example as
written, streamed and verified transfers, waiting for a task without blocking the loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ephemera.client import AsyncClient, Client
from ephemera.errors import ChecksumMismatch
from ephemera.models import Task, TaskState
from tests.acceptance.test_readme import section
from tests.conftest import WITH_SAMPLES_ENV, Server, serving
from tests.images import photo, png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("async") / "data", WITH_SAMPLES_ENV) as running:
        yield running


@pytest.fixture
def session(admin: Client) -> tuple[str, str]:
    created = admin.create_session()
    return created.session.id, created.token


def test_the_readmes_async_example_runs_as_written(
    server: Server, session: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [example] = re.findall(r"```python\n(.*?)```", section("Python client"), re.S)
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102
    monkeypatch.chdir(tmp_path)
    Path("capture.png").write_bytes(png(photo(7)))
    sid, token = session

    asyncio.run(namespace["inspect"](server.url, token, sid, "capture.png"))

    with Client(server.url, token) as own:
        [task] = own.list_tasks(sid)
    assert task.state is TaskState.SUCCEEDED
    assert len(task.outputs) >= 2
    for output in task.outputs:
        assert hashlib.sha256(Path(output.name).read_bytes()).hexdigest() == output.sha256


class FlipDown(httpx2.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        first = True
        async for chunk in self.stream:
            if first and chunk:
                chunk, first = bytes([chunk[0] ^ 1]) + chunk[1:], False
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class CorruptingDownloads(httpx2.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        if request.url.path.endswith("/content"):
            response.stream = FlipDown(response.stream)
        return response


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 100_000):
        await asyncio.sleep(0)
        yield data[start : start + 100_000]


def test_async_uploads_stream_with_their_sha256_and_downloads_are_verified(
    server: Server, session: tuple[str, str], tmp_path: Path
) -> None:
    sid, token = session
    data = os.urandom(1_500_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    target = tmp_path / "copy.bin"

    async def run() -> None:
        async with AsyncClient(server.url, token) as client:
            from_path = await client.upload_artifact(sid, source)
            from_chunks = await client.upload_artifact(sid, chunks(data), name="chunks.bin")
            from_bytes = await client.upload_artifact(sid, data, name="bytes.bin")
            for artifact in (from_path, from_chunks, from_bytes):
                assert artifact.sha256 == hashlib.sha256(data).hexdigest()
                assert await client.read_artifact(sid, artifact.id) == data
            assert await client.download_artifact(sid, from_path.id, target) == target
            assert target.read_bytes() == data
            listed = [a.id async for a in client.list_artifacts(sid, page_size=2)]
            assert sorted(listed) == sorted([from_path.id, from_chunks.id, from_bytes.id])

        target.write_bytes(b"before")
        bad = AsyncClient(server.url, token, transport=CorruptingDownloads())
        async with bad:
            with pytest.raises(ChecksumMismatch):
                await bad.download_artifact(sid, from_path.id, target)

    asyncio.run(run())
    assert target.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "source.bin"]


def steps(task: Task) -> tuple[str, int]:
    return task.state, task.progress_done


def test_waiting_for_a_task_reports_progress_and_leaves_the_loop_free(
    server: Server, session: tuple[str, str]
) -> None:
    sid, token = session
    seen: list[tuple[str, int]] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    async def run() -> TaskState:
        async with AsyncClient(server.url, token) as client:
            task = await client.submit_task(sid, "sample-sleep", params={"seconds": 2.5})
            beside = asyncio.create_task(ticker())
            done = await client.wait_task(
                sid,
                task.id,
                poll_s=0.1,
                on_progress=lambda t: seen.append((t.state, t.progress_done)),
            )
            beside.cancel()
            return done.state

    began = time.monotonic()
    assert asyncio.run(run()) is TaskState.SUCCEEDED
    elapsed = time.monotonic() - began
    assert seen[-1] == ("succeeded", 1000)
    assert len(seen) >= 3
    # The loop ran other work the whole time (a blocking wait would allow ~2 ticks a second).
    assert ticks >= 0.5 * elapsed / 0.05
