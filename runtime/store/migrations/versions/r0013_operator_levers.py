"""Operator levers: the operator_levers table (the levers on now). Their changes are
audited in the existing operator_audit table (action ``ops.<lever>``). A new table:
existing rows are untouched.

Revision ID: 0013_operator_levers
Revises: 0012_releases
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_operator_levers"
down_revision = "0012_releases"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("operator_levers")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("operator_levers"):
        op.create_table(
            "operator_levers",
            sa.Column("lever", sa.String(length=40), primary_key=True),
            sa.Column("target", sa.String(length=100), primary_key=True),
            sa.Column("value", sa.JSON(), nullable=True),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("updated_at", _TIME, nullable=False),
        )


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("operator_levers"):
        op.drop_table("operator_levers")
