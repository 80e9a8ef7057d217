"""Plans: runs.plan, the run's accepted plan and how far it has followed it.

A new nullable JSON column on the run row (read with it, so a step compares a proposal with
the plan at no extra query); existing runs have no plan.

Revision ID: 0016_run_plans
Revises: 0015_memories
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_run_plans"
down_revision = "0015_memories"
branch_labels = None
depends_on = None


def _has_plan_column(inspector: sa.Inspector) -> bool:
    return "plan" in {c["name"] for c in inspector.get_columns("runs")}


def adopted(inspector: sa.Inspector) -> bool:
    return _has_plan_column(inspector)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not _has_plan_column(inspector):
        op.add_column("runs", sa.Column("plan", sa.JSON(), nullable=True))


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if _has_plan_column(inspector):
        op.drop_column("runs", "plan")
