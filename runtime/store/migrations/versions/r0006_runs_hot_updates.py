"""Checkpoints as HOT updates on PostgreSQL: no index of runs covers updated_at; runs(status)
and runs(status, updated_at) become runs(status, created_at); runs gets fillfactor 80.

Every step's checkpoint updates its run row, and it always changes ``updated_at``. While an
index covered ``updated_at`` (the reconciler's ``(status, updated_at)``), PostgreSQL could
make no checkpoint a HOT (heap-only) update, so each one added an entry to every index of
``runs``. Without it, a checkpoint that leaves ``status`` as it is (every step but a run's
start and its last) changes no indexed column and, with room on its page (fillfactor 80
leaves a fifth of each page for new row versions), touches no index at all.

``(status, created_at)`` serves everything the two status indexes did: ``list_runs`` by
status, newest first, reads it backwards and stops at its limit (no sort); the live-run
reads (recovery's ``live_runs`` / ``live_run_count`` / the spend of live runs, the
reconciler's ``idle_runs``) find the queued and running runs through it, and the
reconciler filters those on ``updated_at``. SQLite gets the same indexes; fillfactor is
PostgreSQL's only. The fillfactor applies to pages written from now on: a row on a page
that is already full moves once, at its next update, to a page with room.

Revision ID: 0006_runs_hot_updates
Revises: 0005_state_generations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_runs_hot_updates"
down_revision = "0005_state_generations"
branch_labels = None
depends_on = None

#: the index this revision makes: name -> columns
NEW = {"ix_runs_status_created": ["status", "created_at"]}
#: the indexes it drops (made again by the downgrade): name -> columns
OLD = {"ix_runs_status": ["status"], "ix_runs_status_updated": ["status", "updated_at"]}
FILLFACTOR = 80


def _indexes(inspector: sa.Inspector) -> set[str]:
    return {str(i["name"]) for i in inspector.get_indexes("runs")}


def _fillfactor_set(inspector: sa.Inspector) -> bool:
    if inspector.dialect.name != "postgresql":
        return True
    options = inspector.get_table_options("runs").get("postgresql_with") or {}
    return bool(options.get("fillfactor") == str(FILLFACTOR))


def adopted(inspector: sa.Inspector) -> bool:
    indexes = _indexes(inspector)
    return set(NEW) <= indexes and not set(OLD) & indexes and _fillfactor_set(inspector)


def upgrade() -> None:
    bind = op.get_bind()
    indexes = _indexes(sa.inspect(bind))
    # the new index first: no moment without one the live-run reads can use
    for name, columns in NEW.items():
        if name not in indexes:
            op.create_index(name, "runs", columns)
    for name in OLD:
        if name in indexes:
            op.drop_index(name, table_name="runs")
    if bind.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE runs SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    bind = op.get_bind()
    indexes = _indexes(sa.inspect(bind))
    for name, columns in OLD.items():
        if name not in indexes:
            op.create_index(name, "runs", columns)
    for name in NEW:
        if name in indexes:
            op.drop_index(name, table_name="runs")
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE runs RESET (fillfactor)")
