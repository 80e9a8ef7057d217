"""Releases: runs.release, and the release_state and release_audit tables.

``runs.release`` names the release a run runs under (a new nullable column: existing runs
and routes without releases have none). ``release_state`` is a route's live release state
as the operator set it (the record Redis's copy is rebuilt from); ``release_audit`` every
change with who, when, why and a promotion's gate result.

Revision ID: 0012_releases
Revises: 0011_eval_captures
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_releases"
down_revision = "0011_eval_captures"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _has_release_column(inspector: sa.Inspector) -> bool:
    return "release" in {c["name"] for c in inspector.get_columns("runs")}


def adopted(inspector: sa.Inspector) -> bool:
    return (
        _has_release_column(inspector)
        and inspector.has_table("release_state")
        and inspector.has_table("release_audit")
    )


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not _has_release_column(inspector):
        op.add_column("runs", sa.Column("release", sa.String(length=100), nullable=True))
    if not inspector.has_table("release_state"):
        op.create_table(
            "release_state",
            sa.Column("namespace", sa.String(length=100), primary_key=True),
            sa.Column("route", sa.String(length=100), primary_key=True),
            sa.Column("active", sa.String(length=100), nullable=False),
            sa.Column("canary", sa.String(length=100), nullable=True),
            sa.Column("percent", sa.Float(), nullable=True),
            sa.Column("tenants", sa.JSON(), nullable=True),
            sa.Column("deployed", sa.String(length=100), nullable=False),
            sa.Column("generation", sa.Integer(), nullable=False),
            sa.Column("updated_by", sa.String(length=200), nullable=False),
            sa.Column("updated_at", _TIME, nullable=False),
        )
    if not inspector.has_table("release_audit"):
        op.create_table(
            "release_audit",
            sa.Column("id", _BIGINT_PK, primary_key=True, autoincrement=True),
            sa.Column("namespace", sa.String(length=100), nullable=False),
            sa.Column("route", sa.String(length=100), nullable=False),
            sa.Column("action", sa.String(length=20), nullable=False),
            sa.Column("release", sa.String(length=100), nullable=True),
            sa.Column("before", sa.JSON(), nullable=True),
            sa.Column("after", sa.JSON(), nullable=True),
            sa.Column("gate", sa.JSON(), nullable=True),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("at", _TIME, nullable=False),
        )
        op.create_index("ix_release_audit_route", "release_audit", ["namespace", "route", "id"])


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("release_audit"):
        op.drop_index("ix_release_audit_route", table_name="release_audit")
        op.drop_table("release_audit")
    if inspector.has_table("release_state"):
        op.drop_table("release_state")
    if _has_release_column(inspector):
        op.drop_column("runs", "release")
