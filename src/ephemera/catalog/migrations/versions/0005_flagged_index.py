"""A partial index on flagged artifacts, so /metrics counts them without a table scan.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index(
        "ix_artifacts_flagged",
        "artifacts",
        ["integrity", "state"],
        sqlite_where=sa.text("integrity IS NOT NULL"),
        postgresql_where=sa.text("integrity IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_artifacts_flagged", "artifacts")
