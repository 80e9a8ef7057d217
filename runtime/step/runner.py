"""The step runner: lease and load the step, then run it through the stages
(guards -> model call -> budget -> proposal -> tool call) to one decision, applied by the
checkpoint. See ``runtime.step`` for the guarantees."""

from __future__ import annotations

import logging
from typing import Any

import redis

from runtime import report_context, telemetry
from runtime.budgets.ledger import BudgetLedger
from runtime.config import RuntimeConfig
from runtime.contract import RunStatus
from runtime.controls import ControlsRead
from runtime.errors import BudgetExhausted, ReleaseError, StateUnknown
from runtime.keys import Keys
from runtime.locks.identity import owner_instance
from runtime.locks.leases import Busy, Lease, LeaseManager
from runtime.proposers.base import Prompt, WorkingSet
from runtime.scheduling.scheduler import (
    STARTED_OWNED,
    STARTED_OWNED_ELSEWHERE,
    Item,
    Ops,
    Scheduler,
    item_of,
)
from runtime.state import KnownGeneration, StateMarkers
from runtime.statuses import LIVE_STATUSES
from runtime.step.budget import Budgeting
from runtime.step.chain import Chain
from runtime.step.checkpoint import Checkpointer
from runtime.step.collaborators import LiveControls, ReleaseRouting, Scheduling
from runtime.step.guards import Guards
from runtime.step.model_call import ModelCall
from runtime.step.pending import PendingCalls
from runtime.step.proposal import ProposalCheck
from runtime.step.state import Delivery, Move, Step, StepResult
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.steps")

#: run statuses a step may still run in (a cancel request's step ends the run at its guards)
_ACTIVE = tuple(s.value for s in LIVE_STATUSES)


