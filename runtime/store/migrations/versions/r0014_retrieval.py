"""Retrieval: the documents table with its full-text index (SQLite FTS5 kept by triggers,
PostgreSQL a generated tsvector column with a GIN index: ``runtime.store.search_ddl``) and
the evidence table (what each step's model was shown). New tables: existing rows are
untouched.

Revision ID: 0014_retrieval
Revises: 0013_operator_levers
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from runtime.store import search_ddl

revision = "0014_retrieval"
down_revision = "0013_operator_levers"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("documents") and inspector.has_table("evidence")


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("documents"):
        op.create_table(
            "documents",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("doc_id", sa.String(length=100), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("source", sa.String(length=100), nullable=False),
            sa.Column("title", sa.String(length=500), nullable=False),
            sa.Column("content", sa.Text(), nullable=False),
            sa.Column("labels", sa.Text(), nullable=False),
            sa.Column("created_at", _TIME, nullable=False),
            sa.Column("updated_at", _TIME, nullable=False),
            sa.UniqueConstraint("tenant_id", "doc_id", name="uq_documents_tenant_doc"),
        )
        op.create_index(
            "ix_documents_tenant_source", "documents", ["tenant_id", "source", "updated_at"]
        )
    search_ddl.create(bind)
    if not inspector.has_table("evidence"):
        op.create_table(
            "evidence",
            sa.Column("run_id", sa.String(length=40), primary_key=True),
            sa.Column("evidence_id", sa.String(length=40), primary_key=True),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("step_no", sa.Integer(), nullable=False),
            sa.Column("doc_id", sa.String(length=100), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("source", sa.String(length=100), nullable=False),
            sa.Column("score", sa.Float(), nullable=False),
            sa.Column("retrieved_at", _TIME, nullable=False),
        )


def downgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if inspector.has_table("evidence"):
        op.drop_table("evidence")
    if bind.dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS documents_fts")
    if inspector.has_table("documents"):
        op.drop_table("documents")
