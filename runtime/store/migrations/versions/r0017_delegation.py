"""Delegation: runs.parent_run_id, parent_step, depth and delegated_budget, and the
spend_records.delegations dimension.

A child run names the run that started it (``parent_run_id``, the step that did:
``parent_step``), how deep it is below a submitted run (``depth``, 0 for every existing
run) and the per-run limits carved out of its parent's budget (``delegated_budget``,
ledger units; None for every existing run). ``spend_records.delegations`` is the ledger's
new dimension (0 for every existing row). New nullable or defaulted columns: existing rows
are untouched.

Revision ID: 0017_delegation
Revises: 0016_run_plans
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_delegation"
down_revision = "0016_run_plans"
branch_labels = None
depends_on = None

_RUN_COLUMNS = ("parent_run_id", "parent_step", "depth", "delegated_budget")


def _columns(inspector: sa.Inspector, table: str) -> set[str]:
    return {c["name"] for c in inspector.get_columns(table)}


def adopted(inspector: sa.Inspector) -> bool:
    return set(_RUN_COLUMNS) <= _columns(inspector, "runs") and "delegations" in _columns(
        inspector, "spend_records"
    )


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    runs = _columns(inspector, "runs")
    if "parent_run_id" not in runs:
        op.add_column("runs", sa.Column("parent_run_id", sa.String(length=40), nullable=True))
        op.create_index("ix_runs_parent", "runs", ["parent_run_id"])
    if "parent_step" not in runs:
        op.add_column("runs", sa.Column("parent_step", sa.Integer(), nullable=True))
    if "depth" not in runs:
        op.add_column("runs", sa.Column("depth", sa.Integer(), nullable=False, server_default="0"))
    if "delegated_budget" not in runs:
        op.add_column("runs", sa.Column("delegated_budget", sa.JSON(), nullable=True))
    if "delegations" not in _columns(inspector, "spend_records"):
        op.add_column(
            "spend_records",
            sa.Column("delegations", sa.BigInteger(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "delegations" in _columns(inspector, "spend_records"):
        with op.batch_alter_table("spend_records") as batch:
            batch.drop_column("delegations")
    runs = _columns(inspector, "runs")
    with op.batch_alter_table("runs") as batch:
        if "parent_run_id" in runs:
            batch.drop_index("ix_runs_parent")
        for name in _RUN_COLUMNS:
            if name in runs:
                batch.drop_column(name)
