"""The reads recovery and the reconciler make on the runs and spend tables (and the
reconciler's one write of trace events), so neither builds SQL nor opens a session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select

from runtime.contract import RunStatus
from runtime.store.runs import decisions_t, events_t, runs_t, spend_t

#: runs with a step to run: queued, running, and cancel_requested (its step ends the run)
LIVE_STATUSES = (
    RunStatus.QUEUED.value,
    RunStatus.RUNNING.value,
    RunStatus.CANCEL_REQUESTED.value,
)


@dataclass
class SpendSums:
    """Settled spend, summed per ledger scope, in the order of the dimensions asked for."""

    #: (tenant, day) -> sums
    tenant_days: list[tuple[str, str, list[int]]] = field(default_factory=list)
    #: (route, day) -> sums
    route_days: list[tuple[str, str, list[int]]] = field(default_factory=list)
    #: run -> sums (runs with spend in the days, or queued or running)
    runs: list[tuple[str, list[int]]] = field(default_factory=list)
    #: every spend row of the runs asked for (their open holds' steps are among them)
    rows_of_runs: list[dict[str, Any]] = field(default_factory=list)


class RecoveryReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def spend_sums(
        self, days: Sequence[str], dims: Sequence[str], runs: Iterable[str]
    ) -> SpendSums:
        """Spend per tenant-day, route-day and run (one connection, one snapshot per
        query), and the spend rows of ``runs``."""
        sums = [func.coalesce(func.sum(spend_t.c[d]), 0) for d in dims]
        live = select(runs_t.c.run_id).where(runs_t.c.status.in_(LIVE_STATUSES))
        out = SpendSums()
        with self.engine.connect() as conn:
            tenant = (
                select(spend_t.c.tenant_id, spend_t.c.day, *sums)
                .where(spend_t.c.day.in_(days))
                .group_by(spend_t.c.tenant_id, spend_t.c.day)
            )
            for name, day, *values in conn.execute(tenant):
                out.tenant_days.append((name, day, [int(v) for v in values]))
            route = (
                select(spend_t.c.route, spend_t.c.day, *sums)
                .where(spend_t.c.day.in_(days))
                .group_by(spend_t.c.route, spend_t.c.day)
            )
            for name, day, *values in conn.execute(route):
                out.route_days.append((name, day, [int(v) for v in values]))
            per_run = (
                select(spend_t.c.run_id, spend_t.c.run_id, *sums)
                .where(spend_t.c.day.in_(days) | spend_t.c.run_id.in_(live))
                .group_by(spend_t.c.run_id)
            )
            for name, _, *values in conn.execute(per_run):
                out.runs.append((name, [int(v) for v in values]))
            wanted = sorted(set(runs))
            if wanted:
                pending = select(spend_t).where(spend_t.c.run_id.in_(wanted))
                out.rows_of_runs = [dict(r) for r in conn.execute(pending).mappings()]
        return out

    def unsettled_calls(self) -> list[dict[str, Any]]:
        """Tool calls that may have run without being charged in SQL: an allow decision at
        the current step of a queued or running run (decisions commit before the tool runs;
        the step's checkpoint, which records its spend, moves the run past that step)."""
        d, r = decisions_t.c, runs_t.c
        query = (
            select(d.run_id, r.tenant_id, r.route, d.step_no, d.tool, d.at)
            .join_from(decisions_t, runs_t, d.run_id == r.run_id)
            .where(r.status.in_(LIVE_STATUSES), d.step_no >= r.next_step, d.decision == "allow")
            .order_by(d.run_id, d.step_no, d.call_index)
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def live_run_count(self) -> int:
        """Queued or running runs (a step of one may be in flight)."""
        query = select(func.count()).where(runs_t.c.status.in_(LIVE_STATUSES))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def live_runs(self) -> list[dict[str, Any]]:
        """Every queued or running run, oldest first, with what its step's item needs."""
        query = (
            select(
                runs_t.c.run_id,
                runs_t.c.next_step,
                runs_t.c.tenant_id,
                runs_t.c.route,
                runs_t.c.priority,
                runs_t.c.trace_id,
            )
            .where(runs_t.c.status.in_(LIVE_STATUSES))
            .order_by(runs_t.c.created_at)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


class ReconcilerReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def idle_runs(
        self, cutoff: datetime, limit: int, after: tuple[datetime, str] | None
    ) -> list[dict[str, Any]]:
        """Queued or running runs not updated since ``cutoff``: one page, oldest first,
        after ``after`` (updated_at, run_id) when given."""
        r = runs_t.c
        query = (
            select(
                r.run_id,
                r.tenant_id,
                r.route,
                r.priority,
                r.next_step,
                r.status,
                r.version,
                r.trace_id,
                r.updated_at,
            )
            .where(r.status.in_(LIVE_STATUSES), r.updated_at < cutoff)
            .order_by(r.updated_at, r.run_id)
            .limit(limit)
        )
        if after is not None:
            at, run_id = after
            query = query.where(or_(r.updated_at > at, and_(r.updated_at == at, r.run_id > run_id)))
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def versions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """run_id -> its row's version (runs that exist)."""
        query = select(runs_t.c.run_id, runs_t.c.version).where(runs_t.c.run_id.in_(run_ids))
        with self.engine.connect() as conn:
            return {str(run_id): int(v) for run_id, v in conn.execute(query)}

    def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Insert trace events in one write transaction (outside any step's checkpoint)."""
        if not events:
            return
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(insert(events_t), list(events))
