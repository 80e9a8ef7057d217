"""Memories: the memories table (what runs remembered, with provenance and retention).
A new table: existing rows are untouched.

Revision ID: 0015_memories
Revises: 0014_retrieval
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_memories"
down_revision = "0014_retrieval"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("memories")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("memories"):
        return
    op.create_table(
        "memories",
        sa.Column("memory_id", sa.String(length=40), primary_key=True),
        sa.Column("tenant_id", sa.String(length=100), nullable=False),
        sa.Column("namespace", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("retention", sa.String(length=40), nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("step_no", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("forgotten_at", _TIME, nullable=True),
        sa.Column("forgotten_by", sa.String(length=200), nullable=True),
        sa.UniqueConstraint("run_id", "step_no", name="uq_memories_run_step"),
    )
    op.create_index("ix_memories_key", "memories", ["tenant_id", "namespace", "key"])
    op.create_index("ix_memories_expires", "memories", ["expires_at"])
    op.create_index("ix_memories_run_id", "memories", ["run_id"])


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("memories"):
        op.drop_table("memories")
