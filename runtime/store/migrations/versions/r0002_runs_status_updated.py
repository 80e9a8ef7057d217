"""The reconciler's index on runs(status, updated_at), for databases made before it existed.

The baseline declares it, but ``create_all`` never adds an index to a table that exists:
a database created before the index (commit 72609ab) and adopted at the baseline lacks it.

Revision ID: 0002_runs_status_updated
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_runs_status_updated"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

INDEX = "ix_runs_status_updated"
#: revision 0006 replaces it: a database holding this one is past this revision as well
SUPERSEDED_BY = "ix_runs_status_created"


def adopted(inspector: sa.Inspector) -> bool:
    return bool({INDEX, SUPERSEDED_BY} & {i["name"] for i in inspector.get_indexes("runs")})


def upgrade() -> None:
    if not adopted(sa.inspect(op.get_bind())):
        op.create_index(INDEX, "runs", ["status", "updated_at"])


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
