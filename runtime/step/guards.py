"""Stop conditions checked before anything is spent: cancelled, route stopped, paused,
deadline, step limit."""

from __future__ import annotations

from typing import Any

from runtime import stop_reasons
from runtime.contract import RunStatus
from runtime.controls import ControlsRead
from runtime.step.collaborators import LiveControls
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step
from runtime.store.db import utcnow

#: an actor read from a switch goes into a stop reason (at most 200 characters)
_ACTOR_CHARS = 190


class Guards:
    def __init__(self, *, controls: LiveControls) -> None:
        self.controls = controls

    def check(self, st: Step) -> Move | None:
        """The move that stops the run now, or None to go on. Reads the switches unless
        they came with the run lease (and keeps the disabled tools on ``st``)."""
        run, route = st.run, st.route
        controls = st.controls or self.controls.live_controls(
            st.run_id, run["route"], route.allowed_tools
        )
        st.disabled_tools = controls.disabled_tools
        st.pinned_model = controls.pinned_model
        st.forced_approval_tools = controls.forced_approval_tools
        st.forced_approval_route = controls.route_forced_approval
        cancelled = cancel_move(run, controls)
        if cancelled is not None:
            return cancelled
        if not route.enabled or controls.route_stopped:
            return Move(
                RunStatus.CANCELLED,
                StepKind.STOPPED,
                StepOutcome.ROUTE_STOPPED,
                stop_reason=stop_reasons.make("cancelled", "route_stopped"),
            )
        if controls.paused_by is not None:
            return pause_move(controls.paused_by)
        if run["deadline_at"] is not None and utcnow() > run["deadline_at"]:
            return Move(
                RunStatus.FAILED, StepKind.STOPPED, StepOutcome.TIMED_OUT, stop_reason="timed_out"
            )
        if run["pending_proposal"] is None and run["turns"] >= route.max_steps:
            return Move(
                RunStatus.FAILED,
                StepKind.STOPPED,
                StepOutcome.STEP_LIMIT,
                stop_reason="step_limit",
            )
        return None


def cancel_move(run: dict[str, Any], controls: ControlsRead) -> Move | None:
    """A cancel requested in SQL (the truth: its stop reason names the actor) or flagged
    in Redis ends the run before its step does anything, in either mode: nothing new
    starts after a cancel."""
    if run["status"] == RunStatus.CANCEL_REQUESTED.value:
        reason = run["stop_reason"] or stop_reasons.make("cancelled", "operator")
    elif controls.cancelled_by is not None:
        reason = stop_reasons.make("cancelled", controls.cancelled_by[:_ACTOR_CHARS] or "operator")
    else:
        return None
    return Move(RunStatus.CANCELLED, StepKind.STOPPED, StepOutcome.CANCELLED, stop_reason=reason)


def pause_move(actor: str) -> Move:
    """An operator paused the run: it waits, holding nothing, until it is resumed."""
    actor = actor[:_ACTOR_CHARS] or "operator"
    return Move(
        RunStatus.WAITING,
        StepKind.WAITING,
        StepOutcome.PAUSED,
        stop_reason=stop_reasons.make("paused", actor),
        run_updates={"workflow_step": workflow_step(WorkflowStep.PAUSED, actor)},
    )
