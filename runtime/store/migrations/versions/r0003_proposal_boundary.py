"""Proposal boundary (commit 0029cda): the pending_secrets table; token and spend counters
as 64-bit integers (a day's or a run's sums are bounded by the ledger's 64-bit counters).

Revision ID: 0003_proposal_boundary
Revises: 0002_runs_status_updated
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_proposal_boundary"
down_revision = "0002_runs_status_updated"
branch_labels = None
depends_on = None

#: the counters that became BIGINT, per table
WIDENED = {
    "steps": ("input_tokens", "output_tokens"),
    "spend_records": (
        "tokens",
        "input_tokens",
        "output_tokens",
        "model_calls",
        "tool_calls",
        "retries",
        "wall_clock_ms",
        "cost_micro_usd",
    ),
}


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("pending_secrets") and not _narrow(inspector)


def _narrow(inspector: sa.Inspector) -> dict[str, list[str]]:
    """The counters still declared narrower than BIGINT, per table."""
    narrow: dict[str, list[str]] = {}
    for table, names in WIDENED.items():
        types = {c["name"]: c["type"] for c in inspector.get_columns(table)}
        found = [n for n in names if not isinstance(types[n], sa.BigInteger)]
        if found:
            narrow[table] = found
    return narrow


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("pending_secrets"):
        op.create_table(
            "pending_secrets",
            sa.Column("run_id", sa.String(length=40), primary_key=True),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("args", sa.JSON(), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        )
    for table, names in _narrow(inspector).items():
        # SQLite keeps any integer in any INTEGER column; the declared type is changed all
        # the same (a table rebuild) so an upgraded database equals a new one
        with op.batch_alter_table(table) as batch:
            for name in names:
                batch.alter_column(
                    name, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
                )


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
