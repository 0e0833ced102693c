"""The web console: sign-ins, the store's usage over time, and the indexes that list
sessions a page at a time in each of the console's orders.

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
    _upgrade_session_orders()


def downgrade() -> None:
    _downgrade_session_orders()
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


# -- the orders of the sessions list -----------------------------------------------------------

# The two earlier indexes become prefixes of the new ones (the ID appended), which serve every
# query they served: replaced rather than kept beside them, so a write updates no more indexes.
_SESSION_ORDERS = {
    "ix_sessions_state_expires_at_id": ["state", "expires_at", "id"],
    "ix_sessions_last_activity_at_id": ["last_activity_at", "id"],
    "ix_sessions_expires_at_id": ["expires_at", "id"],
    "ix_sessions_created_at_id": ["created_at", "id"],
}
_REPLACED = {
    "ix_sessions_state_expires_at": ["state", "expires_at"],
    "ix_sessions_last_activity_at": ["last_activity_at"],
}


def _upgrade_session_orders() -> None:
    for name, columns in _SESSION_ORDERS.items():
        op.create_index(name, "sessions", columns, unique=False)
    for name in _REPLACED:
        op.drop_index(name, table_name="sessions")


def _downgrade_session_orders() -> None:
    for name, columns in _REPLACED.items():
        op.create_index(name, "sessions", columns, unique=False)
    for name in _SESSION_ORDERS:
        op.drop_index(name, table_name="sessions")
