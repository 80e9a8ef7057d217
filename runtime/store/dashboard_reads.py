"""The operating dashboard's reads: active runs, spend of running runs, policy decisions,
tool health, eval captures. SQL only, every query scoped to a tenant (None: every tenant,
the operator's view) and bounded by a limit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from runtime.statuses import RunStatus
from runtime.store.slo_reads import SloReads
from runtime.store.tables import (
    approvals_t,
    decisions_t,
    effects_t,
    eval_captures_t,
    events_t,
    runs_t,
    spend_t,
)

#: the statuses of a run that is not over
ACTIVE = tuple(
    s.value
    for s in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.CANCEL_REQUESTED)
)
#: the ledger dimensions a run's budget limits
SPEND_DIMS = ("tokens", "model_calls", "tool_calls", "retries", "wall_clock_ms", "cost_micro_usd")
MAX_ROWS = 500
#: the trace events a tool's health is read from, and how many at most
TOOL_EVENT_KINDS = (
    "tool_start",
    "tool_end",
    "tool_replayed",
    "tool_retry_unknown",
    "tool_outcome_unknown",
)
MAX_TOOL_EVENTS = 20_000


def _bounded(limit: int) -> int:
    return max(1, min(int(limit), MAX_ROWS))


class DashboardReads(SloReads):
    def active_runs(self, tenant_id: str | None, limit: int = 50) -> list[dict[str, Any]]:
        """Runs not over, oldest first (the oldest is the one most likely stuck)."""
        c = runs_t.c
        query = (
            select(
                c.run_id,
                c.tenant_id,
                c.route,
                c.risk_class,
                c.status,
                c.workflow_step,
                c.next_step,
                c.priority,
                c.actor_id,
                c.created_at,
                c.release,
            )
            .where(c.status.in_(ACTIVE))
            .order_by(c.created_at, c.run_id)
            .limit(_bounded(limit))
        )
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def spend_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Spend per run and ledger dimension."""
        if not run_ids:
            return {}
        s = spend_t.c
        query = (
            select(s.run_id, *[func.coalesce(func.sum(s[d]), 0).label(d) for d in SPEND_DIMS])
            .where(s.run_id.in_(list(run_ids)[:MAX_ROWS]))
            .group_by(s.run_id)
        )
        with self._read_one() as conn:
            return {
                str(r["run_id"]): {d: int(r[d]) for d in SPEND_DIMS}
                for r in conn.execute(query).mappings()
            }

    def decision_summary(self, tenant_id: str | None, since: datetime) -> list[dict[str, Any]]:
        """Decisions since ``since`` per effect and rule."""
        d = decisions_t.c
        query = (
            select(d.decision, d.rule_id, func.count().label("count"))
            .where(d.at >= since)
            .group_by(d.decision, d.rule_id)
            .order_by(d.decision, d.rule_id)
        )
        if tenant_id is not None:
            query = query.where(d.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def recent_decisions(
        self, tenant_id: str | None, since: datetime, limit: int = 20
    ) -> list[dict[str, Any]]:
        """The newest decisions other than a plain allow: what an operator reviews."""
        d = decisions_t.c
        query = (
            select(d.run_id, d.tenant_id, d.step_no, d.tool, d.decision, d.rule_id, d.at)
            .where(d.at >= since, d.decision != "allow")
            .order_by(d.at.desc(), d.id.desc())
            .limit(_bounded(limit))
        )
        if tenant_id is not None:
            query = query.where(d.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def tool_effects(self, tenant_id: str | None, since: datetime) -> dict[str, dict[str, int]]:
        """Side-effect records per tool and status (failed, unknown ... against done)."""
        e = effects_t.c
        query = (
            select(e.tool, e.status, func.count(), func.coalesce(func.sum(e.attempts), 0))
            .where(e.started_at >= since)
            .group_by(e.tool, e.status)
        )
        if tenant_id is not None:
            query = query.where(e.tenant_id == tenant_id)
        out: dict[str, dict[str, int]] = {}
        with self._read_one() as conn:
            for tool, status, n, attempts in conn.execute(query):
                row = out.setdefault(str(tool), {"attempts": 0})
                row[str(status)] = int(n)
                row["attempts"] += int(attempts)
        return out

    def tool_decisions(self, tenant_id: str | None, since: datetime) -> dict[str, dict[str, int]]:
        """Policy decisions per tool and effect."""
        d = decisions_t.c
        query = (
            select(d.tool, d.decision, func.count())
            .where(d.at >= since)
            .group_by(d.tool, d.decision)
        )
        if tenant_id is not None:
            query = query.where(d.tenant_id == tenant_id)
        out: dict[str, dict[str, int]] = {}
        with self._read_one() as conn:
            for tool, decision, n in conn.execute(query):
                out.setdefault(str(tool), {})[str(decision)] = int(n)
        return out

    def tool_events(
        self, tenant_id: str | None, since: datetime, limit: int = MAX_TOOL_EVENTS
    ) -> list[tuple[str, dict[str, Any]]]:
        """The newest tool events (start, end, replays) since ``since``: the rates of the
        tool health panel are computed from them, over at most ``limit`` events."""
        ev = events_t.c
        query = (
            select(ev.kind, ev.data)
            .where(ev.at >= since, ev.kind.in_(TOOL_EVENT_KINDS))
            .order_by(ev.at.desc())
            .limit(max(1, min(limit, MAX_TOOL_EVENTS)))
        )
        if tenant_id is not None:
            query = query.where(ev.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [(str(k), dict(d or {})) for k, d in conn.execute(query)]

    def effects_of(self, run_id: str, tenant_id: str | None) -> list[dict[str, Any]]:
        """A run's side-effect records with their idempotency keys (never their args)."""
        e = effects_t.c
        query = (
            select(
                e.step_no,
                e.tool,
                e.side_effect_class,
                e.status,
                e.idempotency_key,
                e.attempts,
                e.error,
                e.started_at,
                e.finished_at,
            )
            .where(e.run_id == run_id)
            .order_by(e.step_no, e.id)
            .limit(MAX_ROWS)
        )
        if tenant_id is not None:
            query = query.where(e.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def approval_ids_of(self, run_id: str, tenant_id: str | None) -> list[str]:
        a = approvals_t.c
        query = (
            select(a.approval_id).where(a.run_id == run_id).order_by(a.requested_at).limit(MAX_ROWS)
        )
        if tenant_id is not None:
            query = query.where(a.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [str(r[0]) for r in conn.execute(query)]

    def captures(self, tenant_id: str | None, limit: int = 20) -> list[dict[str, Any]]:
        """Eval fixtures captured from runs, newest first ([] before the table exists)."""
        if not self.table_exists(str(eval_captures_t.name)):
            return []
        c = eval_captures_t.c
        query = (
            select(c.run_id, c.tenant_id, c.name, c.rule, c.captured_at)
            .order_by(c.captured_at.desc())
            .limit(_bounded(limit))
        )
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
