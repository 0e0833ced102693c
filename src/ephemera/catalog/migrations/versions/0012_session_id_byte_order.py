"""Session IDs in byte order on PostgreSQL, so orphan reconciliation's keyset pages of
session IDs, merged with the blob store's names, read an index whatever the collation.

SQLite compares bytes under its default collation already: nothing to add there.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX ix_sessions_id_byte_order ON sessions (id COLLATE "C")')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_sessions_id_byte_order")
