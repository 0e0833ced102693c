"""The Celery app the Celery tests run in a real worker (``celery -A
tests.acceptance.celery_tasks worker``): its tasks work on artifacts through
ephemera.contrib.celery. The broker, server and lease TTL come from the environment."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from ephemera.contrib.celery import EphemeraTask, Workspace, ephemera_task

REDIS_URL = os.environ.get("EPHEMERA_TEST_REDIS", "redis://127.0.0.1:6379/13")

app = Celery("ephemera-tests", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    ephemera_lease_ttl_s=int(os.environ.get("EPHEMERA_LEASE_TTL_S", "3")),
)


def work_for(ws: Workspace, seconds: float) -> None:
    """Stand-in for slow processing, stopping if the lease is lost."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ws.check()
        time.sleep(0.1)


@ephemera_task(app, name="tests.upper")
def upper(ws: Workspace, artifact_id: str, work_s: float) -> dict[str, Any]:
    # The input is read only after the work: whatever cleanup ran meanwhile had to spare it.
    work_for(ws, work_s)
    source = ws.download(artifact_id)
    result = ws.tmpdir / "upper.txt"
    result.write_bytes(source.read_bytes().upper())
    return {"output": ws.upload(result, name="upper.txt").id, "pid": os.getpid()}


class LongLease(EphemeraTask):
    lease_ttl_s = 120  # far longer than any test waits: only a release ends it early


@app.task(base=LongLease, name="tests.long")  # type: ignore[untyped-decorator]
def long(ws: Workspace, work_s: float, fail: bool) -> None:
    work_for(ws, work_s)
    if fail:
        raise RuntimeError("the processing failed")
