"""One step of a run: the seed's runtime loop, idempotent under redelivery.

    lease -> load -> guards -> reserve -> propose -> validate -> execute -> checkpoint
          -> settle -> next

* A step is addressed by (run_id, step_no). The run row's ``next_step`` says which step
  may checkpoint next; the checkpoint is a compare-and-set on it, so of two copies of one
  step only one commits and the other stops quietly.
* A run's steps hold a Redis lease while they execute, so a redelivered copy waits for a
  live one instead of racing it, and takes over only from an owner known dead (its process
  instance's heartbeat is gone: ``runtime.locks.identity``). The step records that owner
  on its scheduler slot when it starts, so a dead worker's steps are handed back within
  ``scheduling.worker_dead_after_s``.
* Side effects are claimed in SQL (idempotency key ``run:step:call``) together with their
  allow decision before the tool runs; a redelivered step reuses a recorded result instead
  of calling the tool again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from runtime import proposals, scripts, stop_reasons
from runtime.budgets.ledger import OutputAllowance, Scope, today
from runtime.budgets.step import StepBudget
from runtime.budgets.tokens import MIN_OUTPUT_TOKENS, model_cost_micro, nano_per_token
from runtime.config import Breaker, ModelConfig, RetryPolicy, RouteConfig
from runtime.contract import (
    TERMINAL_STATUSES,
    ProposalResult,
    ReplyProposal,
    RunStatus,
    StopProposal,
    ToolCallProposal,
    Usage,
)
from runtime.dispatch import item_of
from runtime.errors import BudgetExhausted, ProposerError, StaleWrite, StateUnknown
from runtime.locks.leases import Busy, Lease
from runtime.policy import Decision, PolicyContext
from runtime.proposers.base import Prompt, WorkingSet
from runtime.scheduling import limits
from runtime.scheduling.limits import Take
from runtime.scheduling.scheduler import (
    STARTED_OWNED,
    STARTED_OWNED_ELSEWHERE,
    Item,
    Ops,
    now_ms,
)
from runtime.store.db import utcnow
from runtime.store.runs import Checkpoint
from runtime.tools.context import ToolContext
from runtime.tools.executor import ToolOutcome, execute
from runtime.tools.registry import ToolSpec
from runtime.tracing import REDACTED, TraceBuffer, redact, secret_name

if TYPE_CHECKING:
    import redis

    from runtime.budgets.ledger import BudgetLedger
    from runtime.catalog import Catalog
    from runtime.compensation import Compensations
    from runtime.config import RuntimeConfig
    from runtime.controls import Controls
    from runtime.dead_letters import DeadLetters
    from runtime.dispatch import Dispatch
    from runtime.keys import Keys
    from runtime.locks.leases import LeaseManager
    from runtime.policy import PolicyEngine
    from runtime.scheduling.breakers import Breakers
    from runtime.scheduling.limits import Limiter
    from runtime.scheduling.scheduler import Scheduler
    from runtime.state import KnownGeneration, StateMarkers
    from runtime.store.runs import RunStore
    from runtime.tools.registry import ToolRegistry

log = logging.getLogger("agentrt.steps")

#: keys a pending proposal carries for the runtime, stripped before validation
_PENDING_META = ("call_key", "origin_step", "secret_args")
#: seconds a tool lock (or bulkhead place) outlives the tool's timeout
LEASE_MARGIN_S = 15.0
#: the run row's workflow_step column
WORKFLOW_STEP_CHARS = 200


@dataclass
class StepResult:
    """What happened, for the task wrapper's log line and for tests."""

    outcome: str
    next_step: int | None = None
    countdown_s: float | None = None


@dataclass
class _Step:
    """Mutable state of the step being executed."""

    run: dict[str, Any]
    route: RouteConfig
    step_no: int
    attempt: int
    trace: TraceBuffer
    started: float = field(default_factory=time.monotonic)
    started_at: Any = field(default_factory=utcnow)
    #: the step's hold in the ledger: what it holds, what the step is charged (set by
    #: ``_execute``; settling is bounded by it: never overspent, in every dimension)
    budget: StepBudget = field(init=False)
    #: tokens taken from the model's global token rate limit, given back after the call
    rate_tokens: int = 0
    used_proposer: bool = False
    usage: Usage = field(default_factory=Usage)
    model_version: str | None = None
    tool_executed: bool = False
    proposal: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    effect_update: dict[str, Any] | None = None
    #: kill switches read with the lease: (cancelled, route stopped, disabled tools)
    controls: tuple[bool, bool, frozenset[str]] | None = None
    #: tools switched off by a live kill switch (read once per step with the other controls)
    disabled_tools: frozenset[str] = frozenset()
    #: the model asked this step: the route's proposer, or a fallback while its breaker is open
    model_name: str = ""
    #: idempotency key of the call being retried (kept across attempts of one call)
    call_key: str | None = None
    #: the secret arguments of a call kept for a later step: stored apart from the run row
    pending_secrets: dict[str, Any] | None = None
    #: the text of secret argument values, scrubbed from errors
    secrets: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def tenant_id(self) -> str:
        return str(self.run["tenant_id"])


@dataclass
class _Move:
    """The decision at the end of a step."""

    status: RunStatus
    kind: str
    outcome: str
    observation: Any = None
    stop_reason: str | None = None
    output: Any = None
    run_updates: dict[str, Any] = field(default_factory=dict)
    countdown_s: float | None = None
    #: retries exhausted: after the checkpoint the run is dead-lettered at the next step,
    #: which holds the call to try again: (class, error type, error)
    dead_letter: tuple[str, str, str] | None = None

    @property
    def continues(self) -> bool:
        return self.status == RunStatus.RUNNING


def args_digest(args: Any) -> str:
    raw = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()


