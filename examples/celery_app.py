"""Recipe: Celery workers that process ephemera artifacts under a lease, and a beat schedule
that runs ``cleanup all``.

Use this when the processing already lives in Celery (its queues, retries and monitoring):
each task holds a lease on what it works on for as long as it runs, so no cleanup or expiry
takes its inputs from under it, and a worker that dies stops renewing, so nothing stays
protected for longer than the lease's TTL. Run it with the server's address and an admin
key (for the schedule; tasks use the session token they are sent with)::

    export EPHEMERA_SERVER_URL=http://127.0.0.1:8000 EPHEMERA_TOKEN="$(cat ephemera-data/admin.key)"
    celery -A examples.celery_app worker --loglevel=INFO
    celery -A examples.celery_app beat

and send work from anywhere that can reach the broker::

    from examples.celery_app import uppercase
    from ephemera.contrib.celery import on_session
    uppercase.delay(on_session(session_id, token, artifacts=[artifact_id]), artifact_id)

``ephemera serve`` already runs cleanup every 15 minutes; the beat entry is for deployments
that run it with ``EPHEMERA_SCHEDULED_CLEANUP=false`` and let Celery own the schedule.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

from ephemera.contrib.celery import Workspace, cleanup_task, ephemera_task

app = Celery(
    "ephemera-example", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
)
app.conf.update(
    # ephemera_server_url and ephemera_token may be set here instead of the environment.
    ephemera_lease_ttl_s=60,  # renewed every 20 s while a task runs
    beat_schedule={
        "ephemera-cleanup-all": {
            "task": "ephemera.cleanup",
            "schedule": crontab(minute="*/15"),
            "kwargs": {"operation": "all", "dry_run": False},
        },
    },
)

cleanup = cleanup_task(app)


@ephemera_task(app, name="examples.uppercase")
def uppercase(ws: Workspace, artifact_id: str) -> dict[str, Any]:
    """An output artifact with the input's text in capitals."""
    source = ws.download(artifact_id)
    result = ws.tmpdir / "upper.txt"
    result.write_bytes(source.read_bytes().upper())
    return {"output": ws.upload(result, name="upper.txt").id}
