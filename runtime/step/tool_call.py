"""An allowed tool call: its budget, the gates in front of it (breaker, rate limit,
bulkhead, lock), its execution (``runtime.step.execution``), and the decision its result
leads to (go on, try again, wait, fail)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime import stop_reasons, telemetry
from runtime.config import RuntimeConfig, ToolManifestEntry
from runtime.contract import RunStatus, ToolCallProposal
from runtime.locks.leases import Busy, Lease, LeaseManager
from runtime.scheduling import limits
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter, Take
from runtime.step import breakers as breaker
from runtime.step import outcomes
from runtime.step.budget import Budgeting
from runtime.step.collaborators import CatalogReads
from runtime.step.execution import ToolExecution
from runtime.step.outcomes import Retries
from runtime.step.pending import PendingCalls
from runtime.step.state import LEASE_MARGIN_S, Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step
from runtime.tools.executor import ToolOutcome
from runtime.tools.registry import ToolSpec

#: why a call waits -> the run's workflow step while it does (same words)
_WAITS = {
    StepOutcome.BREAKER_OPEN: WorkflowStep.BREAKER_OPEN,
    StepOutcome.RATE_LIMITED: WorkflowStep.RATE_LIMITED,
    StepOutcome.BULKHEAD_FULL: WorkflowStep.BULKHEAD_FULL,
}


class ToolCall:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        catalog: CatalogReads,
        breakers: Breakers,
        limiter: Limiter,
        leases: LeaseManager,
        budgeting: Budgeting,
        execution: ToolExecution,
        pending: PendingCalls,
        retries: Retries,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.breakers = breakers
        self.limiter = limiter
        self.leases = leases
        self.budgeting = budgeting
        self.execution = execution
        self.pending = pending
        self.retries = retries

    def run(
        self,
        st: Step,
        spec: ToolSpec,
        args_model: BaseModel,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> Move:
        lock_name = spec.lock_name(args_model)
        timeout_s = self.catalog.tool_timeout(spec, st.run["route"])
        entry = self.config.tools[spec.name]
        call_id = f"{st.run_id}:{st.step_no}"
        refused = self.budgeting.reserve_tool(st, spec)
        if refused is not None:
            if refused.status == RunStatus.WAITING:  # asks for more budget: keep the call
                refused.run_updates["pending_proposal"] = self.pending.keep(st, spec.name, args)
            return refused
        held = self._gates(st, spec, entry, call_id, timeout_s, args, proposal)
        if held is not None:
            return held
        try:
            with telemetry.span("agentrt.tool_call", tool=spec.name) as span:
                outcome = self._locked_execute(
                    st, spec, args_model, args, proposal, lock_name, timeout_s
                )
                if not isinstance(outcome, Move):
                    span.set("agentrt.tool_ok", bool(outcome.ok))
        finally:
            if entry.max_concurrency:
                self.limiter.leave_bulkhead(spec.name, call_id)
        if isinstance(outcome, Move):  # the lock was busy, or a re-execution was refused
            return outcome
        if entry.breaker:
            breaker.record(self.breakers, st, f"tool:{spec.name}", entry.breaker, ok=outcome.ok)
        return self._after_tool(st, spec, outcome, args)

    def _gates(
        self,
        st: Step,
        spec: ToolSpec,
        entry: ToolManifestEntry,
        call_id: str,
        timeout_s: float,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> Move | None:
        """The tool's breaker, rate limit and bulkhead, in that order: a wait if one holds
        the call back; None once it may run (holding a bulkhead place, if it has one)."""
        resource = f"tool:{spec.name}"
        if entry.breaker:
            verdict = self.breakers.allow(resource, entry.breaker, call_id)
            if not verdict.allowed:
                return self._wait(
                    st, StepOutcome.BREAKER_OPEN, resource, verdict.retry_after_s, args, proposal
                )
        if entry.rate_limit:
            wait_s = self.limiter.take([Take(limits.tool_calls(spec.name), entry.rate_limit)])
            if wait_s > 0:
                return self._wait(st, StepOutcome.RATE_LIMITED, resource, wait_s, args, proposal)
        if entry.max_concurrency:
            ttl_ms = int((timeout_s + LEASE_MARGIN_S) * 1000)
            wait_s = self.limiter.enter_bulkhead(spec.name, call_id, entry.max_concurrency, ttl_ms)
            if wait_s > 0:
                return self._wait(
                    st, StepOutcome.BULKHEAD_FULL, resource, min(wait_s, 0.2), args, proposal
                )
        return None

    def _locked_execute(
        self,
        st: Step,
        spec: ToolSpec,
        args_model: BaseModel,
        args: dict[str, Any],
        proposal: ToolCallProposal,
        lock_name: str | None,
        timeout_s: float,
    ) -> ToolOutcome | Move:
        """Execute under the tool's lock (and its fencing token), if it names one."""
        lock: Lease | None = None
        if lock_name:
            got = self.leases.acquire_lock(
                lock_name,
                self.leases.owner(f"{st.run_id}:{st.step_no}"),
                int((timeout_s + LEASE_MARGIN_S) * 1000),
            )
            if isinstance(got, Busy):
                return self._lock_busy(st, lock_name, got, args, proposal)
            lock = got
            st.trace.add("lock_acquired", lock=lock_name, fence=got.fencing_token)
        try:
            return self.execution.claim_and_execute(st, spec, args_model, args, lock, timeout_s)
        finally:
            if lock is not None:
                self.leases.release(lock)

    def _wait(
        self,
        st: Step,
        reason: StepOutcome,
        resource: str,
        wait_s: float,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> Move:
        """The call may not run yet (breaker, rate limit, bulkhead): keep the proposal, give
        back the slot, and run it again after ``wait_s``; the wait holds nothing."""
        st.trace.add(reason.value, limiter=resource, retry_after_s=round(wait_s, 3))
        return Move(
            RunStatus.RUNNING,
            StepKind.DEFERRED,
            reason.of(resource),
            observation={reason.value: resource},
            run_updates={
                "workflow_step": workflow_step(_WAITS[reason], resource),
                "pending_proposal": self.pending.keep(st, proposal.tool, args),
            },
            countdown_s=max(wait_s, 0.01),
        )

    def _after_tool(
        self, st: Step, spec: ToolSpec, outcome: ToolOutcome, args: dict[str, Any]
    ) -> Move:
        if outcome.ok:
            return Move(
                RunStatus.RUNNING,
                StepKind.TOOL_CALL,
                StepOutcome.TOOL_SUCCEEDED,
                observation=outcome.result,
                run_updates={
                    "pending_proposal": None,
                    "attempt": 0,
                    "workflow_step": workflow_step(WorkflowStep.AFTER, spec.name),
                },
            )
        if outcome.error_code == "side_effect_unknown":
            return Move(
                RunStatus.FAILED,
                StepKind.TOOL_CALL,
                StepOutcome.SIDE_EFFECT_UNKNOWN,
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
            pending = self.pending.keep(st, spec.name, args)
            move = self.retries.retry_or_dead_letter(
                st, "tool", code, outcome.error or "", policy, pending
            )
            move.kind = StepKind.TOOL_CALL
            return move
        move = outcomes.error_move(st, "tool", code, outcome.error or "")
        move.kind = StepKind.TOOL_CALL
        move.run_updates["pending_proposal"] = None
        return move

    def _lock_busy(
        self,
        st: Step,
        lock_name: str,
        busy: Busy,
        args: dict[str, Any],
        proposal: ToolCallProposal,
    ) -> Move:
        """Another call holds the lock: wait (backing off) up to the route's attempts."""
        waits = int(st.run["lock_waits"]) + 1
        st.trace.add("lock_busy", lock=lock_name, waits=waits, retry_after_ms=busy.retry_after_ms)
        if waits > st.route.lock_wait_attempts:
            return Move(
                RunStatus.FAILED,
                StepKind.DEFERRED,
                StepOutcome.LOCK_TIMEOUT,
                observation={"lock": lock_name},
                stop_reason=stop_reasons.make("failed", "lock_timeout"),
                run_updates={"lock_waits": waits, "pending_proposal": None},
            )
        backoff = min(0.05 * 2 ** min(waits, 7), 5.0)
        countdown = max(0.02, min(busy.retry_after_ms / 1000, backoff))
        return Move(
            RunStatus.RUNNING,
            StepKind.DEFERRED,
            StepOutcome.LOCK_BUSY,
            observation={"lock": lock_name},
            run_updates={
                "lock_waits": waits,
                "workflow_step": workflow_step(WorkflowStep.WAITING_LOCK, lock_name),
                "pending_proposal": self.pending.keep(st, proposal.tool, args),
            },
            countdown_s=countdown,
        )
