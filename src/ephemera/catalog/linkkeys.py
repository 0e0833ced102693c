"""The keys that sign download links: issue, find, list and revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update

from ephemera.catalog.db import Database
from ephemera.catalog.schema import link_keys
from ephemera.models import LinkKey


def _model(row: Row[Any]) -> LinkKey:
    secret = bytes.fromhex(row.secret) if row.secret is not None else None
    return LinkKey(id=row.id, created_at=row.created_at, revoked_at=row.revoked_at, secret=secret)


def insert_link_key(db: Database, key_id: str, secret: bytes, now: datetime) -> None:
    with db.write(duplicate=f"a link key {key_id!r} exists already") as conn:
        conn.execute(insert(link_keys).values(id=key_id, secret=secret.hex(), created_at=now))


def signing_link_key(db: Database) -> LinkKey | None:
    """The newest key not revoked: the one that signs."""
    with db.read() as conn:
        row = conn.execute(
            select(link_keys)
            .where(link_keys.c.revoked_at.is_(None))
            .order_by(link_keys.c.seq.desc())
            .limit(1)
        ).first()
    return None if row is None else _model(row)


def find_link_key(db: Database, key_id: str) -> LinkKey | None:
    """A key by its ID, revoked ones included (without a secret: revoking forgets it)."""
    with db.read() as conn:
        row = conn.execute(select(link_keys).where(link_keys.c.id == key_id)).first()
    return None if row is None else _model(row)


def list_link_keys(db: Database) -> list[LinkKey]:
    """Every key, revoked ones included, newest first; without their secrets."""
    columns = (link_keys.c.id, link_keys.c.created_at, link_keys.c.revoked_at)
    with db.read() as conn:
        rows = conn.execute(select(*columns).order_by(link_keys.c.seq.desc())).all()
    return [LinkKey(id=r.id, created_at=r.created_at, revoked_at=r.revoked_at) for r in rows]


def revoke_link_key(db: Database, key_id: str, now: datetime) -> bool:
    """Revoke a key and forget its secret; False if there is no such key not yet revoked."""
    with db.write() as conn:
        changed = conn.execute(
            update(link_keys)
            .where(link_keys.c.id == key_id, link_keys.c.revoked_at.is_(None))
            .values(revoked_at=now, secret=None)
        ).rowcount
    return bool(changed)


class LinkKeyRows:
    """The link signing keys: :class:`~ephemera.catalog.Catalog`'s methods for them (one of
    its bases)."""

    _db: Database

    def insert_link_key(self, key_id: str, secret: bytes, now: datetime) -> None:
        insert_link_key(self._db, key_id, secret, now)

    def signing_link_key(self) -> LinkKey | None:
        return signing_link_key(self._db)

    def find_link_key(self, key_id: str) -> LinkKey | None:
        return find_link_key(self._db, key_id)

    def list_link_keys(self) -> list[LinkKey]:
        return list_link_keys(self._db)

    def revoke_link_key(self, key_id: str, now: datetime) -> bool:
        return revoke_link_key(self._db, key_id, now)
