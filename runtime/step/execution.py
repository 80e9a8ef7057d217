"""Executing an allowed tool call exactly once per idempotency key: commit the allow
decision (a side effect's with the claim on its key) before the tool runs, charge the
executions earlier copies of the step left unsettled, replay a recorded outcome instead of
running a finished side effect again. A call an approval covers spends it with its claim
(``runtime.step.approval``): one transaction, so the approval is used once, by this call."""

from __future__ import annotations

from typing import Any

import redis
from pydantic import BaseModel

from runtime import proposals, stop_reasons
from runtime.errors import BudgetExhausted, CancelRequested, ToolCancelled
from runtime.keys import Keys
from runtime.locks.leases import Lease
from runtime.step import outcomes
from runtime.step.state import Move, Step, args_digest
from runtime.step_record import StepKind
from runtime.store.approvals import ApprovalStore
from runtime.store.db import utcnow
from runtime.store.effects import APPROVAL_UNUSABLE
from runtime.store.runs import RunStore
from runtime.tools.context import ToolContext
from runtime.tools.executor import ToolOutcome, execute
from runtime.tools.registry import ToolSpec
from runtime.tracing import redact


class ToolExecution:
    def __init__(
        self,
        *,
        store: RunStore,
        approvals: ApprovalStore,
        keys: Keys,
        tool_redis: redis.Redis,
        control_redis: redis.Redis | None = None,
    ) -> None:
        self.store = store
        self.approvals = approvals
        self.keys = keys
        #: the tools' Redis (``ctx.redis``): their state and effect journals
        self.tool_redis = tool_redis
        #: the runtime's Redis, where an immediate cancel sets its switch (``ctx.cancelled``)
        self.control_redis = control_redis

    def claim_and_execute(
        self,
        st: Step,
        spec: ToolSpec,
        args_model: BaseModel,
        args: dict[str, Any],
        lock: Lease | None,
        timeout_s: float,
    ) -> ToolOutcome | Move:
        # a retried call keeps the key of its first attempt: the tool (and any external
        # system it passes the key to) sees one call, tried again
        key = st.call_key or f"{st.run_id}:{st.step_no}:0"
        try:
            earlier, replay = self._claim(st, spec, args, lock, key)
        except CancelRequested as exc:
            # the cancel committed before the claim: the call never starts (nothing was
            # written; its decision and trace go with the checkpoint that ends the run)
            st.trace.add("tool_not_started", tool=spec.name, reason="cancel_requested")
            return outcomes.cancelled(st, exc.stop_reason)
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
            control_redis=self.control_redis,
        )
        st.trace.add("tool_start", tool=spec.name, idempotency_key=key, timeout_s=timeout_s)
        outcome = execute(spec, args_model, ctx, timeout_s)
        # a tool may echo its arguments in an error: its secret ones never reach a record
        outcome.error = proposals.scrub(outcome.error, st.secrets)
        st.stage_ms["tool_call"] = st.stage_ms.get("tool_call", 0) + int(outcome.duration_ms)
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
        if outcome.error_code == ToolCancelled.CODE:
            actor = self._cancelled_by(st.run_id)
            if actor is not None:
                # the tool stopped on the cancel (or its commit was refused): nothing of it
                # committed, and the run ends here
                reason = stop_reasons.make("cancelled", actor[:190] or "operator")
                return outcomes.cancelled(st, reason, StepKind.TOOL_CALL)
        return outcome

    def _cancelled_by(self, run_id: str) -> str | None:
        if self.control_redis is None:
            return None
        try:
            raw = self.control_redis.get(self.keys.run_cancelled(run_id))
        except redis.RedisError:
            # unreadable (Redis restarting): a read changes nothing, so it goes on; the
            # checkpoint's fence in SQL still ends a cancelled run
            return None
        if raw is None:
            return None
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def _claim(
        self, st: Step, spec: ToolSpec, args: dict[str, Any], lock: Lease | None, key: str
    ) -> tuple[int, ToolOutcome | None]:
        """Commit the allow decision before the tool runs; for a side effect, together with
        the claim on its idempotency key. Returns the executions of this call by earlier
        copies of the step (uncharged), and a recorded outcome to replay, if any.

        A read's decision commits too, though a read changes nothing: it is the durable
        record that the call may have run. If every worker dies and Redis loses the step's
        hold with them, recovery rebuilds the hold from it (``runtime.recovery``), so the
        execution stays charged and the tenant's limits hold."""
        if spec.side_effect == "read":
            # a read has no claim to fence: the immediate-cancel switch (one GET) keeps a
            # step that outlived the cancel from spending a tool call on it
            actor = self._cancelled_by(st.run_id)
            if actor is not None:
                reason = stop_reasons.make("cancelled", actor[:190] or "operator")
                raise CancelRequested(st.run_id, reason, None)
            if st.approval_spend is not None and not self.approvals.consume(
                st.approval_spend, key, utcnow()
            ):
                return 0, _approval_unusable(st)
            decisions, st.decisions = st.decisions, []
            events = st.trace.drain()
            if decisions or events:
                # the record must outlive this process and Redis's data, not a crash of the
                # SQL server itself: it does not wait for the disk (the checkpoint will)
                self.store.store_decisions(decisions, events, synchronous=False)
            # no record of earlier attempts: every execution the hold covers besides this
            # one may have run (a copy of the step that died); charged, fail closed
            return max(st.budget.hold_tools - 1, 0), None
        decisions, st.decisions = st.decisions, []
        events = st.trace.drain()
        try:
            claim = self._claim_effect(st, spec, args, lock, key, decisions, events)
        except CancelRequested:
            # refused: nothing was written; the decision and the events stay the step's
            st.decisions = decisions + st.decisions
            st.trace.events = events + st.trace.events
            raise
        if claim.status == APPROVAL_UNUSABLE:
            return 0, _approval_unusable(st)
        earlier = self._earlier_executions(st, claim)
        if claim.fresh:
            return earlier, None
        return earlier, self._replay(st, spec, claim.status, claim.result, claim.error, key)

    def _claim_effect(
        self,
        st: Step,
        spec: ToolSpec,
        args: dict[str, Any],
        lock: Lease | None,
        key: str,
        decisions: list[dict[str, Any]],
        events: list[dict[str, Any]],
    ) -> Any:
        return self.store.claim_effect(
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
            approval=st.approval_spend,
        )

    def _replay(
        self, st: Step, spec: ToolSpec, status: str, result: Any, error: str | None, key: str
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

    @staticmethod
    def _earlier_executions(st: Step, claim: Any) -> int:
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

    @staticmethod
    def _charge_executions(
        st: Step, spec: ToolSpec, key: str, earlier: int, *, runs_now: bool
    ) -> Move | None:
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
            return outcomes.tool_exhausted(st, exc)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return None


def _approval_unusable(st: Step) -> ToolOutcome:
    """The approval was gone when the call came to spend it: the call does not run."""
    spend = st.approval_spend
    st.trace.add("approval_unusable", approval_id=spend.approval_id if spend else None)
    return ToolOutcome(
        ok=False,
        error_code="approval_unusable",
        error="the approval covering this call could not be spent; the call did not run",
    )
