"""The web console: sign-ins and the store's usage over time.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import UTCDateTime

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    _upgrade_logins()
    _upgrade_usage()


def downgrade() -> None:
    _downgrade_usage()
    _downgrade_logins()


# -- sign-ins ----------------------------------------------------------------------------------


def _upgrade_logins() -> None:
    op.create_table(
        "console_logins",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64)),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_console_logins"),
    )
    op.create_index("ix_console_logins_expires_at", "console_logins", ["expires_at"], unique=False)


def _downgrade_logins() -> None:
    op.drop_index("ix_console_logins_expires_at", table_name="console_logins")
    op.drop_table("console_logins")


# -- usage over time ---------------------------------------------------------------------------


def _upgrade_usage() -> None:
    op.create_table(
        "usage_samples",
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("artifacts", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("temporary_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tasks_active", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("at", name="pk_usage_samples"),
    )


def _downgrade_usage() -> None:
    op.drop_table("usage_samples")
