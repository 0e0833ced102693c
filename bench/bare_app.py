"""A bare Starlette app to compare ephemera against: the same transfers, nothing else.

``POST /upload`` streams the body to the file named by ``BENCH_BARE_FILE`` the plain, obvious
way (``f.write`` per received chunk, on the event loop), then flushes and fsyncs, since
ephemera fsyncs too. ``GET /download`` returns that file with ``FileResponse``.
``POST /upload-small`` writes each body to a new file under ``BENCH_BARE_DIR`` and fsyncs it,
in the thread pool, like ephemera does its blocking work.

Run: ``python -m uvicorn bench.bare_app:app --http httptools --loop uvloop``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route


def _big_file() -> Path:
    return Path(os.environ["BENCH_BARE_FILE"])


def _small_dir() -> Path:
    return Path(os.environ["BENCH_BARE_DIR"])


async def upload(request: Request) -> Response:
    size = 0
    with _big_file().open("wb") as f:
        async for chunk in request.stream():
            f.write(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return JSONResponse({"size": size}, status_code=201)


def _write_small(data: bytes) -> str:
    name = uuid.uuid4().hex
    with (_small_dir() / name).open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return name


async def upload_small(request: Request) -> Response:
    data = await request.body()
    name = await run_in_threadpool(_write_small, data)
    return JSONResponse({"id": name, "size": len(data)}, status_code=201)


async def download(request: Request) -> Response:
    return FileResponse(_big_file(), media_type="application/octet-stream")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/upload-small", upload_small, methods=["POST"]),
        Route("/download", download, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
