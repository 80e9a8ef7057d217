"""Fail-closed Redis state and one config owner (commit b39713d): the applied_configs and
state_generations tables.

Revision ID: 0005_state_generations
Revises: 0004_admission_boundary
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_state_generations"
down_revision = "0004_admission_boundary"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("applied_configs") and inspector.has_table("state_generations")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("applied_configs"):
        op.create_table(
            "applied_configs",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("namespace", sa.String(length=100), nullable=False),
            sa.Column("digest", sa.String(length=64), nullable=False),
            sa.Column("version", sa.String(length=100), nullable=False),
            sa.Column("document", sa.JSON(), nullable=False),
            sa.Column("source", sa.String(length=500), nullable=False),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("applied_at", _TIME, nullable=False),
        )
        op.create_index("ix_applied_configs_ns", "applied_configs", ["namespace", "id"])
        op.create_index("ix_applied_configs_digest", "applied_configs", ["digest"])
    if not inspector.has_table("state_generations"):
        op.create_table(
            "state_generations",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("namespace", sa.String(length=100), nullable=False),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("reason", sa.String(length=200), nullable=False),
            sa.Column("at", _TIME, nullable=False),
        )
        op.create_index("ix_state_generations_ns", "state_generations", ["namespace", "id"])


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