class StepRunner:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        config_digest: str,
        store: RunStore,
        ledger: BudgetLedger,
        redis: redis.Redis,
        keys: Keys,
        leases: LeaseManager,
        scheduler: Scheduler,
        markers: StateMarkers,
        generation: KnownGeneration,
        controls: LiveControls,
        dispatch: Scheduling,
        guards: Guards,
        model_call: ModelCall,
        budgeting: Budgeting,
        pending: PendingCalls,
        proposal: ProposalCheck,
        checkpoint: Checkpointer,
        releases: ReleaseRouting | None = None,
    ) -> None:
        self.config = config
        #: runs' releases (None: this process's config has none)
        self.releases = releases
        #: what the published config's digest must be for this process to run steps
        self.config_digest = config_digest
        self.store = store
        self.ledger = ledger
        self.redis = redis
        self.keys = keys
        self.leases = leases
        self.scheduler = scheduler
        self.markers = markers
        self.generation = generation
        self.controls = controls
        self.dispatch = dispatch
        self.guards = guards
        self.model_call = model_call
        self.budgeting = budgeting
        self.pending = pending
        self.proposal = proposal
        self.checkpoint = checkpoint

    # --- entry -----------------------------------------------------------------------
    def run(
        self, item: Item, attempt: int = 0, chain: Chain | None = None, *, sync: bool = False
    ) -> StepResult:
        """Run one step. ``item`` names it as the scheduler dispatched it (run, step,
        tenant, route, priority), so the run lease, the kill switches and the renewal of
        the step's slot lease (recording this process instance as its owner) go out in one
        round trip. With ``chain``, the task may keep the step the checkpoint dispatches
        (``StepResult.kept``) and run it next (``runtime.step.chain``). ``sync``: the step
        of a sync run, run by its caller's process (``runtime.sync_runs``); its trace names
        that process's instance."""
        # the step's error-report notes (its ids, its secret values) end with it, whoever
        # runs it: a worker's task, a sync caller's thread, an eval replay (when it raises,
        # they stay for the report made after it: ``report_context.step_context``)
        with report_context.step_context():
            return self._run(item, attempt, chain, sync)

    def _run(self, item: Item, attempt: int, chain: Chain | None, sync: bool) -> StepResult:
        if chain is not None:
            chain.steps.append(item)
        leased = self._lease(item, attempt, chain)
        if isinstance(leased, StepResult):
            return leased
        lease, attempt, controls, release_read = leased
        released = False
        try:
            # the first step starts the run (queued -> running) in the same statement
            started = self.store.start_run(item.run_id) if item.step_no == 0 else None
            run = started or self.store.get_run(item.run_id)
            report_context.note_run(run, item.step_no)
            if run["next_step"] != item.step_no or run["status"] not in _ACTIVE:
                self.leases.release(lease)
                released = True
                return self._already_done(run, item.step_no)
            if run["route"] != item.route:
                controls, release_read = None, None
            try:
                with telemetry.step_span(run, item.step_no, attempt) as span:
                    result = self._execute(
                        run, item.step_no, attempt, lease, (controls, release_read), chain, sync
                    )
                    span.set("agentrt.outcome", result.outcome)
            except StateUnknown as exc:
                # Redis lost its state after this step started (its reservation found the
                # ledger unknown): nothing ran; recovery queues the step again from SQL
                log.warning("step %s/%s not run: %s", item.run_id, item.step_no, exc)
                return StepResult(Delivery.STATE_UNKNOWN.value)
            released = True  # the checkpoint releases before publishing the next step
            return result
        finally:
            if not released:
                self.leases.release(lease)

    def _lease(
        self, item: Item, attempt: int, chain: Chain | None
    ) -> tuple[Lease, int, ControlsRead | None, Any] | StepResult:
        """Take the run lease in one round trip with the step's slot, the kill switches,
        the state marker and the published config's digest (and, for a chained step, the
        chain cursor; for a ``next_step`` release route, its live release state): (lease,
        attempt, controls, release state read), or the result of a step that must not run
        here now."""
        chained = chain is not None and chain.position > 0
        lease_ttl_ms = int(self.config.lease_ttl_s() * 1000)
        hinted = self.config.routes.get(item.route)
        tools = hinted.allowed_tools if hinted else []
        control_keys = self.controls.control_keys(item.run_id, item.route, tools) if hinted else []
        owner = self.leases.owner()
        running_ttl_ms = self.scheduler.running_ttl_ms(item.route) if hinted else 0
        release_key = self.releases.read_key(item.route) if self.releases and hinted else None

        def also(pipe: Any) -> None:
            if hinted:
                self.scheduler.start_in(pipe, item, running_ttl_ms, owner)
            if control_keys:
                pipe.mget(control_keys)
            # is Redis's state the one SQL knows, and which config does the deployment enforce
            self.markers.check_in(pipe)
            pipe.hget(self.keys.published_config(), "digest")
            if release_key is not None:
                pipe.hmget(release_key, ["gen", "state"])
            if chained:
                assert chain is not None
                ttl_ms = max(int(chain.remaining_s(self.config) * 1000), 1) + lease_ttl_ms
                pipe.set(self.keys.chain_cursor(chain.task_id), item.encode(), px=ttl_ms)

        lease, extra = self.leases.acquire_run_with(item.run_id, owner, lease_ttl_ms, also)
        if chained:
            extra = extra[:-1]
        release_read = None
        if release_key is not None:
            release_read, extra = extra[-1], extra[:-1]
        slot = int(extra[0]) if hinted else None
        if isinstance(lease, Busy):
            # a live copy of this step runs elsewhere (a holder known dead would have been
            # taken over): it owns the step's slot, not this copy
            if slot == STARTED_OWNED:
                self.scheduler.start(item, running_ttl_ms, owner, "disown")
            log.info(
                "step %s/%s: run lease held by %s; dropped", item.run_id, item.step_no, lease.holder
            )
            return StepResult(Delivery.DUPLICATE_DROPPED.value)
        halt = self._deployment_halt(item, extra[-2], extra[-1])
        if halt is not None:
            # (the slot keeps naming this instance: the step runs again here, or is handed
            # back if this process dies first)
            self.leases.release(lease)
            return halt
        if slot == STARTED_OWNED_ELSEWHERE:
            # the slot named a live copy that has since let the run lease go (a duplicate
            # that dropped itself, or a copy that stopped): the lease holder owns the step
            self.scheduler.start(item, running_ttl_ms, owner, "force")
        if lease.taken_over and attempt == 0:
            # the copy before this one died holding the run lease: whatever message brought
            # this one (a hand-back publishes a fresh one), it is a retry
            attempt = 1
        controls = self.controls.parse_controls(extra[-3], tools) if control_keys else None
        return lease, attempt, controls, release_read

    def _deployment_halt(self, item: Item, marker: Any, digest: Any) -> StepResult | None:
        """Stop before anything happens when this step must not run here now:

        * ``state_unknown``: Redis lost its state (or holds an old snapshot): nothing is
          executed until recovery rebuilt it; recovery queues the step again from SQL.
        * ``config_changed``: the deployment enforces another config than this process
          loaded (a new one was applied): the caller switches to it and runs the step again.
        """
        generation = int(marker or 0)
        self.generation.saw(generation)
        if generation == 0 or generation < self.generation.value() or digest is None:
            log.warning(
                "step %s/%s not run: the runtime's Redis state is unknown (marker %s, SQL %s); "
                "it runs again once recovery has rebuilt the state",
                item.run_id,
                item.step_no,
                generation,
                self.generation.value(),
            )
            return StepResult(Delivery.STATE_UNKNOWN.value)
        published = digest.decode() if isinstance(digest, bytes) else str(digest)
        if published != self.config_digest:
            return StepResult(Delivery.CONFIG_CHANGED.value)
        return None

    def _already_done(self, run: dict[str, Any], step_no: int) -> StepResult:
        """A duplicate or redelivered step: settle what its first copy left, free its slot,
        make sure the next step is queued, and do nothing else twice."""
        if run["next_step"] > step_no and self.redis.exists(
            self.keys.budget_hold(run["run_id"], step_no)
        ):
            # the first copy checkpointed but died before settling: settle to what it recorded
            self.ledger.settle(
                run["run_id"], step_no, self.store.step_spend(run["run_id"], step_no)
            )
        ops = Ops().complete(item_of(run, step_no))
        resent = run["next_step"] == step_no + 1 and run["status"] == RunStatus.RUNNING.value
        if resent:  # idempotent: a step already queued, delayed or in flight is left alone
            ops.enqueue(item_of(run, step_no + 1))
        self.dispatch.schedule(ops.dispatch(2))
        done = Delivery.DUPLICATE_ENSURED_NEXT if resent else Delivery.DUPLICATE_SKIPPED
        return StepResult(done.value)

    def fail_step(self, run_id: str, step_no: int, failure_class: str) -> bool:
        """End a run whose step failed for good outside the loop as ``failed:<class>``
        (e.g. its route was removed from the config). A no-op if the step was checkpointed
        meanwhile."""
        return self.checkpoint.fail(run_id, step_no, failure_class)

    def _fail_here(self, run_id: str, step_no: int, why: Delivery, lease: Lease) -> StepResult:
        """End the run as ``failed:<why>``, then let its lease go; the result says how it
        ended (cancelled if it was being cancelled), or nothing if another copy had
        checkpointed the step."""
        ended = self.fail_step(run_id, step_no, why.value)
        self.leases.release(lease)
        if not ended:
            return StepResult(why.value)
        run = self.store.get_run(run_id)
        return StepResult(why.value, run_status=run["status"], stop_reason=run["stop_reason"])

    # --- the loop body ---------------------------------------------------------------
    def _execute(
        self,
        run: dict[str, Any],
        step_no: int,
        attempt: int,
        lease: Lease,
        reads: tuple[ControlsRead | None, Any],
        chain: Chain | None,
        sync: bool = False,
    ) -> StepResult:
        controls, release_read = reads
        route = self.config.routes.get(run["route"])
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], step_no)
        if route is None:  # the config no longer has this route: end the run, don't guess
            return self._fail_here(run["run_id"], step_no, Delivery.ROUTE_REMOVED, lease)
        policy_set, run_updates = None, {}
        if self.releases is not None and (run.get("release") or route.release):
            try:
                rel = self.releases.for_step(run, route, release_read)
            except ReleaseError as exc:  # fail closed: never a step under an unknown release
                log.warning("step %s/%s: %s", run["run_id"], step_no, exc)
                return self._fail_here(run["run_id"], step_no, Delivery.UNKNOWN_RELEASE, lease)
            route, policy_set, run_updates = rel.route, rel.policy_set, rel.run_updates
            if rel.changed is not None:
                trace.add("release_changed", **rel.changed)
        elif run.get("release"):
            # a run admitted under a release, in a process that cannot resolve releases
            return self._fail_here(run["run_id"], step_no, Delivery.UNKNOWN_RELEASE, lease)
        st = Step(run, route, step_no, attempt, trace, controls=controls, model_name=route.proposer)
        st.policy_set, st.run_updates = policy_set, run_updates
        if chain is not None:
            config = self.config
            st.keep = lambda candidate, waiting: chain.may_keep(config, candidate, waiting)
        self.budgeting.open(st)
        if chain is not None and chain.position:
            trace.add("step_started", attempt=attempt, chained=chain.position, task=chain.task_id)
        elif sync:
            trace.add("step_started", attempt=attempt, sync=owner_instance(lease.owner))
        else:
            trace.add("step_started", attempt=attempt)
        move = self.guards.check(st) or self._advance(st)
        _note_move(st, move)
        return self.checkpoint.finish(st, move, lease)

    def _advance(self, st: Step) -> Move:
        """Model call (or the kept call resumed) -> budget -> proposal and tool call."""
        pending = st.run["pending_proposal"]
        prepared: tuple[WorkingSet, Prompt] | None = None
        try:
            if pending is None:
                call = self.model_call.prepare(st)
                if isinstance(call, Move):
                    return call
                prepared = call
            self.budgeting.reserve(st, prepared[1] if prepared else None, pending)
        except BudgetExhausted as exc:
            # refused before any model call: what was taken from the rate limit goes back
            self.model_call.give_back_tokens(st)
            return self.budgeting.exhausted(st, exc)
        except StateUnknown:
            self.model_call.give_back_tokens(st)
            raise
        if prepared is not None:
            raw = self.model_call.call(st, *prepared)
        else:
            raw = self.pending.resume(st, pending)
        if isinstance(raw, Move):
            return raw
        return self.proposal.validate_and_act(st, raw)


def _note_move(st: Step, move: Move) -> None:
    """The step's span says how the step ended its run (if it did) and under which release."""
    current = telemetry.current_span()
    current.set("agentrt.status", move.status.value)
    if move.stop_reason:
        current.set("agentrt.stop_reason", move.stop_reason)
    release = st.run_updates.get("release") or st.run.get("release")
    if isinstance(release, str):
        current.set("agentrt.release", release)
