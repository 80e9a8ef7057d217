"""What the runtime SLO report (``runtime.slo``) reads: counts of runs and records that
meet an objective and the first few that do not, over runs created since a time, on
some routes, within one tenant or (the operator) all of them. Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.sql import Select

from runtime.statuses import TERMINAL_STATUSES, RunStatus
from runtime.store.connections import StoreConnections
from runtime.store.tables import approvals_t, decisions_t, effects_t, events_t, runs_t, spend_t

#: the trace events a complete trace has: the run's admission and its stop
TRACE_START_KIND = "admission"
TRACE_STOP_KIND = "stop"
_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


@dataclass(frozen=True)
class Scope:
    """Which runs a measurement covers: created at or after ``since``, on ``routes``
    (None: every route), of ``tenant_id`` (None: every tenant, the operator's view)."""

    since: datetime
    routes: Sequence[str] | None = None
    tenant_id: str | None = None


@dataclass(frozen=True)
class Coverage:
    """``total`` runs or records measured, ``missing`` of them fail the objective;
    ``run_ids``: the first few of those runs."""

    total: int
    missing: int
    run_ids: list[str]


@dataclass(frozen=True)
class RouteCost:
    route: str
    cost_micro_usd: int
    completed: int
    #: the runs that cost most on the route, most first
    top_run_ids: list[str]


class SloReads(StoreConnections):
    def _runs_in(self, scope: Scope) -> list[ColumnElement[bool]]:
        c = runs_t.c
        where: list[ColumnElement[bool]] = [c.created_at >= scope.since]
        if scope.routes is not None:
            where.append(c.route.in_(list(scope.routes)))
        if scope.tenant_id is not None:
            where.append(c.tenant_id == scope.tenant_id)
        return where

    def _coverage(self, base: Select[Any], failing: ColumnElement[bool], limit: int) -> Coverage:
        """Counts over ``base`` (a select of ``run_id`` rows) and the first runs failing."""
        sub = base.subquery()
        with self._read_one() as conn:
            total = int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
            bad = base.where(failing)
            missing = int(
                conn.execute(select(func.count()).select_from(bad.subquery())).scalar_one()
            )
            ids = [str(r[0]) for r in conn.execute(bad.limit(limit))] if missing else []
        return Coverage(total, missing, list(dict.fromkeys(ids)))

    def _has_event(self, kind: str) -> ColumnElement[bool]:
        return exists().where(events_t.c.run_id == runs_t.c.run_id, events_t.c.kind == kind)

    def trace_coverage(self, scope: Scope, risk_class: str = "high", limit: int = 5) -> Coverage:
        """Ended runs of ``risk_class``, and those whose trace lacks its admission or its
        stop event (a run still going cannot have its stop yet: it is not counted)."""
        c = runs_t.c
        base = (
            select(c.run_id)
            .where(*self._runs_in(scope), c.risk_class == risk_class, c.status.in_(_TERMINAL))
            .order_by(c.created_at.desc(), c.run_id)
        )
        failing = or_(~self._has_event(TRACE_START_KIND), ~self._has_event(TRACE_STOP_KIND))
        return self._coverage(base, failing, limit)

    def decision_coverage(self, scope: Scope, limit: int = 5) -> Coverage:
        """Side-effect records of the scope's runs, and those whose call has no policy
        decision (same run, step and tool)."""
        e, d = effects_t.c, decisions_t.c
        decided = exists().where(d.run_id == e.run_id, d.step_no == e.step_no, d.tool == e.tool)
        base = (
            select(e.run_id)
            .select_from(effects_t.join(runs_t, runs_t.c.run_id == e.run_id, isouter=True))
            .where(
                # a record whose run row is gone is measured too (and fails nothing else)
                or_(runs_t.c.run_id.is_(None), and_(*self._runs_in(scope))),
                e.started_at >= scope.since,
            )
            .order_by(e.started_at.desc(), e.id)
        )
        if scope.tenant_id is not None:
            base = base.where(e.tenant_id == scope.tenant_id)
        if scope.routes is not None:
            base = base.where(runs_t.c.route.in_(list(scope.routes)))
        return self._coverage(base, ~decided, limit)

    def stop_reason_coverage(
        self, scope: Scope, known_kinds: Sequence[str], limit: int = 5
    ) -> Coverage:
        """Ended runs, and those without a stop reason of the taxonomy: none, blank, or
        of a kind not in ``known_kinds`` (a generic "done" says nothing)."""
        c = runs_t.c
        base = (
            select(c.run_id)
            .where(*self._runs_in(scope), c.status.in_(_TERMINAL))
            .order_by(c.created_at.desc(), c.run_id)
        )
        known = or_(
            c.stop_reason.in_(list(known_kinds)),
            *[c.stop_reason.startswith(f"{kind}:", autoescape=True) for kind in known_kinds],
        )
        failing = or_(c.stop_reason.is_(None), func.trim(c.stop_reason) == "", ~known)
        return self._coverage(base, failing, limit)

    def approval_waits(self, scope: Scope) -> list[dict[str, Any]]:
        """Approvals requested since ``scope.since``: run, route, status, requested,
        decided and expiry times, latency (newest first)."""
        a = approvals_t.c
        query = (
            select(
                a.run_id, a.route, a.status, a.requested_at, a.decided_at, a.expires_at,
                a.latency_ms,
            )
            .where(a.requested_at >= scope.since)
            .order_by(a.requested_at.desc())
        )  # fmt: skip
        if scope.routes is not None:
            query = query.where(a.route.in_(list(scope.routes)))
        if scope.tenant_id is not None:
            query = query.where(a.tenant_id == scope.tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def route_costs(self, scope: Scope, top: int = 3) -> list[RouteCost]:
        """Per route: what the scope's runs spent, how many of them succeeded, and the
        runs that spent most."""
        c, s = runs_t.c, spend_t.c
        where = self._runs_in(scope)
        per_run = (
            select(c.route, c.run_id, func.coalesce(func.sum(s.cost_micro_usd), 0).label("cost"))
            .select_from(runs_t.join(spend_t, s.run_id == c.run_id))
            .where(*where)
            .group_by(c.route, c.run_id)
        )
        done = (
            select(c.route, func.count())
            .where(*where, c.status == RunStatus.SUCCEEDED.value)
            .group_by(c.route)
        )
        costs: dict[str, list[tuple[int, str]]] = {}
        with self._read_one() as conn:
            for route, run_id, cost in conn.execute(per_run):
                costs.setdefault(str(route), []).append((int(cost), str(run_id)))
            completed = {str(r): int(n) for r, n in conn.execute(done)}
        routes = sorted(set(costs) | set(completed))
        result = []
        for route in routes:
            runs = sorted(costs.get(route, []), key=lambda x: (-x[0], x[1]))
            result.append(
                RouteCost(
                    route=route,
                    cost_micro_usd=sum(cost for cost, _ in runs),
                    completed=completed.get(route, 0),
                    top_run_ids=[run_id for _, run_id in runs[:top]],
                )
            )
        return result

    def table_exists(self, name: str) -> bool:
        """Whether the database has table ``name`` (a check reading a table another
        feature creates, e.g. eval results, reports "no data" without it)."""
        from sqlalchemy import inspect

        return bool(inspect(self.engine).has_table(name))

    def gate_results(self, scope: Scope, limit: int = 1000) -> list[dict[str, Any]]:
        """The release gate's verdicts (``release_audit`` rows of promotions, passed or
        refused) at or after ``scope.since`` on ``scope.routes``: route, release, gate."""
        from runtime.store.releases import audit_t

        query = (
            self._tolerant_select(audit_t)
            .where(audit_t.c.at >= scope.since, audit_t.c.gate.is_not(None))
            .order_by(audit_t.c.id.desc())
            .limit(limit)
        )
        if scope.routes is not None:
            query = query.where(audit_t.c.route.in_(list(scope.routes)))
        rows = self._read(query, audit_t)
        return [r for r in rows if isinstance(r.get("gate"), dict)]

    def decision_counts(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Policy decisions recorded, per rule and effect (the evidence map's matrix)."""
        d = decisions_t.c
        query = select(d.rule_id, d.decision, func.count().label("count")).group_by(
            d.rule_id, d.decision
        )
        if tenant_id is not None:
            query = query.where(d.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query.order_by(d.rule_id, d.decision)).mappings()]

    def event_kinds(self, tenant_id: str | None = None) -> dict[str, int]:
        """Trace events recorded, per kind (the evidence map's trace contract)."""
        query = select(events_t.c.kind, func.count()).group_by(events_t.c.kind)
        if tenant_id is not None:
            query = query.where(events_t.c.tenant_id == tenant_id)
        with self._read_one() as conn:
            return {str(k): int(n) for k, n in conn.execute(query.order_by(events_t.c.kind))}

    def runs_by_route_status(self, tenant_id: str | None = None) -> dict[str, dict[str, int]]:
        """Runs per route and status."""
        c = runs_t.c
        query = select(c.route, c.status, func.count()).group_by(c.route, c.status)
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        counts: dict[str, dict[str, int]] = {}
        with self._read_one() as conn:
            for route, status, n in conn.execute(query):
                counts.setdefault(str(route), {})[str(status)] = int(n)
        return counts
