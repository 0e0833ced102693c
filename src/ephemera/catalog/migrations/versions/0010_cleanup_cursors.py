"""Where each incremental maintenance pass stopped: orphan reconciliation walks a slice of
the store per scheduled tick and resumes after a restart where the last slice ended.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import UTCDateTime

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "cleanup_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.String(255), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cleanup_cursors"),
    )


def downgrade() -> None:
    op.drop_table("cleanup_cursors")
