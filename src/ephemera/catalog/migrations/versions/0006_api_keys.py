"""``admin_keys`` becomes ``api_keys``: it holds worker and client keys too.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import UTCDateTime

revision = "0006"
down_revision = "0005"

COLUMNS = ("name", "key_hash", "created_at", "last_used_at", "role", "expires_at")


def upgrade() -> None:
    _rename("admin_keys", "api_keys")


def downgrade() -> None:
    _rename("api_keys", "admin_keys")


def _rename(old: str, new: str) -> None:
    """Rename the table with its constraints (their names follow the table's)."""
    if op.get_bind().dialect.name == "postgresql":
        op.rename_table(old, new)
        op.execute(f"ALTER TABLE {new} RENAME CONSTRAINT pk_{old} TO pk_{new}")
        op.execute(f"ALTER TABLE {new} RENAME CONSTRAINT uq_{old}_key_hash TO uq_{new}_key_hash")
        return
    # SQLite cannot rename a constraint: the table is made anew under its new name.
    op.create_table(
        new,
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime()),
        sa.Column("role", sa.String(16), nullable=False, server_default="admin"),
        sa.Column("expires_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("name", name=f"pk_{new}"),
        sa.UniqueConstraint("key_hash", name=f"uq_{new}_key_hash"),
    )
    source = sa.table(old, *(sa.column(c) for c in COLUMNS))
    target = sa.table(new, *(sa.column(c) for c in COLUMNS))
    op.execute(target.insert().from_select(list(COLUMNS), sa.select(*source.c)))
    op.drop_table(old)
