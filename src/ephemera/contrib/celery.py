"""Celery tasks that work on an ephemera session under a lease.

A task declared with ``base=EphemeraTask`` (or :func:`ephemera_task`) receives, in place of
its first argument, a :class:`Workspace`: while the task runs, a lease on the session (or on
the named artifacts) protects what it works on from every cleanup and expiry, renewed in the
background; the workspace downloads inputs (verified) into a private temporary directory and
uploads outputs. The lease is released when the task returns, raises, or is revoked with
``terminate=True`` (the prefork pool turns that SIGTERM into SystemExit in the task, which
leaves the lease's block like any exception); a worker killed outright stops renewing, and
the lease expires after its TTL, after which cleanup may take what it protected.

Send such a task with the session it works on, built by :func:`on_session`::

    thumbnail.delay(on_session(session_id, token, artifacts=[artifact_id]), artifact_id)

The server and credential come from the app's config (``ephemera_server_url``,
``ephemera_token``, ``ephemera_lease_ttl_s``) or the worker's environment
(``EPHEMERA_SERVER_URL``, ``EPHEMERA_TOKEN``); a token given to :func:`on_session` (the
session's own) is used instead of the configured one (an admin key).

:func:`cleanup_task` registers ``ephemera.cleanup``, for a beat schedule of ``cleanup all``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ephemera.client import Client, HeldLease
from ephemera.client.transfer import Source
from ephemera.errors import InvalidInput
from ephemera.extras import require
from ephemera.models import Artifact

# Without the extra, one clear line naming it rather than "No module named 'celery'".
require("celery", "ephemera.contrib.celery")

from celery import Celery, Task  # noqa: E402

DEFAULT_LEASE_TTL_S = 60


def on_session(
    session_id: str, token: str | None = None, *, artifacts: Sequence[str] = ()
) -> dict[str, Any]:
    """What an :class:`EphemeraTask` works on, as its first argument: the session, the
    credential to use (default: the configured one), and the artifacts to lease (none: the
    whole session). Plain JSON, for any serializer; it carries the token, so keep the broker
    as private as the tokens."""
    return {"session_id": session_id, "token": token, "artifact_ids": list(artifacts)}


@dataclass(frozen=True)
class _Target:
    session_id: str
    token: str | None
    artifact_ids: tuple[str, ...]

    @classmethod
    def of(cls, value: Any) -> _Target:
        if not isinstance(value, dict) or not isinstance(value.get("session_id"), str):
            raise InvalidInput(
                "an ephemera task's first argument is on_session(session_id, token, ...)"
            )
        return cls(value["session_id"], value.get("token"), tuple(value.get("artifact_ids", ())))


@dataclass(frozen=True)
class Settings:
    server_url: str
    token: str | None
    lease_ttl_s: int

    @classmethod
    def of(cls, app: Celery) -> Settings:
        conf = app.conf
        url = conf.get("ephemera_server_url") or os.environ.get("EPHEMERA_SERVER_URL")
        if not url:
            raise InvalidInput(
                "set ephemera_server_url in the Celery config or EPHEMERA_SERVER_URL"
            )
        token = conf.get("ephemera_token") or os.environ.get("EPHEMERA_TOKEN")
        ttl = int(conf.get("ephemera_lease_ttl_s") or DEFAULT_LEASE_TTL_S)
        return cls(url, token, ttl)


class Workspace:
    """A task's view of its session: the client, the held lease, a private directory."""

    def __init__(self, client: Client, session_id: str, lease: HeldLease, tmpdir: Path) -> None:
        self.client = client
        self.session_id = session_id
        self.lease = lease
        self.tmpdir = tmpdir

    def check(self) -> None:
        """LeaseLost if the lease could not be kept: stop before doing more work."""
        self.lease.check()

    def download(self, artifact_id: str, dest: str | os.PathLike[str] | None = None) -> Path:
        """The artifact's bytes in a local file (in the task's directory unless ``dest``),
        verified against its sha256."""
        self.check()
        target = Path(dest) if dest is not None else self.tmpdir / artifact_id
        return self.client.download_artifact(self.session_id, artifact_id, target)

    def upload(
        self, source: Source, *, name: str | None = None, kind: str = "output", **options: Any
    ) -> Artifact:
        """A new artifact of the session (streamed, its sha256 checked by the server)."""
        self.check()
        return self.client.upload_artifact(self.session_id, source, name=name, kind=kind, **options)

    def artifact(self, artifact_id: str) -> Artifact:
        return self.client.get_artifact(self.session_id, artifact_id)


class EphemeraTask(Task):  # type: ignore[misc]
    """A Celery task run under a lease; its first argument becomes a :class:`Workspace`."""

    # Per task class, overriding the app's ``ephemera_lease_ttl_s``.
    lease_ttl_s: int | None = None

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        where = _Target.of(target)
        settings = Settings.of(self.app)
        ttl_s = self.lease_ttl_s or settings.lease_ttl_s
        holder = f"celery:{self.name}:{self.request.id or 'eager'}"
        with (
            Client(settings.server_url, where.token or settings.token) as client,
            client.lease(
                where.session_id, ttl_s=ttl_s, artifact_ids=where.artifact_ids, holder=holder
            ) as lease,
            tempfile.TemporaryDirectory(prefix="ephemera-task-") as tmp,
        ):
            workspace = Workspace(client, where.session_id, lease, Path(tmp))
            return self.run(workspace, *args, **kwargs)


def ephemera_task(app: Celery, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """``@ephemera_task(app)``: ``app.task(base=EphemeraTask, ...)``."""
    decorate: Callable[[Callable[..., Any]], Task] = app.task(base=EphemeraTask, **options)
    return decorate


def cleanup_task(app: Celery) -> Task:
    """Registers ``ephemera.cleanup(operation="all", dry_run=False)``: a cleanup run through
    the configured server with the configured admin key, returning its report."""

    @app.task(name="ephemera.cleanup")  # type: ignore[untyped-decorator]
    def cleanup(operation: str = "all", dry_run: bool = False) -> dict[str, Any]:
        settings = Settings.of(app)
        with Client(settings.server_url, settings.token) as client:
            return client.cleanup(operation, dry_run=dry_run)

    task: Task = cleanup
    return task
