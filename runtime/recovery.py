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
4. records a new state generation in SQL and makes the ledger unknown (a process that still
   caches the old generation cannot reserve into a scope being rebuilt), then rebuilds
   every ledger scope with spend in the scopes' lifetime from the SQL spend records
   (``u:<dim>`` = settled spend, ``r:<dim>`` = the holds still open) and writes the
   ledger's marker in the same transaction. It reads SQL and writes Redis under WATCH on
   the holds index, so a reserve or settle in between makes it read again. A tool call
   decided at a live run's current step may have run in a step that died with Redis's data
   (its hold lost, its spend never recorded): recovery holds it again (a "recovered" hold:
   the call, counted as executed), so the step's next copy is charged for it and nothing
   else can spend that budget;
5. forgets every queue and slot Redis held (an old snapshot's would be stale), restores the
   operator levers from SQL (``runtime.levers``: a step reads them with its lease, so they
   are back before the marker lets any step run), writes the scheduler's marker and queues
   the current step of every queued or running run again;
6. resumes dispatching and writes an audit record.

Leases and locks need no rebuilding: a lost lease is a free lease, and every side effect is
claimed in SQL under its idempotency key, so a step that runs again reuses its recorded
result instead of repeating the effect.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis

from runtime import delegations, deployment, scripts
from runtime.config import DIMENSIONS, RuntimeConfig
from runtime.dispatch import Dispatch
from runtime.errors import RecoveryError
from runtime.keys import Keys
from runtime.scheduling.scheduler import Ops, Scheduler, item_of
from runtime.state import KnownGeneration, StateMarkers
from runtime.store.db import utcnow
from runtime.store.dead_letters import DeadLetterStore
from runtime.store.deployment import DeploymentStore
from runtime.store.recovery_reads import RecoveryReads
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.recovery")

#: a recovery that dies leaves dispatching paused at most this long
PAUSE_TTL_MS = 15 * 60 * 1000
#: days of tenant/route scopes rebuilt (their keys live 3 days)
SCOPE_DAYS = 3
#: how long a recovered hold waits for its step to run again before the reaper releases it
#: (the step's next copy takes it over with its own ttl; a run cancelled meanwhile frees it)
RECOVERED_HOLD_TTL_MS = 6 * 3600 * 1000
BATCH = 500


@dataclass
class RecoveryReport:
    runs_requeued: int = 0
    ledger_scopes: int = 0
    open_holds: int = 0
    #: holds rebuilt from SQL for tool calls that may have run uncharged
    recovered_holds: int = 0
    ledger_attempts: int = 0
    waited_s: float = 0.0
    dry_run: bool = False
    #: the state generation recovery built
    generation: int = 0
    #: routes' live release states written back from SQL
    release_states: int = 0
    #: operator levers restored from SQL
    levers: int = 0
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs_requeued": self.runs_requeued,
            "ledger_scopes": self.ledger_scopes,
            "open_holds": self.open_holds,
            "recovered_holds": self.recovered_holds,
            "ledger_attempts": self.ledger_attempts,
            "waited_s": round(self.waited_s, 1),
            "dry_run": self.dry_run,
            "generation": self.generation,
            "levers": self.levers,
        } | ({"release_states": self.release_states} if self.release_states else {})