class StepRunner:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        config_digest: str,
        catalog: Catalog,
        controls: Controls,
        dispatch: Dispatch,
        registry: ToolRegistry,
        policy: PolicyEngine,
        store: RunStore,
        redis: redis.Redis,
        tool_redis: redis.Redis,
        keys: Keys,
        ledger: BudgetLedger,
        leases: LeaseManager,
        scheduler: Scheduler,
        limiter: Limiter,
        breakers: Breakers,
        markers: StateMarkers,
        generation: KnownGeneration,
        dead_letters: DeadLetters,
        compensations: Compensations,
    ) -> None:
        self.config = config
        #: the digest of ``config``: a step runs only while the deployment enforces it
        self.config_digest = config_digest
        self.catalog = catalog
        self.controls = controls
        self.dispatch = dispatch
        self.registry = registry
        self.policy = policy
        self.store = store
        self.redis = redis
        self.tool_redis = tool_redis
        self.keys = keys
        self.ledger = ledger
        self.leases = leases
        self.scheduler = scheduler
        self.limiter = limiter
        self.breakers = breakers
        self.markers = markers
        self.generation = generation
        self.dead_letters = dead_letters
        self.compensations = compensations

    # --- entry -----------------------------------------------------------------------
    def run(self, item: Item, attempt: int = 0) -> StepResult:
        """Run one step. ``item`` names it as the scheduler dispatched it (run, step,
        tenant, route, priority), so the run lease, the kill switches and the renewal of
        the step's slot lease (recording this process instance as its owner) go out in one
        round trip."""
        lease_ttl_ms = int(self.config.lease_ttl_s() * 1000)
        hinted = self.config.routes.get(item.route)
        tools = hinted.allowed_tools if hinted else []
        control_keys = self.controls.control_keys(item.run_id, item.route, tools) if hinted else []
        owner = self.leases.owner()
        running_ttl_ms = self.scheduler.running_ttl_ms(item.route) if hinted else 0

        def also(pipe: Any) -> None:
            if hinted:
                self.scheduler.start_in(pipe, item, running_ttl_ms, owner)
            if control_keys:
                pipe.mget(control_keys)
            # is Redis's state the one SQL knows, and which config does the deployment enforce
            self.markers.check_in(pipe)
            pipe.hget(self.keys.published_config(), "digest")

        lease, extra = self.leases.acquire_run_with(item.run_id, owner, lease_ttl_ms, also)
        slot = int(extra[0]) if hinted else None
        if isinstance(lease, Busy):
            # a live copy of this step runs elsewhere (a holder known dead would have been
            # taken over): it owns the step's slot, not this copy
            if slot == STARTED_OWNED:
                self.scheduler.start(item, running_ttl_ms, owner, "disown")
            log.info(
                "step %s/%s: run lease held by %s; dropped", item.run_id, item.step_no, lease.holder
            )
            return StepResult("duplicate_dropped")
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
        released = False
        try:
            # the first step starts the run (queued -> running) in the same statement
            started = self.store.start_run(item.run_id) if item.step_no == 0 else None
            run = started or self.store.get_run(item.run_id)
            if run["next_step"] != item.step_no or run["status"] not in (
                RunStatus.QUEUED.value,
                RunStatus.RUNNING.value,
            ):
                self.leases.release(lease)
                released = True
                return self._already_done(run, item.step_no)
            if run["route"] != item.route:
                controls = None
            try:
                result = self._execute(run, item.step_no, attempt, lease, controls)
            except StateUnknown as exc:
                # Redis lost its state after this step started (its reservation found the
                # ledger unknown): nothing ran; recovery queues the step again from SQL
                log.warning("step %s/%s not run: %s", item.run_id, item.step_no, exc)
                return StepResult("state_unknown")
            released = True  # _finish releases before publishing the next step
            return result
        finally:
            if not released:
                self.leases.release(lease)

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
            return StepResult("state_unknown")
        published = digest.decode() if isinstance(digest, bytes) else str(digest)
        if published != self.config_digest:
            return StepResult("config_changed")
        return None

    def _already_done(self, run: dict[str, Any], step_no: int) -> StepResult:
        """A duplicate or redelivered step: settle what its first copy left, free its slot,
        make sure the next step is queued, and do nothing else twice."""
        if run["next_step"] > step_no and self.redis.exists(
            self.keys.budget_hold(run["run_id"], step_no)
        ):
            # the first copy checkpointed but died before settling: settle to what it recorded
            spent = self.store.step_spend(run["run_id"], step_no)
            self.ledger.settle(run["run_id"], step_no, spent)
        ops = Ops().complete(item_of(run, step_no))
        resent = run["next_step"] == step_no + 1 and run["status"] == RunStatus.RUNNING.value
        if resent:  # idempotent: a step already queued, delayed or in flight is left alone
            ops.enqueue(item_of(run, step_no + 1))
        self.dispatch.schedule(ops.dispatch(2))
        return StepResult("duplicate_ensured_next" if resent else "duplicate_skipped")

    def fail_step(self, run_id: str, step_no: int, error_class: str) -> bool:
        """End a run whose step failed for good outside the loop (hard time limit, worker
        lost too often, a bug). A no-op if the step was checkpointed meanwhile."""
        run = self.store.get_run(run_id)
        if run["next_step"] != step_no or run["status"] not in (
            RunStatus.QUEUED.value,
            RunStatus.RUNNING.value,
        ):
            self.dispatch.schedule(Ops().complete(item_of(run, step_no)).dispatch(2))
            return False
        cls = _FAILURE_CLASSES.get(error_class, "internal_error")
        reason = stop_reasons.make("failed", cls)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], step_no)
        trace.add("step_failed", error_class=error_class)
        trace.add("stop", reason=reason, status=RunStatus.FAILED.value)
        now = utcnow()
        cp = Checkpoint(
            run_id=run_id,
            step_no=step_no,
            status=RunStatus.FAILED,
            run_updates={"stop_reason": reason, "finished_at": now, "workflow_step": "finished"},
            step={
                "run_id": run_id,
                "tenant_id": run["tenant_id"],
                "step_no": step_no,
                "kind": "failed",
                "proposal": None,
                "outcome": cls,
                "observation": {"error_class": error_class},
                "started_at": now,
                "finished_at": now,
                "duration_ms": 0,
            },
            events=trace.drain(),
        )
        try:
            self.store.checkpoint(cp)
        except StaleWrite:
            return False
        finally:
            self.dispatch.schedule(Ops().complete(item_of(run, step_no)).dispatch(2))
        self.ledger.release(run_id, step_no)
        return True

    # --- the loop body ---------------------------------------------------------------
    def _execute(
        self,
        run: dict[str, Any],
        step_no: int,
        attempt: int,
        lease: Lease,
        controls: tuple[bool, bool, frozenset[str]] | None,
    ) -> StepResult:
        route = self.config.routes.get(run["route"])
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], step_no)
        if route is None:  # the config no longer has this route: end the run, don't guess
            self.fail_step(run["run_id"], step_no, "route_removed")
            self.leases.release(lease)
            return StepResult("route_removed")
        st = _Step(
            run, route, step_no, attempt, trace, controls=controls, model_name=route.proposer
        )
        st.budget = StepBudget(self.ledger, st.run_id, step_no, self._hold_ttl_ms())
        trace.add("step_started", attempt=attempt)
        move = self._guards(st) or self._advance(st)
        return self._finish(st, move, lease)

    def _guards(self, st: _Step) -> _Move | None:
        """Stop conditions checked before anything is spent."""
        run, route = st.run, st.route
        cancelled, stopped, st.disabled_tools = st.controls or self.controls.live_controls(
            st.run_id, run["route"], route.allowed_tools
        )
        if cancelled:
            return _Move(
                RunStatus.CANCELLED,
                "stopped",
                "cancelled",
                stop_reason=stop_reasons.make("cancelled", "operator"),
            )
        if not route.enabled or stopped:
            return _Move(
                RunStatus.CANCELLED,
                "stopped",
                "route_stopped",
                stop_reason=stop_reasons.make("cancelled", "route_stopped"),
            )
        if run["deadline_at"] is not None and utcnow() > run["deadline_at"]:
            return _Move(RunStatus.FAILED, "stopped", "timed_out", stop_reason="timed_out")
        if run["pending_proposal"] is None and run["turns"] >= route.max_steps:
            return _Move(RunStatus.FAILED, "stopped", "step_limit", stop_reason="step_limit")
        return None

    def _advance(self, st: _Step) -> _Move:
        pending = st.run["pending_proposal"]
        ws: WorkingSet | None = None
        prompt: Prompt | None = None
        try:
            if pending is None:
                prepared = self._prepare_call(st)
                if isinstance(prepared, _Move):
                    return prepared
                ws, prompt = prepared
            self._reserve(st, prompt, pending)
        except BudgetExhausted as exc:
            # refused before any model call: what was taken from the rate limit goes back
            self._give_back_tokens(st)
            return self._exhausted(st, exc)
        except StateUnknown:
            self._give_back_tokens(st)
            raise
        if pending is not None:
            # retry bookkeeping travels with the proposal but is not part of it
            st.call_key = pending.get("call_key")
            raw: Any = {k: v for k, v in pending.items() if k not in _PENDING_META}
            st.trace.add("proposal_resumed", tool=pending.get("tool"), call_key=st.call_key)
            if pending.get("secret_args"):
                secrets = self.store.pending_secrets(st.run_id)
                if secrets is None or set(secrets) != set(pending["secret_args"]):
                    # fail closed: never run the call with its secrets missing or redacted
                    st.trace.add("pending_secrets_lost", tool=pending.get("tool"))
                    return _Move(
                        RunStatus.FAILED,
                        "failed",
                        "pending_secrets_lost",
                        stop_reason=stop_reasons.make("failed", "pending_secrets_lost"),
                        run_updates={"pending_proposal": None},
                    )
                raw = {**raw, "args": {**raw.get("args", {}), **secrets}}
        else:
            assert ws is not None and prompt is not None
            try:
                result = self._propose(st, ws, prompt)
            except ProposerError as exc:
                st.trace.add("proposer_error", code=exc.code, error=str(exc), model=st.model_name)
                self._record_breaker(
                    st, f"model:{st.model_name}", self._model(st).breaker, ok=False
                )
                policy = self.catalog.retry_policy(st.run["route"])
                if policy is not None and exc.code not in policy.non_retryable:
                    return self._retry_or_dead_letter(
                        st, "proposer", exc.code, str(exc), policy, pending=None
                    )
                return self._error_move(st, "proposer", exc.code, str(exc))
            finally:
                self._give_back_tokens(st)
            self._record_breaker(st, f"model:{st.model_name}", self._model(st).breaker, ok=True)
            raw = result.raw
        return self._validate_and_act(st, raw)

    def _prepare_call(self, st: _Step) -> tuple[WorkingSet, Prompt] | _Move:
        """Choose the model, build and bound the prompt, take the model's rate limits.
        The prompt comes first: its tokens are part of the worst case both limit."""
        blocked = self._choose_model(st)
        if blocked is not None:
            return blocked
        ws = self._working_set(st)
        prompt = self.catalog.proposer_for(st.model_name).prepare(ws)
        wait_s = self._take_model_rate(st, prompt.tokens)
        if wait_s > 0:
            st.trace.add("rate_limited", limiter=f"model:{st.model_name}", retry_after_s=wait_s)
            return _Move(
                RunStatus.RUNNING,
                "deferred",
                "rate_limited:model",
                observation={"rate_limited": st.model_name},
                run_updates={"workflow_step": "waiting_rate_limit"},
                countdown_s=wait_s,
            )
        return ws, prompt

    # --- circuit breakers and retries ------------------------------------------------
    def _model(self, st: _Step) -> ModelConfig:
        return self.config.models[st.model_name]

    def _choose_model(self, st: _Step) -> _Move | None:
        """Ask the route's model unless its breaker is open; then its fallbacks in order.
        With every breaker open the step waits (holding no slot) for the first to close."""
        caller = f"{st.run_id}:{st.step_no}"
        waits: list[float] = []
        for name in [st.route.proposer, *st.route.fallback_proposers]:
            verdict = self.breakers.allow(f"model:{name}", self.config.models[name].breaker, caller)
            if verdict.allowed:
                if name != st.route.proposer:
                    st.trace.add("fallback", model=name, instead_of=st.route.proposer)
                st.model_name = name
                return None
            st.trace.add(
                "breaker_open",
                breaker=f"model:{name}",
                retry_after_s=round(verdict.retry_after_s, 3),
            )
            waits.append(verdict.retry_after_s)
        wait_s = max(min(waits), 0.05)
        return _Move(
            RunStatus.RUNNING,
            "deferred",
            f"breaker_open:model:{st.route.proposer}",
            observation={"breaker_open": st.route.proposer},
            run_updates={"workflow_step": "waiting_breaker"},
            countdown_s=wait_s,
        )

    def _record_breaker(self, st: _Step, name: str, cfg: Breaker | None, *, ok: bool) -> None:
        if cfg is None:  # no breaker configured: no round trip
            return
        state = self.breakers.record(name, cfg, f"{st.run_id}:{st.step_no}", ok)
        if state == "open" and not ok:
            st.trace.add("breaker_opened", breaker=name)

    def _retry_or_dead_letter(
        self,
        st: _Step,
        source: str,
        code: str,
        error: str,
        policy: RetryPolicy,
        pending: dict[str, Any] | None,
    ) -> _Move:
        """A retryable failure: try the same call again after a backoff (scheduled by the
        runtime, holding no slot) or, with the attempts used up, dead-letter the run at the
        next step, which keeps the call so an operator's retry resumes exactly there."""
        failures = int(st.run["attempt"]) + 1
        observation = {"error": code, "detail": error[:1000], "attempt": failures}
        updates: dict[str, Any] = {"attempt": failures, "pending_proposal": pending}
        if failures >= policy.max_attempts:
            st.trace.add("retries_exhausted", source=source, code=code, attempts=failures)
            return _Move(
                RunStatus.RUNNING,
                "failed",
                f"{source}_failed:{code}",
                observation=observation,
                run_updates={**updates, "workflow_step": "dead_lettered"},
                dead_letter=("exhausted", code, error),
            )
        self.dead_letters.record_failure(st.run_id, st.step_no, f"{source}_error", code, error)
        delay = backoff_s(policy, failures)
        st.trace.add(
            "retry_scheduled",
            source=source,
            code=code,
            attempt=failures + 1,
            max_attempts=policy.max_attempts,
            delay_s=round(delay, 3),
        )
        return _Move(
            RunStatus.RUNNING,
            "failed",
            f"{source}_retry:{code}",
            observation=observation,
            run_updates={**updates, "workflow_step": f"retry:{source}"},
            countdown_s=max(delay, 0.01),
        )

    def _pending(self, st: _Step, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """A tool call kept for a later step (its retry key goes with it). Its secret
        arguments are kept apart (``pending_secrets``), never in the run row."""
        spec = self.registry.get(tool)
        declared = spec.secret_args if spec else frozenset()
        secret = sorted(n for n in args if n in declared or secret_name(n))
        pending: dict[str, Any] = {
            "type": "tool_call",
            "tool": tool,
            "args": {k: REDACTED if k in secret else v for k, v in args.items()},
        }
        if secret:
            pending["secret_args"] = secret
            st.pending_secrets = {n: args[n] for n in secret}
        if st.call_key:
            pending["call_key"] = st.call_key
        return pending

    # --- global rate limits ----------------------------------------------------------
    def _take_model_rate(self, st: _Step, prompt_tokens: int) -> float:
        """Take one request and the call's worst-case tokens (its prompt's bound plus the
        output cap) from the model's global limiters."""
        model = self._model(st)
        takes = []
        if model.requests_rate:
            takes.append(Take(limits.model_requests(st.model_name), model.requests_rate))
        tokens = 0
        if model.tokens_rate:
            cap = self.config.budget_policies[st.route.budget_policy].tokens_per_step
            # the limiter takes at most its burst (a larger take could never pass): record
            # what it really took, or giving back "taken - used" would give back too much
            tokens = min(prompt_tokens + cap, model.tokens_rate.burst)
            takes.append(Take(limits.model_tokens(st.model_name), model.tokens_rate, tokens))
        wait_s = self.limiter.take(takes)
        if wait_s <= 0:
            st.rate_tokens = tokens
        return wait_s

    def _give_back_tokens(self, st: _Step) -> None:
        """Give the model's token limiter what the call did not use (all of it when the
        step stopped before calling)."""
        if not st.rate_tokens:
            return
        model = self._model(st)
        taken, st.rate_tokens = st.rate_tokens, 0
        if model.tokens_rate:
            self.limiter.give_back(
                limits.model_tokens(st.model_name),
                model.tokens_rate,
                taken - (st.usage.total_tokens if st.used_proposer else 0),
            )

    # --- budget ----------------------------------------------------------------------
    def _scopes(self, st: _Step) -> list[Scope]:
        run = st.run
        policy = self.config.budget_policies[st.route.budget_policy]
        tenant = self.config.tenants.get(run["tenant_id"])
        day = today()
        scopes = [self.ledger.run_scope(st.run_id, policy.per_run.ledger_limits())]
        if tenant is not None:
            scopes.append(
                self.ledger.tenant_day_scope(
                    run["tenant_id"], tenant.daily_budget.ledger_limits(), day
                )
            )
        scopes.append(
            self.ledger.route_day_scope(run["route"], st.route.daily_budget.ledger_limits(), day)
        )
        return scopes

    def _hold_ttl_ms(self) -> int:
        return int((self.config.lease_ttl_s() + LEASE_MARGIN_S) * 1000)

    def _reserve(self, st: _Step, prompt: Prompt | None, pending: dict[str, Any] | None) -> None:
        """Reserve the step's worst case before anything runs. A model call: its prompt's
        bound plus as many output tokens as every scope still holds, up to the policy's
        ``tokens_per_step`` (the grant becomes the call's ``max_tokens``), and their cost.
        A resumed tool call: one tool call and its cost. A tool call the model proposes is
        reserved when proposed (``_reserve_tool``), so a step that only replies needs no
        tool-call budget."""
        budget = st.budget
        amounts = {
            "tokens": 0,
            "model_calls": 0,
            "tool_calls": 0,
            "retries": _retries_reserved(st),
            "wall_clock_ms": int(st.route.step_timeout_s * 1000),
            "cost_micro_usd": 0,
        }
        output: OutputAllowance | None = None
        tools = 0
        if prompt is not None:
            model = self._model(st)
            cap = self.config.budget_policies[st.route.budget_policy].tokens_per_step
            amounts["tokens"] = prompt.tokens
            amounts["model_calls"] = 1
            output = OutputAllowance(
                cap=cap,
                minimum=min(MIN_OUTPUT_TOKENS, cap),
                cost_base_nano=prompt.tokens * nano_per_token(model.input_usd_per_mtok),
                cost_per_token_nano=nano_per_token(model.output_usd_per_mtok),
            )
        elif pending is not None:
            budget.tool_cost_micro = self.catalog.tool_cost_micro(str(pending.get("tool")))
            amounts["tool_calls"] = 1
            amounts["cost_micro_usd"] = budget.tool_cost_micro
            tools = 1
        reservation = budget.reserve(self._scopes(st), amounts, output, tools)
        st.trace.add(
            "budget_reserve",
            amounts=budget.hold,
            state=reservation.state,
            prompt_tokens=budget.prompt_tokens if output else None,
            max_output_tokens=budget.granted_output if output else None,
        )

    def _reserve_tool(self, st: _Step, spec: ToolSpec) -> _Move | None:
        """Add the proposed tool call (and its cost) to the step's hold before it runs;
        ``budget_exhausted:<dimension>`` if it does not fit, with nothing executed."""
        try:
            added = st.budget.reserve_tool(self.catalog.tool_cost_micro(spec.name))
        except BudgetExhausted as exc:
            return self._tool_exhausted(st, exc)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return None

    def _tool_exhausted(self, st: _Step, exc: BudgetExhausted) -> _Move:
        move = self._exhausted(st, exc)
        move.run_updates["pending_proposal"] = None
        return move

    def _exhausted(self, st: _Step, exc: BudgetExhausted) -> _Move:
        st.trace.add("budget_exhausted", scope=exc.scope, dimension=exc.dimension)
        return _Move(
            RunStatus.FAILED,
            "stopped",
            f"budget_exhausted:{exc.dimension}",
            stop_reason=stop_reasons.make("budget_exhausted", exc.dimension),
        )

    def _actual_spend(self, st: _Step) -> dict[str, int]:
        """What the step spent, bounded by what its hold holds (traced if cut)."""
        model, budget = self._model(st), st.budget
        executions = budget.tool_executions
        cost = executions * budget.tool_cost_micro
        if st.used_proposer:
            cost += model_cost_micro(
                st.usage.input_tokens,
                st.usage.output_tokens,
                nano_per_token(model.input_usd_per_mtok),
                nano_per_token(model.output_usd_per_mtok),
            )
        redelivered = 1 if st.attempt > 0 else 0
        actual, over = budget.bounded(
            {
                "tokens": st.usage.total_tokens,
                "model_calls": 1 if st.used_proposer else 0,
                "tool_calls": 1 if executions else 0,
                # a retried call, plus each execution beyond the first (copies of the step
                # that died after running the tool); a redelivered step counts one at least
                "retries": _policy_retry(st) + max(redelivered, executions - 1),
                "wall_clock_ms": int((time.monotonic() - st.started) * 1000),
                "cost_micro_usd": cost,
            }
        )
        if over:
            st.trace.add(
                "spend_clamped",
                spent=over,
                reserved={d: budget.hold.get(d, 0) for d in over},
            )
        return actual

    # --- propose ---------------------------------------------------------------------
    def _working_set(self, st: _Step) -> WorkingSet:
        run, route = st.run, st.route
        tools = self.catalog.tool_descriptions(run["route"], st.disabled_tools)
        policy = self.config.budget_policies[route.budget_policy]
        return WorkingSet(
            run_id=st.run_id,
            tenant_id=st.tenant_id,
            route=run["route"],
            goal=run["goal"],
            input=run["input"] or {},
            turn=run["turns"],
            system_prompt=route.system_prompt,
            tools=tools,
            max_output_tokens=policy.tokens_per_step,
            steps_left=route.max_steps - run["turns"],
            history_loader=lambda: self.store.steps(st.run_id),
        )

    def _propose(self, st: _Step, ws: WorkingSet, prompt: Prompt) -> ProposalResult:
        proposer = self.catalog.proposer_for(st.model_name)
        st.used_proposer = True
        prompt_tokens, granted = st.budget.prompt_tokens, st.budget.granted_output
        ws.max_output_tokens = granted
        result = proposer.call(ws, prompt, granted)
        # a reported usage is untrusted: bounded by what the step reserved (the prompt's
        # bound, the granted output), so settling never overspends in tokens or cost and
        # the checkpoint can never overflow a column
        st.usage = result.usage.within(prompt_tokens, granted)
        st.model_version = result.model_version
        st.trace.add(
            "proposal",
            proposal=proposals.shown(result.raw, self.registry),
            usage=st.usage.model_dump(include={"input_tokens", "output_tokens"}),
            model_version=result.model_version,
            latency_ms=result.latency_ms,
        )
        if st.usage.reported is not None:
            st.trace.add(
                "usage_unknown" if st.usage.unknown else "usage_clamped",
                reported=st.usage.reported,
                charged=st.usage.total_tokens,
                reserved={"input_tokens": prompt_tokens, "output_tokens": granted},
            )
        if result.truncated:
            st.trace.add("output_truncated", max_output_tokens=granted)
        return result

    # --- validate and act ------------------------------------------------------------
    def _validate_and_act(self, st: _Step, raw: Any) -> _Move:
        proposal = proposals.parse(raw)
        if isinstance(proposal, proposals.Refused):
            return self._refuse(
                st, proposal.code, proposal.errors, proposals.shown(raw, self.registry)
            )
        st.proposal = proposal.model_dump(by_alias=True)
        if isinstance(proposal, ReplyProposal):
            st.trace.add("validation", ok=True, type="reply")
            return _Move(
                RunStatus.SUCCEEDED,
                "reply",
                "completed",
                output={"text": proposal.text},
                stop_reason="completed",
            )
        if isinstance(proposal, StopProposal):
            st.trace.add("validation", ok=True, type="stop")
            return _Move(
                RunStatus.SUCCEEDED,
                "stop",
                "completed",
                output={"stopped": proposal.reason or "model_stop"},
                stop_reason="completed",
            )
        assert isinstance(proposal, ToolCallProposal)
        return self._tool_call(st, proposal)

    def _tool_call(self, st: _Step, proposal: ToolCallProposal) -> _Move:
        spec = self.registry.get(proposal.tool)
        registered = spec is not None and proposal.tool in self.config.tools
        args_model: BaseModel | None = None
        # what is stored or shown of the call never carries its secret arguments
        st.proposal = proposals.redact_call(st.proposal, self.registry)
        st.secrets = proposals.secret_values(spec, proposal.args)
        if spec is not None and registered:
            # validated before policy: policy rules see only well-formed, defaulted args
            checked = proposals.validate_args(spec, proposal)
            if isinstance(checked, proposals.Refused):
                st.trace.add(
                    "validation",
                    ok=False,
                    code=checked.code,
                    tool=proposal.tool,
                    errors=checked.errors,
                    detail=checked.detail,
                )
                return self._refuse(st, checked.code, checked.errors, st.proposal, validated=True)
            args_model = checked
        args = args_model.model_dump(mode="json") if args_model is not None else proposal.args
        safe_args = redact(args, spec.secret_args if spec else frozenset())
        decision = self.policy.decide(
            PolicyContext(
                tool=proposal.tool,
                args=args,
                side_effect=spec.side_effect if spec else None,
                tenant=st.tenant_id,
                route=st.run["route"],
                risk_class=st.run["risk_class"],
                autonomy_level=st.run["autonomy_level"],
                allowed_tools=tuple(st.run["allowed_tools"]),
                tool_registered=registered,
                tool_enabled=self.catalog.tool_enabled(proposal.tool, st.disabled_tools),
            )
        )
        st.proposal = {**(st.proposal or {}), "args": safe_args}
        self._record_decision(st, proposal.tool, decision, args)
        if decision.effect == "deny":
            return _Move(
                RunStatus.REFUSED,
                "refused",
                f"policy_denied:{decision.label}",
                observation={"denied": decision.label, "reasons": decision.reason_codes},
                stop_reason=stop_reasons.make("policy_denied", decision.label),
            )
        if decision.effect in ("require_approval", "escalate"):
            kind = "needs_approval" if decision.effect == "require_approval" else "escalated"
            return _Move(
                RunStatus.WAITING,
                "waiting",
                f"{kind}:{decision.label}",
                stop_reason=stop_reasons.make(kind, decision.label),
                run_updates={
                    "pending_proposal": self._pending(st, proposal.tool, args),
                    "approval_id": uuid.uuid4().hex,
                    "workflow_step": f"awaiting:{proposal.tool}",
                },
            )
        assert spec is not None and args_model is not None
        st.trace.add("validation", ok=True, type="tool_call", tool=proposal.tool)
        return self._run_tool(st, spec, args_model, args, proposal)

    def _record_decision(self, st: _Step, tool: str, decision: Decision, args: Any) -> None:
        row = {
            "run_id": st.run_id,
            "tenant_id": st.tenant_id,
            "step_no": st.step_no,
            "call_index": 0,
            "tool": tool,
            "decision": decision.effect,
            "rule_id": decision.rule_id,
            "reason_codes": decision.reason_codes,
            "policy_version": decision.policy_version,
            "args_digest": args_digest(args),
            "at": utcnow(),
        }
        st.decisions.append(row)
        st.trace.add(
            "policy_decision",
            tool=tool,
            effect=decision.effect,
            rule=decision.label,
            reasons=decision.reason_codes,
            policy_version=decision.policy_version,
        )

    def _run_tool(
        self,
        st: _Step,
        spec: ToolSpec,
        args_model: BaseModel,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> _Move:
        lock: Lease | None = None
        lock_name = spec.lock_name(args_model)
        timeout_s = self.catalog.tool_timeout(spec, st.run["route"])
        entry = self.config.tools[spec.name]
        call_id = f"{st.run_id}:{st.step_no}"
        refused = self._reserve_tool(st, spec)
        if refused is not None:
            return refused
        if entry.breaker:
            verdict = self.breakers.allow(f"tool:{spec.name}", entry.breaker, call_id)
            if not verdict.allowed:
                return self._wait(
                    st, "breaker_open", f"tool:{spec.name}", verdict.retry_after_s, args, proposal
                )
        if entry.rate_limit:
            wait_s = self.limiter.take([Take(limits.tool_calls(spec.name), entry.rate_limit)])
            if wait_s > 0:
                return self._wait(st, "rate_limited", f"tool:{spec.name}", wait_s, args, proposal)
        if entry.max_concurrency:
            ttl_ms = int((timeout_s + LEASE_MARGIN_S) * 1000)
            wait_s = self.limiter.enter_bulkhead(spec.name, call_id, entry.max_concurrency, ttl_ms)
            if wait_s > 0:
                return self._wait(
                    st, "bulkhead_full", f"tool:{spec.name}", min(wait_s, 0.2), args, proposal
                )
        try:
            if lock_name:
                got = self.leases.acquire_lock(
                    lock_name, self.leases.owner(call_id), int((timeout_s + LEASE_MARGIN_S) * 1000)
                )
                if isinstance(got, Busy):
                    return self._lock_busy(st, lock_name, got, args, proposal)
                lock = got
                st.trace.add("lock_acquired", lock=lock_name, fence=got.fencing_token)
            try:
                outcome = self._claim_and_execute(st, spec, args_model, args, lock, timeout_s)
            finally:
                if lock is not None:
                    self.leases.release(lock)
        finally:
            if entry.max_concurrency:
                self.limiter.leave_bulkhead(spec.name, call_id)
        if isinstance(outcome, _Move):  # its re-execution's budget was refused
            return outcome
        if entry.breaker:
            self._record_breaker(st, f"tool:{spec.name}", entry.breaker, ok=outcome.ok)
        return self._after_tool(st, spec, outcome, args)

    def _wait(
        self,
        st: _Step,
        reason: str,
        resource: str,
        wait_s: float,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> _Move:
        """The call may not run yet (rate limit, bulkhead): keep the proposal, give back the
        slot, and run it again after ``wait_s``; the wait holds nothing."""
        st.trace.add(reason, limiter=resource, retry_after_s=round(wait_s, 3))
        return _Move(
            RunStatus.RUNNING,
            "deferred",
            f"{reason}:{resource}",
            observation={reason: resource},
            run_updates={
                "workflow_step": f"{reason}:{resource}",
                "pending_proposal": self._pending(st, proposal.tool, args),
            },
            countdown_s=max(wait_s, 0.01),
        )

    def _claim_and_execute(
        self,
        st: _Step,
        spec: ToolSpec,
        args_model: BaseModel,
        args: dict[str, Any],
        lock: Lease | None,
        timeout_s: float,
    ) -> ToolOutcome | _Move:
        # a retried call keeps the key of its first attempt: the tool (and any external
        # system it passes the key to) sees one call, tried again
        key = st.call_key or f"{st.run_id}:{st.step_no}:0"
        earlier, replay = self._claim(st, spec, args, lock, key)
        refused = self._charge_executions(st, spec, key, earlier, runs_now=replay is None)
        if refused is not None:
            return refused
        if replay is not None:
            return replay
        ctx = ToolContext(
            run_id=st.run_id,
            tenant_id=st.tenant_id,
            route=st.run["route"],
            step=st.step_no,
            call_index=0,
            idempotency_key=key,
            fencing_token=lock.fencing_token if lock else None,
            redis=self.tool_redis,
            keys=self.keys,
        )
        st.trace.add("tool_start", tool=spec.name, idempotency_key=key, timeout_s=timeout_s)
        outcome = execute(spec, args_model, ctx, timeout_s)
        # a tool may echo its arguments in an error: its secret ones never reach a record
        outcome.error = proposals.scrub(outcome.error, st.secrets)
        st.tool_executed = True
        st.trace.add(
            "tool_end",
            tool=spec.name,
            ok=outcome.ok,
            duration_ms=outcome.duration_ms,
            error_code=outcome.error_code,
            error=outcome.error,
        )
        if spec.side_effect != "read":
            st.effect_update = {
                "idempotency_key": key,
                "status": "succeeded"
                if outcome.ok
                else ("unknown" if outcome.outcome_unknown else "failed"),
                "result": redact(outcome.result, spec.secret_args) if outcome.ok else None,
                "error": outcome.error,
                "finished_at": utcnow(),
            }
        return outcome

    def _claim(
        self, st: _Step, spec: ToolSpec, args: dict[str, Any], lock: Lease | None, key: str
    ) -> tuple[int, ToolOutcome | None]:
        """Commit the allow decision before the tool runs; for a side effect, together with
        the claim on its idempotency key. Returns the executions of this call by earlier
        copies of the step (uncharged), and a recorded outcome to replay, if any."""
        decisions, st.decisions = st.decisions, []
        events = st.trace.drain()
        if spec.side_effect == "read":
            self.store.store_decisions(decisions, events)
            # no record of earlier attempts: every execution the hold covers besides this
            # one may have run (a copy of the step that died); charged, fail closed
            return max(st.budget.hold_tools - 1, 0), None
        claim = self.store.claim_effect(
            {
                "idempotency_key": key,
                "run_id": st.run_id,
                "tenant_id": st.tenant_id,
                "step_no": st.step_no,
                "tool": spec.name,
                "side_effect_class": spec.side_effect,
                "status": "started",
                "args_digest": args_digest(args),
                "args": redact(args, spec.secret_args),
                "fencing_token": lock.fencing_token if lock else None,
                "started_at": utcnow(),
            },
            decisions,
            events,
            retry=st.call_key is not None,
            retry_unknown=spec.retry_unknown,
        )
        earlier = self._earlier_executions(st, claim)
        if claim.fresh:
            return earlier, None
        return earlier, self._replay(st, spec, claim.status, claim.result, claim.error, key)

    def _replay(
        self, st: _Step, spec: ToolSpec, status: str, result: Any, error: str | None, key: str
    ) -> ToolOutcome | None:
        """A redelivered step found this call's record: never repeat a finished side effect."""
        if status == "succeeded":
            st.trace.add("tool_replayed", tool=spec.name, idempotency_key=key, status=status)
            return ToolOutcome(ok=True, result=result)
        if status in ("failed", "unknown"):
            st.trace.add("tool_replayed", tool=spec.name, idempotency_key=key, status=status)
            return ToolOutcome(ok=False, error_code="tool_error", error=error or status)
        # "started": the earlier attempt died mid-call; its outcome is unknown
        if spec.retry_unknown:
            st.trace.add("tool_retry_unknown", tool=spec.name, idempotency_key=key)
            return None
        st.trace.add("tool_outcome_unknown", tool=spec.name, idempotency_key=key)
        st.effect_update = {
            "idempotency_key": key,
            "status": "unknown",
            "finished_at": utcnow(),
            "error": "worker died during the call; not repeated (irreversible)",
        }
        return ToolOutcome(
            ok=False,
            error_code="side_effect_unknown",
            error="an earlier attempt died mid-call; an irreversible call is not repeated",
        )

    def _earlier_executions(self, st: _Step, claim: Any) -> int:
        """Executions of this call by earlier copies of this step, which died before
        settling (so nothing charged them): the claims on its idempotency key before this
        one. A key kept from an earlier step (a retried call) was also claimed by steps
        that settled: bounded then by the executions the hold covers."""
        prior = int(claim.attempts) - (1 if claim.status == "started" else 0)
        if claim.fresh:
            prior = 0
        if st.call_key is not None:
            prior = min(prior, max(st.budget.hold_tools - 1, 0))
        return max(prior, 0)

    def _charge_executions(
        self, st: _Step, spec: ToolSpec, key: str, earlier: int, *, runs_now: bool
    ) -> _Move | None:
        """Count the executions this step is charged for; reserve any the hold does not
        cover yet before the tool runs again. If that is refused, the tool does not run
        again and the run stops on the budget."""
        try:
            added = st.budget.count_executions(earlier, runs_now=runs_now)
        except BudgetExhausted as exc:
            if spec.side_effect != "read":
                st.effect_update = {
                    "idempotency_key": key,
                    "status": "unknown",
                    "finished_at": utcnow(),
                    "error": "an earlier attempt died mid-call; not repeated: no budget left",
                }
            return self._tool_exhausted(st, exc)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return None

    def _after_tool(
        self, st: _Step, spec: ToolSpec, outcome: ToolOutcome, args: dict[str, Any]
    ) -> _Move:
        if outcome.ok:
            return _Move(
                RunStatus.RUNNING,
                "tool_call",
                "tool_succeeded",
                observation=outcome.result,
                run_updates={
                    "pending_proposal": None,
                    "attempt": 0,
                    "workflow_step": f"after:{spec.name}",
                },
            )
        if outcome.error_code == "side_effect_unknown":
            return _Move(
                RunStatus.FAILED,
                "tool_call",
                "side_effect_unknown",
                observation={"error": outcome.error},
                stop_reason=stop_reasons.make("failed", "side_effect_unknown"),
                run_updates={"pending_proposal": None},
            )
        code = outcome.error_code or "tool_error"
        policy = self.catalog.retry_policy(st.run["route"], spec.name)
        retryable = not outcome.outcome_unknown or spec.retry_unknown
        if policy is not None and retryable and code not in policy.non_retryable:
            if st.call_key is None:
                st.call_key = f"{st.run_id}:{st.step_no}:0"
            pending = self._pending(st, spec.name, args)
            move = self._retry_or_dead_letter(
                st, "tool", code, outcome.error or "", policy, pending
            )
            move.kind = "tool_call"
            return move
        move = self._error_move(st, "tool", code, outcome.error or "")
        move.kind = "tool_call"
        move.run_updates["pending_proposal"] = None
        return move

    def _lock_busy(
        self,
        st: _Step,
        lock_name: str,
        busy: Busy,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> _Move:
        waits = int(st.run["lock_waits"]) + 1
        st.trace.add("lock_busy", lock=lock_name, waits=waits, retry_after_ms=busy.retry_after_ms)
        if waits > st.route.lock_wait_attempts:
            return _Move(
                RunStatus.FAILED,
                "deferred",
                "lock_timeout",
                observation={"lock": lock_name},
                stop_reason=stop_reasons.make("failed", "lock_timeout"),
                run_updates={"lock_waits": waits, "pending_proposal": None},
            )
        backoff = min(0.05 * 2 ** min(waits, 7), 5.0)
        countdown = max(0.02, min(busy.retry_after_ms / 1000, backoff))
        return _Move(
            RunStatus.RUNNING,
            "deferred",
            "lock_busy",
            observation={"lock": lock_name},
            run_updates={
                "lock_waits": waits,
                "workflow_step": f"waiting_lock:{lock_name}",
                "pending_proposal": self._pending(st, proposal.tool, args),
            },
            countdown_s=countdown,
        )

    def _refuse(
        self, st: _Step, code: str, errors: Any, raw: Any, *, validated: bool = False
    ) -> _Move:
        """An invalid proposal: never executed; fed back to the model while the route allows."""
        if not validated:
            st.trace.add("validation", ok=False, code=code, errors=errors)
        if st.proposal is None:
            st.proposal = raw if isinstance(raw, dict) else {"raw": repr(raw)[:500]}
        count = int(st.run["invalid_proposals"]) + 1
        observation = {"refused": code, "errors": errors}
        updates = {"invalid_proposals": count, "pending_proposal": None}
        if count > st.route.max_invalid_proposals:
            return _Move(
                RunStatus.REFUSED,
                "refused",
                f"invalid_proposal:{code}",
                observation=observation,
                stop_reason=stop_reasons.make("invalid_proposal", code),
                run_updates=updates,
            )
        return _Move(
            RunStatus.RUNNING,
            "refused",
            f"refused:{code}",
            observation=observation,
            run_updates=updates,
        )

    def _error_move(self, st: _Step, source: str, code: str, error: str) -> _Move:
        """A failed tool or proposer call: fed back while the route tolerates it."""
        count = int(st.run["tool_errors"]) + 1
        observation = {"error": code, "detail": error[:1000]}
        updates: dict[str, Any] = {"tool_errors": count}
        if count > st.route.max_tool_errors:
            return _Move(
                RunStatus.FAILED,
                "failed",
                f"{source}_failed:{code}",
                observation=observation,
                stop_reason=stop_reasons.make("failed", code),
                run_updates=updates,
            )
        return _Move(
            RunStatus.RUNNING,
            "failed",
            f"{source}_failed:{code}",
            observation=observation,
            run_updates=updates,
        )

    # --- checkpoint, settle, next ----------------------------------------------------
    def _finish(self, st: _Step, move: _Move, lease: Lease) -> StepResult:
        actual = self._actual_spend(st) if st.budget.reserved else None
        if move.stop_reason:
            st.trace.add("stop", reason=move.stop_reason, status=move.status.value)
        st.trace.add("checkpoint", step=st.step_no, outcome=move.outcome, status=move.status.value)
        if actual is not None:
            st.trace.add("budget_settle", actual=actual)
        now = utcnow()
        updates: dict[str, Any] = {**move.run_updates}
        if "attempt" not in updates and move.kind != "deferred" and st.run["attempt"]:
            updates["attempt"] = 0  # the failing call got past its failure
        if st.used_proposer:
            updates["turns"] = int(st.run["turns"]) + 1
        if move.stop_reason:
            updates["stop_reason"] = move.stop_reason
        if move.output is not None:
            updates["output"] = redact(move.output)
        if move.status in TERMINAL_STATUSES:
            updates["finished_at"] = now
            updates["workflow_step"] = updates.get("workflow_step") or "finished"
        if len(updates.get("workflow_step") or "") > WORKFLOW_STEP_CHARS:
            # a lock name is rendered from the model's arguments: shown, not an identity
            updates["workflow_step"] = updates["workflow_step"][: WORKFLOW_STEP_CHARS - 3] + "..."
        if st.run["started_at"] is None:
            updates["started_at"] = st.started_at
        updates["checkpoint_ref"] = f"step:{st.step_no}"
        cp = Checkpoint(
            run_id=st.run_id,
            step_no=st.step_no,
            status=move.status,
            run_updates=updates,
            step={
                "run_id": st.run_id,
                "tenant_id": st.tenant_id,
                "step_no": st.step_no,
                "kind": move.kind,
                "proposal": redact(st.proposal),
                "outcome": move.outcome,
                "observation": redact(move.observation),
                "input_tokens": st.usage.input_tokens,
                "output_tokens": st.usage.output_tokens,
                "model_version": st.model_version,
                "started_at": st.started_at,
                "finished_at": now,
                "duration_ms": int((time.monotonic() - st.started) * 1000),
            },
            events=st.trace.drain(),
            spend=self._spend_row(st, actual) if actual is not None else None,
            decisions=st.decisions,
            effect_update=st.effect_update,
            pending_secrets=st.pending_secrets,
            clear_pending_secrets="pending_proposal" in updates
            and bool((st.run["pending_proposal"] or {}).get("secret_args")),
        )
        try:
            self.store.checkpoint(cp)
        except StaleWrite as exc:
            log.info("step %s/%s lost to another copy: %s", st.run_id, st.step_no, exc)
            if st.budget.reserved:
                self.ledger.release(st.run_id, st.step_no)
            self.leases.release(lease)
            return StepResult("stale_write")
        except Exception:
            # the checkpoint failed for a reason nobody could know before (the database went
            # away): a side effect that ran must still have its outcome on record, or a
            # retry could not tell that it ran
            if st.effect_update is not None:
                self._record_effect_outcome(st.effect_update)
            raise

        # one round trip: settle the budget, release the run lease, free the step's slot,
        # queue the next step and dispatch what may run now; then publish it
        ops = Ops().complete(item_of(st.run, st.step_no))
        if move.continues and move.dead_letter is None:
            following = item_of(st.run, st.step_no + 1)
            if move.countdown_s:
                ops.delay(following, now_ms() + int(move.countdown_s * 1000))
            else:
                ops.enqueue(following)
        ops.promote().dispatch(1)  # the slot this step frees; the pump fills the rest

        def settle_release_schedule(pipe: Any) -> None:
            if actual is not None:
                self.ledger.settle_in(pipe, st.run_id, st.step_no, actual)
            self.leases.release_in(pipe, lease)
            self.scheduler.queue_in(pipe, ops)
            self.scheduler.observe_step_time(pipe, st.run["route"], cp.step["duration_ms"])

        results = scripts.run_pipeline(self.redis, settle_release_schedule)
        self.dispatch.publish(self.scheduler.outcome(results[-2]).dispatched)
        if move.dead_letter is not None:
            dl_class, error_type, error = move.dead_letter
            self.dead_letters.dead_letter_step(
                st.run_id, st.step_no + 1, dl_class, error_type=error_type, error=error
            )
            return StepResult(f"dead_lettered:{dl_class}")
        if move.status == RunStatus.FAILED:
            self.compensations.after_failure(st.run)
        if move.continues:
            return StepResult(move.outcome, next_step=st.step_no + 1, countdown_s=move.countdown_s)
        return StepResult(move.outcome)

    def _record_effect_outcome(self, effect_update: dict[str, Any]) -> None:
        try:
            self.store.record_effect_outcome(effect_update)
        except Exception:
            log.exception(
                "side effect %s: its outcome could not be recorded either; a retry treats it "
                "as unknown (same idempotency key, or an operator for an irreversible tool)",
                effect_update["idempotency_key"],
            )

    def _spend_row(self, st: _Step, actual: dict[str, int]) -> dict[str, Any]:
        return {
            "run_id": st.run_id,
            "tenant_id": st.tenant_id,
            "route": st.run["route"],
            "step_no": st.step_no,
            "day": today(),
            "input_tokens": st.usage.input_tokens,
            "output_tokens": st.usage.output_tokens,
            "at": utcnow(),
            **actual,
        }


def backoff_s(policy: RetryPolicy, failures: int) -> float:
    """Exponential backoff with jitter before attempt ``failures + 1``."""
    base = min(policy.backoff_s * 2 ** (failures - 1), policy.backoff_max_s)
    return float(max(0.0, base * (1 + random.uniform(-policy.jitter, policy.jitter))))


def _policy_retry(st: _Step) -> int:
    """1 if the step retries a call that failed (the route's retry policy), else 0."""
    return 1 if int(st.run.get("attempt") or 0) > 0 else 0


def _retries_reserved(st: _Step) -> int:
    """A retried call, and a redelivered step: each reserves one ``retries`` unit."""
    return _policy_retry(st) + (1 if st.attempt > 0 else 0)


#: exception class names (as Celery reports them) -> the failure class in ``failed:<class>``
_FAILURE_CLASSES = {
    "TimeLimitExceeded": "step_timeout",
    "SoftTimeLimitExceeded": "step_timeout",
    "WorkerLostError": "worker_lost",
    "MaxRetriesExceededError": "retries_exhausted",
    "route_removed": "route_removed",
}
