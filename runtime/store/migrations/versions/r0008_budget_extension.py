"""Budget extensions (autonomy levels and ``on_budget_exhausted: ask``): runs.budget_extension.

A run whose route says ``on_budget_exhausted: ask`` waits when its own budget refuses a
step (``needs_approval:budget_extension``); the column keeps what it asks for
(``requested``) and what was approved (``granted``, added to its per-run limits from then
on). A new nullable JSON column: existing runs have none, so their limits are as before.

Revision ID: 0008_budget_extension
Revises: 0007_approvals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_budget_extension"
down_revision = "0007_approvals"
branch_labels = None
depends_on = None


def adopted(inspector: sa.Inspector) -> bool:
    return "budget_extension" in {c["name"] for c in inspector.get_columns("runs")}


def upgrade() -> None:
    if not adopted(sa.inspect(op.get_bind())):
        op.add_column("runs", sa.Column("budget_extension", sa.JSON(), nullable=True))


def downgrade() -> None:
    if adopted(sa.inspect(op.get_bind())):
        op.drop_column("runs", "budget_extension")
