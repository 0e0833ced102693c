"""The web console's rows: sign-ins (see ``schema.console_logins``) and usage samples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, func, insert, or_, select

from ephemera.catalog import totals
from ephemera.catalog.db import Database
from ephemera.catalog.schema import (
    api_keys,
    console_logins,
    sessions,
    tasks,
    usage_samples,
)
from ephemera.models import (
    ArtifactState,
    ConsoleLogin,
    SessionState,
    StorageClass,
    TaskState,
    UsageSample,
)


def _login(row: Row[Any]) -> ConsoleLogin:
    return ConsoleLogin(
        id=row.id,
        role=row.role,
        actor=row.actor,
        session_id=row.session_id,
        csrf=row.csrf,
        created_at=row.created_at,
        expires_at=row.expires_at,
        secret_hash=row.secret_hash,
    )


class ConsoleCatalog:
    """Sign-ins and usage samples; one method per statement, like ``Catalog``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert_login(self, login: ConsoleLogin, now: datetime) -> None:
        """Record a sign-in, and forget the ones that expired (the index keeps it cheap)."""
        with self._db.write() as conn:
            conn.execute(delete(console_logins).where(console_logins.c.expires_at <= now))
            conn.execute(
                insert(console_logins).values(
                    id=login.id,
                    role=login.role,
                    actor=login.actor,
                    secret_hash=login.secret_hash,
                    session_id=login.session_id,
                    csrf=login.csrf,
                    created_at=login.created_at,
                    expires_at=login.expires_at,
                )
            )

    def find_login(self, login_id: str, now: datetime) -> ConsoleLogin | None:
        """A sign-in that is still good: not expired, and its credential still valid (the key
        not revoked nor expired; the session open, under the same token, within its
        deadline)."""
        key_valid = (
            select(api_keys.c.name)
            .where(
                api_keys.c.key_hash == console_logins.c.secret_hash,
                api_keys.c.role == console_logins.c.role,
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
            .exists()
        )
        session_valid = (
            select(sessions.c.id)
            .where(
                sessions.c.id == console_logins.c.session_id,
                sessions.c.token_hash == console_logins.c.secret_hash,
                sessions.c.state == SessionState.OPEN,
                or_(sessions.c.expires_at.is_(None), sessions.c.expires_at > now),
            )
            .exists()
        )
        with self._db.read() as conn:
            row = conn.execute(
                select(console_logins).where(
                    console_logins.c.id == login_id,
                    console_logins.c.expires_at > now,
                    or_(
                        and_(console_logins.c.role.in_(("admin", "worker")), key_valid),
                        and_(console_logins.c.role == "session", session_valid),
                    ),
                )
            ).first()
        return None if row is None else _login(row)

    def delete_login(self, login_id: str) -> bool:
        with self._db.write() as conn:
            return bool(
                conn.execute(delete(console_logins).where(console_logins.c.id == login_id)).rowcount
            )

    def insert_usage(self, at: datetime, keep_after: datetime) -> UsageSample:
        """Count the store now, record it, and drop the samples older than ``keep_after``."""
        with self._db.write() as conn:
            live = conn.scalar(
                select(func.count())
                .select_from(sessions)
                .where(sessions.c.state == SessionState.OPEN)
            )
            ready = [t for t in totals.summed(conn) if t.state == ArtifactState.READY]
            count = sum(t.artifacts for t in ready)
            size = sum(t.bytes for t in ready)
            temp = sum(t.bytes for t in ready if t.storage_class == StorageClass.TEMPORARY)
            active = conn.scalar(
                select(func.count())
                .select_from(tasks)
                .where(tasks.c.state.in_((TaskState.PENDING, TaskState.RUNNING)))
            )
            sample = UsageSample(
                at, int(live or 0), int(count), int(size), int(temp), int(active or 0)
            )
            conn.execute(delete(usage_samples).where(usage_samples.c.at <= keep_after))
            conn.execute(
                insert(usage_samples).values(
                    at=at,
                    sessions=sample.sessions,
                    artifacts=sample.artifacts,
                    bytes=sample.bytes,
                    temporary_bytes=sample.temporary_bytes,
                    tasks_active=sample.tasks_active,
                )
            )
        return sample

    def usage_since(self, since: datetime) -> list[UsageSample]:
        with self._db.read() as conn:
            rows = conn.execute(
                select(usage_samples).where(usage_samples.c.at > since).order_by(usage_samples.c.at)
            ).all()
        return [
            UsageSample(r.at, r.sessions, r.artifacts, r.bytes, r.temporary_bytes, r.tasks_active)
            for r in rows
        ]
