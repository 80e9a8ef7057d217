"""Per-tenant API keys of the HTTP API: the api_keys table.

A key is ``agrt_<prefix>_<secret>``; the table keeps the prefix (unique, the look-up) and
the SHA-256 of the secret, never the secret. Scopes are a JSON list; ``expires_at`` and
``revoked_at`` end a key (kept, not deleted, for the audit).

Revision ID: 0009_api_keys
Revises: 0008_budget_extension
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_api_keys"
down_revision = "0008_budget_extension"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
INDEXES = {"ix_api_keys_tenant": ["tenant_id"]}


def adopted(inspector: sa.Inspector) -> bool:
    return inspector.has_table("api_keys")


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("api_keys"):
        op.create_table(
            "api_keys",
            sa.Column("key_id", sa.String(length=40), primary_key=True),
            sa.Column("prefix", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=100), nullable=False),
            sa.Column("name", sa.String(length=100), nullable=False),
            sa.Column("secret_hash", sa.String(length=64), nullable=False),
            sa.Column("scopes", sa.JSON(), nullable=True),
            sa.Column("created_at", _TIME, nullable=False),
            sa.Column("created_by", sa.String(length=200), nullable=False),
            sa.Column("expires_at", _TIME, nullable=True),
            sa.Column("revoked_at", _TIME, nullable=True),
            sa.Column("revoked_by", sa.String(length=200), nullable=True),
            sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        )
    existing = {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes("api_keys")}
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, "api_keys", columns)


def downgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("api_keys"):
        op.drop_table("api_keys")
