"""API keys (admin, worker, client): stored as hashes, looked up by hash."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select, update

from ephemera.catalog.db import Database
from ephemera.catalog.rows import key_model
from ephemera.catalog.schema import api_keys
from ephemera.models import AdminKey


def insert_key(
    db: Database,
    name: str,
    key_hash: str,
    now: datetime,
    role: str = "admin",
    expires_at: datetime | None = None,
) -> None:
    with db.write(duplicate=f"a key named {name!r} already exists") as conn:
        conn.execute(
            insert(api_keys).values(
                name=name,
                key_hash=key_hash,
                created_at=now,
                role=role,
                expires_at=expires_at,
            )
        )


def find_key(db: Database, key_hash: str) -> AdminKey | None:
    with db.read() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).first()
    return None if row is None else key_model(row)


def touch_key(db: Database, name: str, now: datetime, not_since: datetime) -> None:
    """Record a key's use, unless it was recorded after ``not_since`` (keeps reads cheap)."""
    with db.write() as conn:
        conn.execute(
            update(api_keys)
            .where(
                api_keys.c.name == name,
                or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < not_since),
            )
            .values(last_used_at=now)
        )


def list_keys(db: Database, role: str = "admin") -> list[AdminKey]:
    with db.read() as conn:
        return [
            key_model(r)
            for r in conn.execute(
                select(api_keys).where(api_keys.c.role == role).order_by(api_keys.c.name)
            )
        ]


def delete_key(db: Database, name: str, role: str = "admin") -> bool:
    with db.write() as conn:
        return (
            conn.execute(
                delete(api_keys).where(api_keys.c.name == name, api_keys.c.role == role)
            ).rowcount
            > 0
        )


def count_admin_keys(db: Database) -> int:
    with db.read() as conn:
        return (
            conn.scalar(
                select(func.count()).select_from(api_keys).where(api_keys.c.role == "admin")
            )
            or 0
        )
