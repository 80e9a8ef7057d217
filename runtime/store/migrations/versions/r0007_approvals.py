"""Approvals bound to the exact action: the approvals table.

A call a policy rule sends to a human (``require_approval``, ``escalate``) is recorded with
the digest of the exact action (tool, tool schema version, validated arguments with
defaults, policy version, tenant, run, step), what the approver is shown, who may decide,
when it expires, and the decision with its latency. ``runs.approval_id`` names the pending
one of a waiting run.

Revision ID: 0007_approvals
Revises: 0006_runs_hot_updates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_approvals"
down_revision = "0006_runs_hot_updates"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
#: name -> columns
INDEXES = {
    "ix_approvals_tenant_status": ["tenant_id", "status"],
    "ix_approvals_status_expires": ["status", "expires_at"],
    "ix_approvals_owner_status": ["owner", "status"],
}


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("approvals")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("approvals"):
        op.create_table(
            "approvals",
            sa.Column("approval_id", sa.String(length=40), primary_key=True),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("run_id", sa.String(length=40), nullable=False),
            sa.Column("step_no", sa.Integer(), nullable=False),
            sa.Column("route", sa.String(length=100), nullable=False),
            sa.Column("tool", sa.String(length=200), nullable=False),
            sa.Column("tool_version", sa.String(length=200), nullable=False),
            sa.Column("policy_version", sa.String(length=200), nullable=False),
            sa.Column("digest", sa.String(length=64), nullable=False),
            sa.Column("args", sa.JSON(), nullable=True),
            sa.Column("rule_id", sa.String(length=100), nullable=False),
            sa.Column("effect", sa.String(length=20), nullable=False),
            sa.Column("owner", sa.String(length=100), nullable=True),
            sa.Column("approvers", sa.JSON(), nullable=True),
            sa.Column("submitted_by", sa.String(length=200), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("requested_at", _TIME, nullable=False),
            sa.Column("expires_at", _TIME, nullable=False),
            sa.Column("decided_by", sa.String(length=200), nullable=True),
            sa.Column("decided_at", _TIME, nullable=True),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("latency_ms", sa.BigInteger(), nullable=True),
            sa.Column("consumed_by", sa.String(length=120), nullable=True),
            sa.Column("consumed_at", _TIME, nullable=True),
            sa.UniqueConstraint("run_id", "step_no", name="uq_approvals_run_step"),
        )
    existing = {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes("approvals")}
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, "approvals", columns)


def downgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("approvals"):
        op.drop_table("approvals")
