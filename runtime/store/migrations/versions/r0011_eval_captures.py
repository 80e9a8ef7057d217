"""Evals: the eval_captures table, one row per run an eval fixture was captured from, so
a capture rule captures a run once (``agentrt evals sweep``). A new table: existing runs
are untouched.

Revision ID: 0011_eval_captures
Revises: 0010_event_sources
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_eval_captures"
down_revision = "0010_event_sources"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("eval_captures")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("eval_captures"):
        op.create_table(
            "eval_captures",
            sa.Column("run_id", sa.String(length=40), primary_key=True),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("name", sa.String(length=100), nullable=False),
            sa.Column("path", sa.String(length=1000), nullable=False),
            sa.Column("rule", sa.String(length=300), nullable=True),
            sa.Column("captured_at", _TIME, nullable=False),
        )


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("eval_captures"):
        op.drop_table("eval_captures")
