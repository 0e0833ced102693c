"""Leases, the audit log, named locks, and the producer of an artifact.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import JSONType, UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("producer", sa.String(64)))
        batch.create_index("ix_artifacts_session_id_id_state", ["session_id", "id", "state"])
        # Only stale uploads are looked up by state; see the schema for why a partial index.
        batch.drop_index("ix_artifacts_state_created_at")
        batch.create_index(
            "ix_artifacts_pending_created_at",
            ["created_at"],
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        )
        # Keyset batches of cleanup walk these indexes in order, never sorting.
        batch.drop_index("ix_artifacts_expires_at")
        batch.create_index("ix_artifacts_expires_at_id", ["expires_at", "id"])
        batch.create_index("ix_artifacts_ready_at_id", ["ready_at", "id"])
    op.create_table(
        "leases",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_leases"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_leases_session_id_sessions"
        ),
    )
    op.create_index("ix_leases_session_id_expires_at", "leases", ["session_id", "expires_at"])
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"])
    op.create_table(
        "lease_artifacts",
        sa.Column("lease_id", sa.String(36), nullable=False),
        sa.Column("artifact_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "artifact_id", name="pk_lease_artifacts"),
        sa.ForeignKeyConstraint(
            ["lease_id"], ["leases.id"], name="fk_lease_artifacts_lease_id_leases"
        ),
    )
    op.create_index("ix_lease_artifacts_artifact_id", "lease_artifacts", ["artifact_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(200)),
        sa.Column("params", JSONType, nullable=False),
        sa.Column("result", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_action_id", "audit_log", ["action", "id"])
    op.create_table(
        "locks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_locks"),
    )


def downgrade() -> None:
    op.drop_table("locks")
    op.drop_table("audit_log")
    op.drop_table("lease_artifacts")
    op.drop_table("leases")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_index("ix_artifacts_ready_at_id")
        batch.drop_index("ix_artifacts_expires_at_id")
        batch.create_index("ix_artifacts_expires_at", ["expires_at"])
        batch.drop_index("ix_artifacts_pending_created_at")
        batch.create_index("ix_artifacts_state_created_at", ["state", "created_at"])
        batch.drop_index("ix_artifacts_session_id_id_state")
        batch.drop_column("producer")
