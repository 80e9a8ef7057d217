"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def adopted(inspector: sa.Inspector) -> bool:
    """True when an unversioned database already has what this revision makes."""
    raise NotImplementedError


def upgrade() -> None:
    # look before creating: an adopted database may already have part of this revision
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
