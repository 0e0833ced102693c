"""Integrity of stored bytes (verification, corruption flags) and key expiry.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import UTCDateTime

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("verified_at", UTCDateTime()))
        batch.add_column(sa.Column("integrity", sa.String(16)))
        batch.add_column(sa.Column("integrity_error", sa.String(500)))
        batch.create_index("ix_artifacts_verified_at_id", ["verified_at", "id"])
    with op.batch_alter_table("admin_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("admin_keys") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_index("ix_artifacts_verified_at_id")
        batch.drop_column("integrity_error")
        batch.drop_column("integrity")
        batch.drop_column("verified_at")
