"""The worker API (a worker or admin key): claim a task, report on it, move its bytes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ephemera.client.common import given, query, seg
from ephemera.client.connection import Connection, write_verified
from ephemera.client.records import artifact_of, claim_of, task_of
from ephemera.client.transfer import PathLike, Source, outgoing
from ephemera.errors import InvalidInput
from ephemera.models import Artifact, Claim, Task


class WorkerMethods(Connection):
    """An external worker's calls; each about a task carries its claim's ID."""

    def claim_task(
        self,
        worker: str,
        processors: Sequence[str],
        *,
        wait_s: float = 0,
        ttl_s: float | None = None,
    ) -> Claim | None:
        """The oldest waiting task of the processors, claimed; None when none came within
        ``wait_s``. Every call about it carries the claim's ID."""
        body = given(worker=worker, processors=list(processors), ttl_s=ttl_s)
        answer = self._call(
            "POST",
            "/worker/claim",
            params=query(wait_s=wait_s),
            json=body,
            timeout=self._timeout + wait_s,
        )
        return None if answer is None else claim_of(answer)

    def heartbeat(
        self,
        task_id: str,
        claim_id: str,
        *,
        progress: tuple[int, int | None] | None = None,
        ttl_s: float | None = None,
    ) -> datetime:
        """Renew the claim (and report progress); Conflict means stop: the claim is gone."""
        body = given(
            progress=None if progress is None else {"done": progress[0], "total": progress[1]},
            ttl_s=ttl_s,
        )
        answer = self._call(
            "POST", f"/worker/tasks/{seg(task_id)}/heartbeat", json=body, headers=_claim(claim_id)
        )
        return datetime.fromisoformat(answer["claimed_until"])

    def iter_task_input(self, task_id: str, claim_id: str, artifact_id: str) -> Iterator[bytes]:
        path = f"/worker/tasks/{seg(task_id)}/inputs/{seg(artifact_id)}/content"
        return self._verified_chunks(path, f"input {artifact_id}", _claim(claim_id))

    def download_task_input(
        self, task_id: str, claim_id: str, artifact_id: str, dest: PathLike
    ) -> Path:
        """An input's bytes into ``dest``, verified as :meth:`download_artifact` does."""
        return write_verified(dest, self.iter_task_input(task_id, claim_id, artifact_id))

    def upload_task_output(
        self,
        task_id: str,
        claim_id: str,
        source: Source,
        *,
        name: str | None = None,
        kind: str = "output",
        content_type: str | None = None,
        sha256: str | None = None,
    ) -> Artifact:
        """Store an output of the claimed task (streamed, its sha256 checked by the server)."""
        body = outgoing(source, sha256)
        params = {"name": name or body.name, "kind": kind, "content_type": content_type}
        if not params["name"]:
            raise InvalidInput("an output needs a name (only a path brings its own)")
        answer = self._send(
            f"/worker/tasks/{seg(task_id)}/outputs", body, params, headers=_claim(claim_id)
        )
        return artifact_of(answer)

    def complete_task(
        self, task_id: str, claim_id: str, result: Mapping[str, Any] | None = None
    ) -> Task:
        """Succeed with ``result``; the outputs uploaded under this claim become the task's."""
        answer = self._call(
            "POST",
            f"/worker/tasks/{seg(task_id)}/complete",
            json={"result": dict(result or {})},
            headers=_claim(claim_id),
        )
        return task_of(answer)

    def fail_task(self, task_id: str, claim_id: str, error: str, *, retry: bool = False) -> Task:
        """Fail this attempt; with ``retry`` it is queued again while attempts remain."""
        answer = self._call(
            "POST",
            f"/worker/tasks/{seg(task_id)}/fail",
            json={"error": error, "retry": retry},
            headers=_claim(claim_id),
        )
        return task_of(answer)


def _claim(claim_id: str) -> dict[str, str]:
    return {"Ephemera-Claim": claim_id}
