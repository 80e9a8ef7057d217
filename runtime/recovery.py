"""``agentrt recover``: rebuild Redis state from SQL after Redis lost its data.

SQL is the source of truth; Redis holds what can be derived from it. After a flush, a
failover to an empty replica or a restore from an old snapshot, the state markers tell
(``runtime.state``): until recovery has run, nothing reserves, dispatches or executes.
Workers run recovery by themselves (``ensure``: the first to see the state unknown takes a
lock and rebuilds; the others wait), and ``agentrt recover`` runs it by hand. Recovery:

1. pauses dispatching (a key the dispatch script checks) so nothing new starts;
2. re-publishes the applied config's scheduling limits (from SQL) and re-declares the
   broker queue (kombu would silently drop publishes to a queue whose binding was lost);
3. waits for steps that were in flight when Redis lost its data (their hard time limit
   bounds them; ``inflight_wait_s``), so their spend is in SQL before it is read; with no
   queued or running run in SQL nothing can be in flight, and it does not wait;
4. records a new state generation in SQL, then rebuilds every ledger scope with spend in
   the scopes' lifetime from the SQL spend records (``u:<dim>`` = settled spend,
   ``r:<dim>`` = the holds still open) and writes the ledger's marker in the same
   transaction. It reads SQL and writes Redis under WATCH on the holds index, so a reserve
   or settle in between makes it read again;
5. forgets every queue and slot Redis held (an old snapshot's would be stale), writes the
   scheduler's marker and queues the current step of every queued or running run again;
6. resumes dispatching and writes an audit record.

Leases and locks need no rebuilding: a lost lease is a free lease, and every side effect is
claimed in SQL under its idempotency key, so a step that runs again reuses its recorded
result instead of repeating the effect.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import func, select

from runtime import deployment
from runtime.config import DIMENSIONS
from runtime.contract import RunStatus
from runtime.errors import RecoveryError
from runtime.scheduling.scheduler import Ops, item_of
from runtime.store.db import utcnow
from runtime.store.dead_letters import DeadLetterStore
from runtime.store.runs import runs_t, spend_t
from runtime.tracing import TraceBuffer

if TYPE_CHECKING:
    from runtime.service import RuntimeService

log = logging.getLogger("agentrt.recovery")

#: a recovery that dies leaves dispatching paused at most this long
PAUSE_TTL_MS = 15 * 60 * 1000
#: days of tenant/route scopes rebuilt (their keys live 3 days)
SCOPE_DAYS = 3
BATCH = 500


@dataclass
class RecoveryReport:
    runs_requeued: int = 0
    ledger_scopes: int = 0
    open_holds: int = 0
    ledger_attempts: int = 0
    waited_s: float = 0.0
    dry_run: bool = False
    #: the state generation recovery built
    generation: int = 0
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs_requeued": self.runs_requeued,
            "ledger_scopes": self.ledger_scopes,
            "open_holds": self.open_holds,
            "ledger_attempts": self.ledger_attempts,
            "waited_s": round(self.waited_s, 1),
            "dry_run": self.dry_run,
            "generation": self.generation,
        }


class Recovery:
    def __init__(self, svc: RuntimeService) -> None:
        self.svc = svc

    def recover(
        self,
        actor: str,
        *,
        inflight_wait_s: float | None = None,
        dry_run: bool = False,
    ) -> RecoveryReport:
        svc = self.svc
        report = RecoveryReport(dry_run=dry_run)
        if dry_run:
            report.runs = [r["run_id"] for r in self._live_runs()]
            report.runs_requeued = len(report.runs)
            return report
        gap = deployment.drift(svc.config, svc.deployments)
        if gap is not None:
            raise RecoveryError(
                "this process runs another config than the deployment: "
                + gap.describe(str(svc.settings.config))
                + "; recover with the applied config (unset AGENTRT_CONFIG's override, or "
                "apply this one first with agentrt config apply)"
            )
        paused = svc.keys.scheduler().paused
        svc.redis.set(paused, actor, px=PAUSE_TTL_MS)
        try:
            deployment.apply(
                svc.scheduler, svc.deployments, source=str(svc.settings.config), actor=actor
            )
            redeclare = getattr(svc.publisher, "redeclare", None)
            if callable(redeclare):
                redeclare()
            if inflight_wait_s is None:
                inflight_wait_s = svc.config.max_hard_limit_s() if self.may_be_in_flight() else 0.0
            if inflight_wait_s > 0:
                log.info(
                    "waiting %.0fs for steps in flight when Redis lost its data", inflight_wait_s
                )
                time.sleep(inflight_wait_s)
                report.waited_s = inflight_wait_s
            generation = svc.deployments.new_generation(actor, "recover")
            self._rebuild_ledger(report, generation)
            svc.scheduler.reset_state()
            svc.markers.mark(generation)
            svc.generation.refresh()
            report.generation = generation
            report.runs = self._requeue(report)
        finally:
            svc.redis.delete(paused)
        svc.schedule(Ops().promote().dispatch(100))
        first_start = report.generation == 1 and not report.runs and not report.ledger_scopes
        if not first_start:  # a new deployment's first state is no operator event
            DeadLetterStore(svc.store).audit(actor, "recover", {}, report.runs, report.as_dict())
        return report

    # --- ledger ----------------------------------------------------------------------
    def ensure(self, actor: str, *, lock_ttl_s: float | None = None) -> bool:
        """Rebuild Redis's state from SQL if it is unknown (see ``runtime.state``), unless
        another process is doing it. Returns whether the state is known afterwards."""
        svc = self.svc
        if svc.markers.known(svc.generation.refresh()):
            return True
        lock = svc.keys.recovery_lock()
        ttl_s = lock_ttl_s or svc.config.max_hard_limit_s() + 300
        if not svc.redis.set(lock, actor, nx=True, px=int(ttl_s * 1000)):
            return False
        try:
            log.warning("the runtime's Redis state is unknown: %s rebuilds it from SQL", actor)
            report = self.recover(actor)
            log.warning("state rebuilt from SQL: %s", report.as_dict())
            return True
        finally:
            svc.redis.delete(lock)

    def _rebuild_ledger(self, report: RecoveryReport, generation: int) -> None:
        svc = self.svc
        index = svc.keys.budget_holds_index()
        for attempt in range(1, 51):
            report.ledger_attempts = attempt
            with svc.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(index)  # type: ignore[no-untyped-call]
                    holds = self._holds(pipe, index)
                    used = self._spend_by_scope(holds)
                    reserved: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
                    for hold in holds.values():
                        for scope in hold["scopes"]:
                            for dim, amount in hold["amounts"].items():
                                reserved[scope][dim] += amount
                    pipe.multi()
                    scopes = set(used) | set(reserved)
                    for scope in scopes:
                        fields: dict[str, int] = {}
                        for dim in DIMENSIONS:
                            fields[f"u:{dim}"] = used.get(scope, {}).get(dim, 0)
                            fields[f"r:{dim}"] = reserved.get(scope, {}).get(dim, 0)
                        pipe.delete(scope)
                        pipe.hset(scope, mapping=fields)  # type: ignore[arg-type]
                        pipe.expire(scope, self._scope_ttl_s(scope))
                    # the ledger is known again in the same transaction that rebuilt it
                    svc.markers.mark_ledger_in(pipe, generation)
                    pipe.execute()
                    report.ledger_scopes = len(scopes)
                    report.open_holds = len(holds)
                    return
                except redis.WatchError:
                    time.sleep(0.05)
        raise RecoveryError("the ledger kept changing while it was rebuilt; try again")

    def _holds(self, pipe: Any, index: str) -> dict[tuple[str, int], dict[str, Any]]:
        """Open holds: (run, step) -> {scopes, amounts} (read under WATCH, immediately)."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for raw in pipe.zrange(index, 0, -1):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            data = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in pipe.hgetall(key).items()
            }
            if not data:
                continue
            run_id, _, step = key.rpartition(":hold:")[2].rpartition(":")
            amounts = {d: int(data.get(f"a:{d}", 0)) for d in DIMENSIONS}
            out[(run_id, int(step))] = {
                "scopes": [s for s in data.get("scopes", "").split("\n") if s],
                "amounts": amounts,
            }
        return out

    def _spend_by_scope(
        self, holds: dict[tuple[str, int], dict[str, Any]]
    ) -> dict[str, dict[str, int]]:
        """Settled spend per ledger scope key, from SQL. A step that checkpointed but still
        holds its reservation will settle by itself: its spend stays out of ``u`` until then."""
        svc = self.svc
        keys = svc.keys
        days = [(utcnow().date() - timedelta(days=i)).isoformat() for i in range(SCOPE_DAYS)]
        dims = list(DIMENSIONS)
        sums = [func.coalesce(func.sum(spend_t.c[d]), 0) for d in dims]
        used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        live = select(runs_t.c.run_id).where(
            runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        )
        queries = [
            (
                "tenant",
                select(spend_t.c.tenant_id, spend_t.c.day, *sums)
                .where(spend_t.c.day.in_(days))
                .group_by(spend_t.c.tenant_id, spend_t.c.day),
            ),
            (
                "route",
                select(spend_t.c.route, spend_t.c.day, *sums)
                .where(spend_t.c.day.in_(days))
                .group_by(spend_t.c.route, spend_t.c.day),
            ),
            (
                "run",
                select(spend_t.c.run_id, spend_t.c.run_id, *sums)
                .where(spend_t.c.day.in_(days) | spend_t.c.run_id.in_(live))
                .group_by(spend_t.c.run_id),
            ),
        ]
        with svc.store.engine.connect() as conn:
            for kind, query in queries:
                for name, day, *values in conn.execute(query):
                    key = (
                        keys.budget_tenant_day(name, day)
                        if kind == "tenant"
                        else keys.budget_route_day(name, day)
                        if kind == "route"
                        else keys.budget_run(name)
                    )
                    for dim, value in zip(dims, values, strict=True):
                        used[key][dim] += int(value)
            if holds:
                pending = select(spend_t).where(
                    spend_t.c.run_id.in_(sorted({run for run, _ in holds}))
                )
                for row in conn.execute(pending).mappings():
                    hold = holds.get((row["run_id"], row["step_no"]))
                    if hold is None:
                        continue
                    for scope in hold["scopes"]:
                        for dim in dims:
                            used[scope][dim] -= int(row[dim])
        return used

    def _scope_ttl_s(self, scope: str) -> int:
        return 30 * 86400 if ":run:" in scope else SCOPE_DAYS * 86400

    # --- runs ------------------------------------------------------------------------
    def may_be_in_flight(self) -> bool:
        """Could a step be executing now? Not without a queued or running run, and not in a
        deployment whose Redis state was never built (no step can have been dispatched)."""
        return self.svc.generation.refresh() > 0 and self.live_runs() > 0

    def live_runs(self) -> int:
        """Queued or running runs in SQL (a step of one may be in flight)."""
        query = select(func.count()).where(
            runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        )
        with self.svc.store.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def _live_runs(self) -> list[dict[str, Any]]:
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
            .where(runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]))
            .order_by(runs_t.c.created_at)
        )
        with self.svc.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def _requeue(self, report: RecoveryReport) -> list[str]:
        svc = self.svc
        rows = self._live_runs()
        requeued: list[str] = []
        events: list[dict[str, Any]] = []
        for start in range(0, len(rows), BATCH):
            ops = Ops()
            for row in rows[start : start + BATCH]:
                ops.enqueue(item_of(row, row["next_step"]))
                requeued.append(row["run_id"])
                trace = TraceBuffer(
                    row["run_id"], row["tenant_id"], row["trace_id"], row["next_step"]
                )
                trace.add("recovered", step=row["next_step"])
                events.extend(trace.drain())
            svc.scheduler.run(ops)
        svc.store.add_events(events)
        report.runs_requeued = len(requeued)
        return requeued
