"""The import ledger: which file versions a session imported, as which artifacts.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import UTCDateTime

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "import_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("origin_key", sa.String(64), nullable=False),
        sa.Column("source_key", sa.String(64), nullable=False),
        sa.Column("path_key", sa.String(64), nullable=False),
        sa.Column("artifact_id", sa.String(36), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("replaces", sa.String(36)),
        sa.Column("task_id", sa.String(36)),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_import_ledger"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_import_ledger_session_id_sessions"
        ),
        sa.UniqueConstraint(
            "session_id", "origin_key", name="uq_import_ledger_session_id_origin_key"
        ),
    )
    op.create_index(
        "ix_import_ledger_session_id_path_key_id", "import_ledger", ["session_id", "path_key", "id"]
    )
    op.create_index(
        "ix_import_ledger_session_id_source_key_id",
        "import_ledger",
        ["session_id", "source_key", "id"],
    )
    op.create_index(
        "ix_import_ledger_session_id_artifact_id", "import_ledger", ["session_id", "artifact_id"]
    )


def downgrade() -> None:
    op.drop_table("import_ledger")
