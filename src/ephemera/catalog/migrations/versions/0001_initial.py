"""Sessions, artifacts and admin keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import JSONType, UTCDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200)),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("idle_timeout_s", sa.Integer()),
        sa.Column("max_age_s", sa.Integer()),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("closing_since", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_state_expires_at", "sessions", ["state", "expires_at"])
    op.create_index("ix_sessions_last_activity_at", "sessions", ["last_activity_at"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("storage_class", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ready_at", UTCDateTime()),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("retain_until", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_artifacts_session_id_sessions"
        ),
    )
    op.create_index(
        "ix_artifacts_session_id_state_kind", "artifacts", ["session_id", "state", "kind"]
    )
    op.create_index("ix_artifacts_state_created_at", "artifacts", ["state", "created_at"])
    op.create_index("ix_artifacts_expires_at", "artifacts", ["expires_at"])
    op.create_table(
        "admin_keys",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("name", name="pk_admin_keys"),
        sa.UniqueConstraint("key_hash", name="uq_admin_keys_key_hash"),
    )


def downgrade() -> None:
    op.drop_table("admin_keys")
    op.drop_table("artifacts")
    op.drop_table("sessions")
