"""Autonomy level ``advisory``: a tool call is recorded as a proposal and never executed.

The step records the call (its kind ``proposed``, a ``proposal_recorded`` trace event) and
tells the model it was recorded, not run, so the model (or the script) goes on to its next
proposal. The run's output lists the proposals so far; when the model replies or stops,
its output keeps that list next to the reply (``with_proposals``).
"""

from __future__ import annotations

from typing import Any

from runtime.contract import RunStatus
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step

ADVISORY = "advisory"
#: proposals the run's output lists; the ones beyond are counted, never dropped silently
#: (every one is a step of its own with its arguments)
MAX_LISTED = 100

#: what the model is told about a call it proposed
NOTE = "recorded as a proposal for review; not executed (autonomy level advisory)"


def _listed(run: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The proposals the run's output lists so far, and how many were left off."""
    output = run.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("proposals"), list):
        return [], 0
    omitted = output.get("proposals_omitted")
    return list(output["proposals"]), omitted if isinstance(omitted, int) else 0


def _output(proposals: list[dict[str, Any]], omitted: int) -> dict[str, Any]:
    out: dict[str, Any] = {"proposals": proposals}
    if omitted:
        out["proposals_omitted"] = omitted
    return out


def proposed(st: Step, tool: str, shown_args: Any, rule: str) -> Move:
    """The call is recorded, not run: the run goes on to the model's next proposal.
    ``shown_args`` are the validated arguments with secrets redacted."""
    st.trace.add("validation", ok=True, type="tool_call", tool=tool)
    st.trace.add("proposal_recorded", tool=tool, rule=rule, executed=False)
    proposals, omitted = _listed(st.run)
    if len(proposals) < MAX_LISTED:
        proposals.append({"step": st.step_no, "tool": tool, "args": shown_args})
    else:
        omitted += 1
    return Move(
        RunStatus.RUNNING,
        StepKind.PROPOSED,
        StepOutcome.PROPOSED,
        observation={"recorded": True, "executed": False, "note": NOTE},
        output=_output(proposals, omitted),
        run_updates={
            "pending_proposal": None,
            "workflow_step": workflow_step(WorkflowStep.PROPOSED, tool),
        },
    )


def with_proposals(st: Step, move: Move) -> Move:
    """A reply or stop of an advisory run (or one that recorded proposals): its output
    lists them too, an empty list if the model proposed none."""
    proposals, omitted = _listed(st.run)
    if st.run.get("autonomy_level") != ADVISORY and not proposals and not omitted:
        return move
    output = move.output if isinstance(move.output, dict) else {}
    move.output = {**output, **_output(proposals, omitted)}
    return move
