"""Tasks, the leases they hold, worker keys, and outputs by producer.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import JSONType, UTCDateTime

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.create_index("ix_artifacts_producer", ["producer"])
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("task_id", sa.String(36)))
        batch.create_index("ix_leases_task_id", ["task_id"])
    with op.batch_alter_table("admin_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("processor", sa.String(100), nullable=False),
        sa.Column("params", JSONType, nullable=False),
        sa.Column("inputs", JSONType, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer()),
        sa.Column("result", JSONType),
        sa.Column("error", sa.String(2000)),
        sa.Column("outputs", JSONType, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("claim_id", sa.String(64)),
        sa.Column("claimed_until", UTCDateTime()),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_tasks_session_id_sessions"
        ),
    )
    op.create_index("ix_tasks_session_id_id", "tasks", ["session_id", "id"])
    op.create_index(
        "ix_tasks_pending_created_at",
        "tasks",
        ["created_at", "id"],
        sqlite_where=sa.text("state = 'pending'"),
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_tasks_running_claimed_until",
        "tasks",
        ["claimed_until"],
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )


def downgrade() -> None:
    op.drop_table("tasks")
    with op.batch_alter_table("admin_keys") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("leases") as batch:
        batch.drop_index("ix_leases_task_id")
        batch.drop_column("task_id")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_index("ix_artifacts_producer")
