"""Admission boundary (commit 29471d6): runs.admitted and runs.request_digest; request ids
and idempotency keys unique over admitted runs only (partial unique indexes instead of
the table's unique constraints).

Old admission refusals - ``status = 'refused' AND workflow_step = 'refused' AND
started_at IS NULL`` - are marked not admitted, so they stop holding their request ids.
Old admitted runs have no digest: repeating one of their request ids is an
``idempotency_conflict`` (fail closed).

Revision ID: 0004_admission_boundary
Revises: 0003_proposal_boundary
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_admission_boundary"
down_revision = "0003_proposal_boundary"
branch_labels = None
depends_on = None

OLD_CONSTRAINTS = ("uq_runs_tenant_request", "uq_runs_tenant_idem")
#: the partial unique indexes: name -> columns
ADMITTED_ONLY = {
    "uq_runs_admitted_request": ["tenant_id", "request_id"],
    "uq_runs_admitted_idem": ["tenant_id", "idempotency_key"],
}


def adopted(inspector: sa.Inspector) -> bool:
    columns = {c["name"] for c in inspector.get_columns("runs")}
    indexes = {i["name"] for i in inspector.get_indexes("runs")}
    return (
        {"admitted", "request_digest"} <= columns
        and set(ADMITTED_ONLY) <= indexes
        and not _old_constraints(inspector)
    )


def _old_constraints(inspector: sa.Inspector) -> list[str]:
    names = {str(c["name"]) for c in inspector.get_unique_constraints("runs")}
    return [n for n in OLD_CONSTRAINTS if n in names]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"] for c in inspector.get_columns("runs")}
    old = _old_constraints(inspector)
    if "admitted" not in columns:
        op.add_column(
            "runs",
            sa.Column("admitted", sa.Boolean(), nullable=False, server_default=sa.true()),
        )
        op.execute(
            "UPDATE runs SET admitted = FALSE "
            "WHERE status = 'refused' AND workflow_step = 'refused' AND started_at IS NULL"
        )
    if "request_digest" not in columns:
        op.add_column("runs", sa.Column("request_digest", sa.JSON(), nullable=True))
    if old:
        # SQLite cannot drop a constraint: batch mode rebuilds the table (rows and the
        # other indexes are copied)
        with op.batch_alter_table("runs") as batch:
            for name in old:
                batch.drop_constraint(name, type_="unique")
    indexes = {i["name"] for i in sa.inspect(bind).get_indexes("runs")}
    for name, cols in ADMITTED_ONLY.items():
        if name not in indexes:
            op.create_index(
                name,
                "runs",
                cols,
                unique=True,
                sqlite_where=sa.text("admitted = 1"),
                postgresql_where=sa.text("admitted"),
            )


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
