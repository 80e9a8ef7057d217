"""Operator levers: the operator_levers table (levers on now) and operator_audit (every
lever pulled, dry runs included). New tables: existing rows are untouched.

Revision ID: 0012_operator_levers
Revises: 0010_event_sources (re-chained after 0011 when the releases revision lands)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_operator_levers"
down_revision = "0010_event_sources"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("operator_levers") and inspector.has_table("operator_audit")


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
    if not inspector.has_table("operator_audit"):
        op.create_table(
            "operator_audit",
            sa.Column("id", _BIGINT_PK, primary_key=True, autoincrement=True),
            sa.Column("at", _TIME, nullable=False),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("lever", sa.String(length=40), nullable=False),
            sa.Column("target", sa.String(length=100), nullable=False),
            sa.Column("old", sa.JSON(), nullable=True),
            sa.Column("new", sa.JSON(), nullable=True),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("dry_run", sa.Boolean(), nullable=False),
            sa.Column("affected", sa.Integer(), nullable=False),
        )
        op.create_index("ix_operator_audit_at", "operator_audit", ["at"])


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("operator_audit"):
        op.drop_index("ix_operator_audit_at", table_name="operator_audit")
        op.drop_table("operator_audit")
    if inspector.has_table("operator_levers"):
        op.drop_table("operator_levers")