class Recovery:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        config_source: str,
        redis: redis.Redis,
        keys: Keys,
        scheduler: Scheduler,
        dispatch: Dispatch,
        deployments: DeploymentStore,
        markers: StateMarkers,
        generation: KnownGeneration,
        runs: RunStore,
        reads: RecoveryReads,
        audit: DeadLetterStore,
        rebuild_releases: Callable[[], int] | None = None,
        restore_levers: Callable[[], int],
    ) -> None:
        self.config = config
        #: writes the routes' live release states back to Redis from SQL
        self.rebuild_releases = rebuild_releases
        #: where this process's config came from (shown in drift messages, recorded on apply)
        self.config_source = config_source
        self.redis = redis
        self.keys = keys
        self.scheduler = scheduler
        self.dispatch = dispatch
        self.deployments = deployments
        self.markers = markers
        self.generation = generation
        self.runs = runs
        self.reads = reads
        self.audit = audit
        #: puts the operator levers SQL records back in Redis; returns how many are on
        self.restore_levers = restore_levers

    def recover(
        self,
        actor: str,
        *,
        inflight_wait_s: float | None = None,
        dry_run: bool = False,
    ) -> RecoveryReport:
        report = RecoveryReport(dry_run=dry_run)
        if dry_run:
            report.runs = [r["run_id"] for r in self.reads.live_runs()]
            report.runs_requeued = len(report.runs)
            return report
        gap = deployment.drift(self.config, self.deployments)
        if gap is not None:
            raise RecoveryError(
                "this process runs another config than the deployment: "
                + gap.describe(self.config_source)
                + "; recover with the applied config (unset AGENTRT_CONFIG's override, or "
                "apply this one first with agentrt config apply)"
            )
        paused = self.keys.scheduler().paused
        self.redis.set(paused, actor, px=PAUSE_TTL_MS)
        try:
            deployment.apply(
                self.scheduler, self.deployments, source=self.config_source, actor=actor
            )
            # (a publisher that keeps no broker queue - a test's recorder - has none)
            redeclare = getattr(self.dispatch.publisher, "redeclare", None)
            if callable(redeclare):
                redeclare()
            if inflight_wait_s is None:
                inflight_wait_s = self.config.max_hard_limit_s() if self.may_be_in_flight() else 0.0
            if inflight_wait_s > 0:
                log.info(
                    "waiting %.0fs for steps in flight when Redis lost its data", inflight_wait_s
                )
                time.sleep(inflight_wait_s)
                report.waited_s = inflight_wait_s
            generation = self.deployments.new_generation(actor, "recover")
            # the ledger is unknown until it is rebuilt: a process that still caches the old
            # generation (for up to a second) would otherwise reserve or add a tool call into
            # a scope the rebuild then overwrites, and its settle would take it off again
            self.markers.forget_ledger()
            if self.rebuild_releases is not None:
                report.release_states = self.rebuild_releases()
            self._rebuild_ledger(report, generation)
            self.scheduler.reset_state()
            report.levers = self.restore_levers()
            self.markers.mark(generation)
            self.generation.refresh()
            report.generation = generation
            report.runs = self._requeue(report)
        finally:
            self.redis.delete(paused)
        self.dispatch.schedule(Ops().promote().dispatch(100))
        first_start = report.generation == 1 and not report.runs and not report.ledger_scopes
        if not first_start:  # a new deployment's first state is no operator event
            self.audit.audit(actor, "recover", {}, report.runs, report.as_dict())
        return report

    # --- ledger ----------------------------------------------------------------------
    def ensure(self, actor: str, *, lock_ttl_s: float | None = None) -> bool:
        """Rebuild Redis's state from SQL if it is unknown (see ``runtime.state``), unless
        another process is doing it. Returns whether the state is known afterwards."""
        if self.markers.known(self.generation.refresh()):
            return True
        lock = self.keys.recovery_lock()
        ttl_s = lock_ttl_s or self.config.max_hard_limit_s() + 300
        token = f"{actor}:{uuid.uuid4().hex}"
        if not self.redis.set(lock, token, nx=True, px=int(ttl_s * 1000)):
            return False
        try:
            # another process may have rebuilt it between the check above and the lock:
            # a second rebuild would pause dispatching and wait for steps in flight again
            if self.markers.known(self.generation.refresh()):
                return True
            log.warning("the runtime's Redis state is unknown: %s rebuilds it from SQL", actor)
            report = self.recover(actor)
            log.warning("state rebuilt from SQL: %s", report.as_dict())
            return True
        finally:
            # only our own lock: one that expired and was taken by another process stays
            # (the leases' compare-and-delete; EVAL with the source: recovery is rare)
            self.redis.eval(scripts.lua("runtime.locks", "release.lua"), 1, lock, token)

    def _rebuild_ledger(self, report: RecoveryReport, generation: int) -> None:
        index = self.keys.budget_holds_index()
        for attempt in range(1, 51):
            report.ledger_attempts = attempt
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(index)  # type: ignore[no-untyped-call]
                    holds = self._holds(pipe, index)
                    used = self._spend_by_scope(holds)
                    recovered = self._recovered_holds(holds)
                    # children's carved budgets, and ended children's spend, in their parents'
                    children = self.runs.delegations_of_open_parents()
                    carved = delegations.rebuilt_holds(children, self.keys, used)
                    stale = pipe.zrange(self.keys.budget_delegations_index(), 0, -1)
                    reserved: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
                    for hold in [*holds.values(), *recovered.values(), *carved.values()]:
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
                    self._write_recovered(pipe, index, recovered)
                    delegations.write_holds(pipe, self.keys, stale, carved)
                    # the ledger is known again in the same transaction that rebuilt it
                    self.markers.mark_ledger_in(pipe, generation)
                    pipe.execute()
                    report.ledger_scopes = len(scopes)
                    report.open_holds = len(holds)
                    report.recovered_holds = len(recovered)
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

    def _recovered_holds(
        self, holds: dict[tuple[str, int], dict[str, Any]]
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """Holds for the tool calls SQL says may have run uncharged (``unsettled_calls``),
        where Redis kept no hold of the step: each call counted as an execution (the first
        a tool call, any other a retry, each with its tool's cost), in the scopes the step
        reserved in on the day it decided."""
        keys = self.keys
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for call in self.reads.unsettled_calls():
            at = (str(call["run_id"]), int(call["step_no"]))
            if at in holds:
                continue
            entry = self.config.tools.get(str(call["tool"]))
            cost = round(entry.cost_usd * 1_000_000) if entry else 0
            hold = out.get(at)
            if hold is None:
                day = call["at"].strftime("%Y-%m-%d")
                tenant, route = str(call["tenant_id"]), str(call["route"])
                scopes = [keys.budget_run(at[0])]
                if tenant in self.config.tenants:  # the step's scopes, in its order
                    scopes.append(keys.budget_tenant_day(tenant, day))
                scopes.append(keys.budget_route_day(route, day))
                amounts = dict.fromkeys(DIMENSIONS, 0)
                amounts.update(tool_calls=1, cost_micro_usd=cost)
                out[at] = {"scopes": scopes, "amounts": amounts, "executions": 1}
                continue
            amounts = hold["amounts"]
            amounts["retries"] += 1
            amounts["cost_micro_usd"] += cost
            hold["executions"] += 1
        return out

    def _write_recovered(
        self, pipe: Any, index: str, recovered: dict[tuple[str, int], dict[str, Any]]
    ) -> None:
        """Queue the recovered holds (field ``rec``: ``reserve.lua`` adds the step's next
        copy's own reservation to such a hold instead of taking it as its own)."""
        expires = int(time.time() * 1000) + RECOVERED_HOLD_TTL_MS
        for (run_id, step), hold in recovered.items():
            key = self.keys.budget_hold(run_id, step)
            fields: dict[str, Any] = {
                "scopes": "\n".join(hold["scopes"]),
                "expires": expires,
                "x": hold["executions"],
                "rec": 1,
            }
            fields.update({f"a:{d}": v for d, v in hold["amounts"].items()})
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.zadd(index, {key: expires})

    def _spend_by_scope(
        self, holds: dict[tuple[str, int], dict[str, Any]]
    ) -> dict[str, dict[str, int]]:
        """Settled spend per ledger scope key, from SQL. A step that checkpointed but still
        holds its reservation will settle by itself: its spend stays out of ``u`` until then."""
        keys = self.keys
        days = [(utcnow().date() - timedelta(days=i)).isoformat() for i in range(SCOPE_DAYS)]
        dims = list(DIMENSIONS)
        used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        sums = self.reads.spend_sums(days, dims, {run for run, _ in holds})
        scoped = [
            *((keys.budget_tenant_day(t, day), values) for t, day, values in sums.tenant_days),
            *((keys.budget_route_day(r, day), values) for r, day, values in sums.route_days),
            *((keys.budget_run(run), values) for run, values in sums.runs),
        ]
        for key, values in scoped:
            for dim, value in zip(dims, values, strict=True):
                used[key][dim] += int(value)
        for row in sums.rows_of_runs:
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
        return self.generation.refresh() > 0 and self.live_runs() > 0

    def live_runs(self) -> int:
        """Queued or running runs in SQL (a step of one may be in flight)."""
        return self.reads.live_run_count()

    def _requeue(self, report: RecoveryReport) -> list[str]:
        rows = self.reads.live_runs()
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
            self.scheduler.run(ops)
        self.runs.add_events(events)
        report.runs_requeued = len(requeued)
        return requeued
