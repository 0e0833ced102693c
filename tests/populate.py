"""Build large stores fast for tests: rows in bulk, files written directly, IDs deterministic."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from sqlalchemy import insert

from ephemera import Store
from ephemera.catalog.schema import artifacts, sessions


def artifact_id(n: int) -> str:
    return f"01a1fcac-{n >> 48 & 0xFFFF:04x}-7000-8000-{n & 0xFFFFFFFFFFFF:012x}"


def populate(
    store: Store,
    *,
    sessions_count: int,
    per_session: int,
    expired_every: int = 2,
    size: int = 64,
    now: datetime | None = None,
) -> int:
    """Sessions s00000... with artifacts; every ``expired_every``-th one temporary and expired.

    Returns how many artifacts are expired.
    """
    now = now or store.clock.now()
    past = now - timedelta(hours=1)
    root = store.settings.data_dir / "blobs" / "sessions"
    session_rows: list[dict[str, object]] = []
    artifact_rows: list[dict[str, object]] = []
    expired = 0
    n = 0
    for s in range(sessions_count):
        sid = f"s{s:05d}"
        session_rows.append(
            {
                "id": sid,
                "token_hash": "0" * 64,
                "label": None,
                "metadata": {},
                "state": "open",
                "created_at": now,
                "last_activity_at": now,
                "idle_timeout_s": None,
                "max_age_s": None,
                "expires_at": None,
            }
        )
        folder = root / sid
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(per_session):
            aid = artifact_id(n)
            doomed = n % expired_every == 0
            expired += doomed
            artifact_rows.append(
                {
                    "id": aid,
                    "session_id": sid,
                    "name": f"{n}.bin",
                    "kind": "input",
                    "content_type": "application/octet-stream",
                    "size": size,
                    "sha256": "0" * 64,
                    "storage_class": "temporary" if doomed else "persistent",
                    "state": "ready",
                    "created_at": past,
                    "ready_at": past,
                    "expires_at": past if doomed else None,
                }
            )
            fd = os.open(folder / aid, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x" * size)
            os.close(fd)
            n += 1
    with store.catalog.engine.begin() as conn:
        conn.execute(insert(sessions), session_rows)
        for start in range(0, len(artifact_rows), 5000):
            conn.execute(insert(artifacts), artifact_rows[start : start + 5000])
    return expired
