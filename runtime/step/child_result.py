"""A child run's end, fed back: the step after a child ended (``runtime.delegations``
resumed its parent) records the child's result as the delegation's observation."""

from __future__ import annotations

from typing import Any

from runtime.contract import RunStatus
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome

#: ``pending_proposal`` types: the run waits for its child; the child ended (its result)
WAITING_FOR_CHILD = "delegate"
CHILD_RESULT = "delegate_result"


def returned(st: Step, pending: dict[str, Any]) -> Move:
    """The step after a child ended: its result (output, or status and stop reason) is
    the delegation's observation; the model proposes next."""
    child = str(pending.get("child_run_id"))
    status = str(pending.get("status"))
    st.proposal = {"type": WAITING_FOR_CHILD, "route": pending.get("route"), "childRunId": child}
    st.trace.add("delegation_returned", child_run_id=child, status=status)
    return Move(
        RunStatus.RUNNING,
        StepKind.DELEGATION,
        StepOutcome.CHILD_ENDED.of(status),
        observation={
            "child_run_id": child,
            "status": status,
            "stop_reason": pending.get("stop_reason"),
            "output": pending.get("output"),
            "spent": pending.get("spent"),
        },
        run_updates={"pending_proposal": None},
    )
