"""Event-triggered runs: the event_records and event_keys tables.

``event_records``: one row per (source, event id) that started a run, inserted with the
run, so a replayed webhook returns its first run; ``seq`` is the arrival order. The
``event_keys`` rows are the compare-and-set that lets one run per ordering key of a
``per_key`` source run at a time. New tables: existing runs are untouched.

Revision ID: 0010_event_sources
Revises: 0009_api_keys
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_event_sources"
down_revision = "0009_api_keys"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("event_records") and inspector.has_table("event_keys")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("event_records"):
        op.create_table(
            "event_records",
            sa.Column("seq", _BIGINT_PK, primary_key=True, autoincrement=True),
            sa.Column("source", sa.String(length=40), nullable=False),
            sa.Column("event_id", sa.String(length=200), nullable=False),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("run_id", sa.String(length=40), nullable=False),
            sa.Column("body_sha256", sa.String(length=64), nullable=False),
            sa.Column("order_key", sa.String(length=64), nullable=True),
            sa.Column("received_at", _TIME, nullable=False),
            sa.UniqueConstraint("source", "event_id", name="uq_event_records_source_event"),
        )
        op.create_index("ix_event_records_key_seq", "event_records", ["source", "order_key", "seq"])
        op.create_index("ix_event_records_run", "event_records", ["run_id"])
    if not inspector.has_table("event_keys"):
        op.create_table(
            "event_keys",
            sa.Column("source", sa.String(length=40), primary_key=True),
            sa.Column("order_key", sa.String(length=64), primary_key=True),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("active_run_id", sa.String(length=40), nullable=True),
            sa.Column("updated_at", _TIME, nullable=False),
        )


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table("event_keys"):
        op.drop_table("event_keys")
    if inspector.has_table("event_records"):
        op.drop_index("ix_event_records_run", table_name="event_records")
        op.drop_index("ix_event_records_key_seq", table_name="event_records")
        op.drop_table("event_records")
