"""Following the run's plan: each fresh proposal is compared with the next planned step.

A proposal that is that step advances the plan (trace ``plan_step`` {index, matched}); one
that is not (another action, or another target) is a deviation (trace ``plan_deviation``
{index, expected, proposed}) and the route's ``plan_deviation`` decides what it leads to:

* ``ignore``: nothing but the ``plan_step`` record (matched false);
* ``warn`` (default): the event, and the proposal goes on;
* ``require_approval``: a tool call waits for a human (``runtime.step.proposal`` makes its
  decision ``require_approval:plan_deviation``); any other kind is refused, since only a
  tool call can be kept for an approval (fail closed);
* ``refuse``: the proposal is refused (``plan_deviation``).

Whatever the route says, policy rules see the deviation (``match: {plan_deviation: true}``).
After a deviation the plan still expects the same step. A reply or a stop after the last
planned step is not a deviation: ending is what follows a finished plan.

The plan travels on the run row, read with it: a run without a plan costs nothing here (no
query, no Redis call). A kept call that resumes (after a wait, a retry, an approval) was
compared when it was proposed; it keeps that verdict and does not advance the plan again.
"""

from __future__ import annotations

from typing import Any

from runtime.contract import (
    DelegateProposal,
    MemoryWriteProposal,
    PlanProposal,
    RetrievalQueryProposal,
    ToolCallProposal,
)
from runtime.step import outcomes
from runtime.step.state import Move, Step

#: the proposal kinds that end the run
_ENDS = frozenset({"reply", "stop"})


def follow(st: Step, proposal: Any) -> bool | Move:
    """Whether ``proposal`` departs from the run's plan (what the policy is told), or the
    refusal the route's rules make of it."""
    plan = st.run.get("plan")
    resumed = st.run.get("pending_proposal") is not None
    if plan is None:
        if st.route.plan_required and isinstance(proposal, ToolCallProposal) and not resumed:
            error = {"loc": "type", "msg": "this route needs a plan before any tool call"}
            return outcomes.refuse(st, "plan_required", [error], st.proposal)
        return False
    if isinstance(proposal, PlanProposal):
        return False  # a new plan replaces this one (``runtime.step.plan``)
    if resumed:
        return bool(plan.get("deviated"))
    steps: list[dict[str, Any]] = plan["steps"]
    index = int(plan["next"])
    expected = steps[index] if index < len(steps) else None
    if expected is None and proposal.type in _ENDS:
        return False
    if expected is not None and _matches(expected, proposal):
        st.trace.add("plan_step", index=index, matched=True)
        st.run_updates["plan"] = {**plan, "next": index + 1, "deviated": False}
        return False
    return _deviation(st, plan, index, expected, proposal)


def _deviation(
    st: Step, plan: dict[str, Any], index: int, expected: dict[str, Any] | None, proposal: Any
) -> bool | Move:
    mode = st.route.plan_deviation
    st.run_updates["plan"] = {**plan, "deviated": True}
    if mode == "ignore":
        st.trace.add("plan_step", index=index, matched=False)
        return True
    proposed = {"action": proposal.type, "target": _target(proposal)}
    st.trace.add("plan_deviation", index=index, expected=expected, proposed=proposed, action=mode)
    held = mode == "require_approval" and not isinstance(proposal, ToolCallProposal)
    if mode == "refuse" or held:
        msg = f"the plan expects {_said(expected)} next, not {_said(proposed)}"
        if held:
            msg += " (only a tool call can wait for an approval)"
        error = {"loc": "type", "msg": msg, "index": index}
        return outcomes.refuse(st, "plan_deviation", [error], st.proposal)
    return True


def _matches(expected: dict[str, Any], proposal: Any) -> bool:
    if expected.get("action") != proposal.type:
        return False
    target = expected.get("target")
    if target is None:
        return True
    if isinstance(proposal, RetrievalQueryProposal):
        return target in proposal.sources
    return bool(target == _target(proposal))


def _target(proposal: Any) -> str | None:
    """What a proposal acts on, as a plan step names it."""
    if isinstance(proposal, ToolCallProposal):
        return proposal.tool
    if isinstance(proposal, DelegateProposal):
        return proposal.route
    if isinstance(proposal, MemoryWriteProposal):
        return proposal.namespace
    if isinstance(proposal, RetrievalQueryProposal):
        return ",".join(proposal.sources)
    return None


def _said(step: dict[str, Any] | None) -> str:
    if step is None:
        return "the end of the run (the plan is done)"
    target = step.get("target")
    return f"{step['action']} {target}" if target else str(step["action"])
