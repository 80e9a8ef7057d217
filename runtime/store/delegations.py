"""The reads delegation makes on the runs table: a run's children, the parents whose
child ended, and the parent-child pairs the ledger's recovery rebuilds holds from. Every
read of one run's children is scoped to its tenant (a child inherits its parent's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.orm import aliased

from runtime.statuses import TERMINAL_STATUSES, RunStatus
from runtime.store.connections import StoreConnections
from runtime.store.tables import runs_t

#: what a parent waiting for a child stores as its stop reason's kind
DELEGATED = "delegated"
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATUSES))
_CHILD_COLUMNS = (
    runs_t.c.run_id,
    runs_t.c.parent_run_id,
    runs_t.c.parent_step,
    runs_t.c.tenant_id,
    runs_t.c.route,
    runs_t.c.status,
    runs_t.c.stop_reason,
    runs_t.c.output,
    runs_t.c.depth,
    runs_t.c.delegated_budget,
)


class DelegationRows(StoreConnections):
    def child_count(self, run_id: str, tenant_id: str) -> int:
        """Child runs ``run_id`` started, in all (its fan-out so far)."""
        query = select(func.count()).where(
            runs_t.c.parent_run_id == run_id, runs_t.c.tenant_id == tenant_id
        )
        with self._read_one() as conn:
            return int(conn.execute(query).scalar() or 0)

    def children(self, run_id: str, tenant_id: str) -> list[dict[str, Any]]:
        """The child runs of ``run_id``, oldest first."""
        query = (
            select(*_CHILD_COLUMNS)
            .where(runs_t.c.parent_run_id == run_id, runs_t.c.tenant_id == tenant_id)
            .order_by(runs_t.c.created_at)
        )
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def ended_children_of_waiting(self, limit: int = 100) -> list[dict[str, Any]]:
        """Ended children whose parent still waits for them (its resume was lost: the
        process that ended the child died first); the reconciler resumes those parents."""
        parent = aliased(runs_t)
        query = (
            select(*_CHILD_COLUMNS)
            .join_from(runs_t, parent, parent.c.run_id == runs_t.c.parent_run_id)
            .where(
                runs_t.c.status.in_(_TERMINAL),
                parent.c.tenant_id == runs_t.c.tenant_id,
                parent.c.status == RunStatus.WAITING.value,
                parent.c.stop_reason == literal(f"{DELEGATED}:") + runs_t.c.run_id,
            )
            .limit(limit)
        )
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def delegations_of_open_parents(self) -> list[dict[str, Any]]:
        """Every descendant of a parent that has not ended, deepest first: what the
        ledger's recovery rebuilds the parents' delegation holds and settled spend from.
        Descendants, not only children: an ended child's spend includes what its own
        (ended) children spent, summed up the tree deepest first."""
        parent = aliased(runs_t)
        tree = (
            select(runs_t.c.run_id)
            .join_from(runs_t, parent, parent.c.run_id == runs_t.c.parent_run_id)
            .where(parent.c.status.notin_(_TERMINAL))
            .cte("delegation_tree", recursive=True)
        )
        below = aliased(runs_t)
        tree = tree.union_all(select(below.c.run_id).where(below.c.parent_run_id == tree.c.run_id))
        query = (
            select(*_CHILD_COLUMNS)
            .where(runs_t.c.run_id.in_(select(tree.c.run_id)))
            .order_by(runs_t.c.depth.desc())
        )
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
