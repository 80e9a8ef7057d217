"""Decisions shared by the stages: a failed call (tried again, fed back, or the end of the
run), an invalid proposal, an exhausted budget."""

from __future__ import annotations

import random
import uuid
from typing import Any, Literal

from runtime import stop_reasons
from runtime.budgets import extension
from runtime.config import RetryPolicy
from runtime.contract import RunStatus
from runtime.errors import BudgetExhausted
from runtime.step import approval
from runtime.step.collaborators import DeadLettering
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step

#: what failed: the model's call or a tool's
Source = Literal["tool", "proposer"]

_FAILED = {"tool": StepOutcome.TOOL_FAILED, "proposer": StepOutcome.PROPOSER_FAILED}
_RETRY = {"tool": StepOutcome.TOOL_RETRY, "proposer": StepOutcome.PROPOSER_RETRY}


class Retries:
    """A retryable failure: try the same call again after a backoff, or dead-letter it."""

    def __init__(self, *, dead_letters: DeadLettering) -> None:
        self.dead_letters = dead_letters

    def retry_or_dead_letter(
        self,
        st: Step,
        source: Source,
        code: str,
        error: str,
        policy: RetryPolicy,
        pending: dict[str, Any] | None,
    ) -> Move:
        """Try the same call again after a backoff (scheduled by the runtime, holding no
        slot) or, with the attempts used up, dead-letter the run at the next step, which
        keeps the call so an operator's retry resumes exactly there."""
        failures = int(st.run["attempt"]) + 1
        observation = {"error": code, "detail": error[:1000], "attempt": failures}
        updates: dict[str, Any] = {"attempt": failures, "pending_proposal": pending}
        if failures >= policy.max_attempts:
            st.trace.add("retries_exhausted", source=source, code=code, attempts=failures)
            return Move(
                RunStatus.RUNNING,
                StepKind.FAILED,
                _FAILED[source].of(code),
                observation=observation,
                run_updates={**updates, "workflow_step": workflow_step(WorkflowStep.DEAD_LETTERED)},
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
        return Move(
            RunStatus.RUNNING,
            StepKind.FAILED,
            _RETRY[source].of(code),
            observation=observation,
            run_updates={**updates, "workflow_step": workflow_step(WorkflowStep.RETRY, source)},
            countdown_s=max(delay, 0.01),
        )


def backoff_s(policy: RetryPolicy, failures: int) -> float:
    """Exponential backoff with jitter before attempt ``failures + 1``."""
    base = min(policy.backoff_s * 2 ** (failures - 1), policy.backoff_max_s)
    return float(max(0.0, base * (1 + random.uniform(-policy.jitter, policy.jitter))))


def error_move(st: Step, source: Source, code: str, error: str) -> Move:
    """A failed tool or proposer call: fed back while the route tolerates it."""
    count = int(st.run["tool_errors"]) + 1
    observation = {"error": code, "detail": error[:1000]}
    updates: dict[str, Any] = {"tool_errors": count}
    if count > st.route.max_tool_errors:
        return Move(
            RunStatus.FAILED,
            StepKind.FAILED,
            _FAILED[source].of(code),
            observation=observation,
            stop_reason=stop_reasons.make("failed", code),
            run_updates=updates,
        )
    return Move(
        RunStatus.RUNNING,
        StepKind.FAILED,
        _FAILED[source].of(code),
        observation=observation,
        run_updates=updates,
    )


def refuse(st: Step, code: str, errors: Any, raw: Any, *, validated: bool = False) -> Move:
    """An invalid proposal: never executed; fed back to the model while the route allows."""
    if not validated:
        st.trace.add("validation", ok=False, code=code, errors=errors)
    if st.proposal is None:
        st.proposal = raw if isinstance(raw, dict) else {"raw": repr(raw)[:500]}
    count = int(st.run["invalid_proposals"]) + 1
    observation = {"refused": code, "errors": errors}
    updates = {"invalid_proposals": count, "pending_proposal": None}
    if count > st.route.max_invalid_proposals:
        return Move(
            RunStatus.REFUSED,
            StepKind.REFUSED,
            StepOutcome.INVALID_PROPOSAL.of(code),
            observation=observation,
            stop_reason=stop_reasons.make("invalid_proposal", code),
            run_updates=updates,
        )
    return Move(
        RunStatus.RUNNING,
        StepKind.REFUSED,
        StepOutcome.REFUSED.of(code),
        observation=observation,
        run_updates=updates,
    )


def exhausted(st: Step, exc: BudgetExhausted) -> Move:
    """A reservation the ledger refused: the run stops, nothing (more) runs."""
    st.trace.add("budget_exhausted", scope=exc.scope, dimension=exc.dimension)
    return Move(
        RunStatus.FAILED,
        StepKind.STOPPED,
        StepOutcome.BUDGET_EXHAUSTED.of(exc.dimension),
        stop_reason=stop_reasons.make("budget_exhausted", exc.dimension),
    )


def budget_wait(st: Step, exc: BudgetExhausted, record: dict[str, Any]) -> Move:
    """The run's own budget refused the step and its route asks for more: the run waits
    (``needs_approval:budget_extension``) holding nothing; ``record`` (the run's
    ``budget_extension`` column) says what it asks for. The step is tried again, as it
    was, once an extension is granted (``RuntimeService.extend_budget``)."""
    st.trace.add("budget_exhausted", scope=exc.scope, dimension=exc.dimension)
    approval_id = uuid.uuid4().hex
    # an approval like any other (``agentrt approvals``): approving it grants the amount
    st.approval_request = approval.extension_request(st, approval_id, record["requested"])
    st.trace.add(
        "budget_extension_requested",
        dimension=exc.dimension,
        shortfall=exc.shortfall,
        requested=record["requested"],
        approval_id=approval_id,
    )
    return Move(
        RunStatus.WAITING,
        StepKind.WAITING,
        StepOutcome.NEEDS_APPROVAL.of(extension.RULE),
        observation={"budget_exhausted": exc.dimension, "requested": record["requested"]},
        stop_reason=stop_reasons.BUDGET_EXTENSION,
        run_updates={
            "budget_extension": record,
            "approval_id": approval_id,
            "workflow_step": workflow_step(WorkflowStep.AWAITING_BUDGET, exc.dimension),
        },
    )


def tool_exhausted(st: Step, exc: BudgetExhausted) -> Move:
    """``exhausted`` for a tool call: the call is dropped with the run."""
    move = exhausted(st, exc)
    move.run_updates["pending_proposal"] = None
    return move


def cancelled(st: Step, stop_reason: str | None, kind: StepKind = StepKind.STOPPED) -> Move:
    """The run was cancelled while its step worked: it ends now, with the stop reason the
    cancel stored (``cancelled:<actor>``); what the step already spent is settled."""
    reason = stop_reason or stop_reasons.make("cancelled", "operator")
    return Move(
        RunStatus.CANCELLED,
        kind,
        StepOutcome.CANCELLED,
        stop_reason=reason,
        run_updates={"pending_proposal": None},
    )
