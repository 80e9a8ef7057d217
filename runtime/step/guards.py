"""Stop conditions checked before anything is spent: cancelled, route stopped, deadline,
step limit."""

from __future__ import annotations

from runtime import stop_reasons
from runtime.contract import RunStatus
from runtime.step.collaborators import LiveControls
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome
from runtime.store.db import utcnow


class Guards:
    def __init__(self, *, controls: LiveControls) -> None:
        self.controls = controls

    def check(self, st: Step) -> Move | None:
        """The move that stops the run now, or None to go on. Reads the kill switches
        unless they came with the run lease (and keeps the disabled tools on ``st``)."""
        run, route = st.run, st.route
        cancelled, stopped, st.disabled_tools = st.controls or self.controls.live_controls(
            st.run_id, run["route"], route.allowed_tools
        )
        if cancelled:
            return Move(
                RunStatus.CANCELLED,
                StepKind.STOPPED,
                StepOutcome.CANCELLED,
                stop_reason=stop_reasons.make("cancelled", "operator"),
            )
        if not route.enabled or stopped:
            return Move(
                RunStatus.CANCELLED,
                StepKind.STOPPED,
                StepOutcome.ROUTE_STOPPED,
                stop_reason=stop_reasons.make("cancelled", "route_stopped"),
            )
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
