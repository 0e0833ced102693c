"""Clients and protocols: resumable uploads, the event log, idempotency keys, link keys.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ephemera.catalog.schema import JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    _upgrade_uploads()
    _upgrade_events()
    _upgrade_idempotency()
    _upgrade_link_keys()


def downgrade() -> None:
    _downgrade_link_keys()
    _downgrade_idempotency()
    _downgrade_events()
    _downgrade_uploads()


# -- tus resumable uploads ---------------------------------------------------------------------


def _upgrade_uploads() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("length", sa.BigInteger()),
        sa.Column("upload_offset", sa.BigInteger(), nullable=False),
        sa.Column("meta", JSONType, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("artifact_id", sa.String(36)),
        sa.Column("writer", sa.String(64)),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime()),
        sa.Column("written_generation", sa.Integer()),
        sa.Column("next_piece", sa.Integer(), nullable=False),
        sa.Column("pieces", JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_uploads_session_id_sessions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_uploads"),
    )
    op.create_index("ix_uploads_session_id_id", "uploads", ["session_id", "id"])
    op.create_index("ix_uploads_expires_at_id", "uploads", ["expires_at", "id"])


def _downgrade_uploads() -> None:
    op.drop_index("ix_uploads_expires_at_id", table_name="uploads")
    op.drop_index("ix_uploads_session_id_id", table_name="uploads")
    op.drop_table("uploads")


# -- the event log -----------------------------------------------------------------------------


def _upgrade_events() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", JSONType, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_session_id_id", "events", ["session_id", "id"])
    op.create_index("ix_events_at", "events", ["at"])


def _downgrade_events() -> None:
    op.drop_table("events")


# -- idempotency keys --------------------------------------------------------------------------


def _upgrade_idempotency() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("body_hash", sa.String(64)),
        sa.Column("holder", sa.String(32)),
        sa.Column("status", sa.Integer()),
        sa.Column("response", sa.Text()),
        sa.Column("secret", sa.String(200)),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def _downgrade_idempotency() -> None:
    op.drop_table("idempotency_keys")


# -- signing keys of download links -------------------------------------------------------------


def _upgrade_link_keys() -> None:
    op.create_table(
        "link_keys",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(64)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("seq", name="pk_link_keys"),
        sa.UniqueConstraint("id", name="uq_link_keys_id"),
    )


def _downgrade_link_keys() -> None:
    op.drop_table("link_keys")
