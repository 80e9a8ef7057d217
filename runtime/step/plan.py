"""The plan stage: a ``plan`` proposal (an ordered list of intended steps) is checked as a
whole before any of it runs, then recorded on the run row, where later steps compare their
proposals with it (``runtime.step.plan_follow``).

Checked, in order, each failure a refusal naming the step (``steps.<i>``):

* shape: a ``tool_call`` step names its tool and a ``delegate`` step its route
  (``plan_invalid``); other actions (retrieval, memory, delegation) are checked only for
  shape here: their own stages apply their rules when they are proposed;
* every planned tool is registered, enabled and allowed on the route
  (``plan_tool_not_allowed``);
* the plan fits in the steps the run has left after this one (``plan_too_long``);
* the policy engine, deciding each planned tool as its call would be decided, with no
  arguments: a rule that denies the tool for this run whatever its arguments denies the
  plan (``plan_policy_denied``, naming the step and the rule). A rule that asks for an
  approval asks when the call is proposed.

An accepted plan replaces the run's earlier one (trace ``plan_replaced``); the plan step is
a step like any other (a proposer call: it counts toward ``max_steps``).
"""

from __future__ import annotations

from typing import Any

from runtime.config import RuntimeConfig
from runtime.contract import PlanProposal, PlanStep, RunStatus
from runtime.policy import Decision
from runtime.step import outcomes
from runtime.step.policy_context import StepPolicy
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome
from runtime.tools.registry import ToolRegistry

#: the policy's built-in checks that mean "this tool is not usable on this route"
_NOT_ALLOWED = frozenset({"unknown_tool", "tool_disabled", "tool_not_allowed"})
#: planned actions that name what they act on (a plan step without it says nothing)
_NEEDS_TARGET = frozenset({"tool_call", "delegate"})
#: planned actions that end the run: they name nothing
_ENDS = frozenset({"reply", "stop"})


def recorded(proposal: PlanProposal, step_no: int) -> dict[str, Any]:
    """The plan as the run row keeps it: its steps, the next one expected, the step that
    proposed it, and whether the last proposal compared with it departed from it."""
    return {
        "steps": [s.model_dump(exclude_none=True) for s in proposal.steps],
        "next": 0,
        "step_no": step_no,
        "deviated": False,
    }


class PlanStage:
    def __init__(
        self, *, config: RuntimeConfig, registry: ToolRegistry, step_policy: StepPolicy
    ) -> None:
        self.config = config
        self.registry = registry
        self.step_policy = step_policy

    def act(self, st: Step, proposal: PlanProposal) -> Move:
        refused = self._shape(st, proposal)
        if refused is not None:
            return refused
        # each planned tool decided once, as its call would be (with no arguments)
        decided = [(i, tool, self._decide(st, tool)) for i, tool in _planned_tools(proposal)]
        refused = self._tools(st, decided)
        if refused is not None:
            return refused
        # this step is a proposer call itself: what is left after it
        left = st.route.max_steps - int(st.run["turns"]) - 1
        if len(proposal.steps) > left:
            error = {
                "loc": "steps",
                "msg": f"{len(proposal.steps)} planned steps; the run has {max(left, 0)} left",
            }
            return outcomes.refuse(st, "plan_too_long", [error], st.proposal)
        refused = self._policy(st, decided)
        if refused is not None:
            return refused
        return self._accept(st, proposal)

    def _shape(self, st: Step, proposal: PlanProposal) -> Move | None:
        errors = []
        for i, step in enumerate(proposal.steps):
            if step.action in _NEEDS_TARGET and step.target is None:
                errors.append({"loc": f"steps.{i}.target", "msg": f"a {step.action} names it"})
            elif step.action in _ENDS and step.target is not None:
                errors.append({"loc": f"steps.{i}.target", "msg": f"a {step.action} has none"})
        return outcomes.refuse(st, "plan_invalid", errors, st.proposal) if errors else None

    @staticmethod
    def _tools(st: Step, decided: list[tuple[int, str, Decision]]) -> Move | None:
        errors = [
            {"loc": f"steps.{i}.target", "msg": f"{tool!r}: {decision.rule_id}"}
            for i, tool, decision in decided
            if decision.rule_id in _NOT_ALLOWED
        ]
        if errors:
            return outcomes.refuse(st, "plan_tool_not_allowed", errors, st.proposal)
        return None

    @staticmethod
    def _policy(st: Step, decided: list[tuple[int, str, Decision]]) -> Move | None:
        for i, tool, decision in decided:
            if decision.effect != "deny":
                continue
            st.trace.add(
                "plan_policy_denied", index=i, tool=tool, rule=decision.label,
                policy_version=decision.policy_version,
            )  # fmt: skip
            error = {
                "loc": f"steps.{i}.target",
                "msg": f"the policy denies {tool!r} for this run",
                "rule": decision.label,
            }
            # the first denial refuses the whole plan: none of it runs
            return outcomes.refuse(st, "plan_policy_denied", [error], st.proposal)
        return None

    def _decide(self, st: Step, tool: str) -> Decision:
        spec = self.registry.get(tool)
        registered = spec is not None and tool in self.config.tools
        return self.step_policy.decide(st, tool=tool, args={}, spec=spec, registered=registered)

    def _accept(self, st: Step, proposal: PlanProposal) -> Move:
        plan = recorded(proposal, st.step_no)
        earlier = st.run.get("plan")
        if earlier is not None:
            st.trace.add(
                "plan_replaced",
                proposed_at=earlier.get("step_no"),
                followed=earlier.get("next"),
                steps=len(earlier.get("steps") or []),
            )
        st.trace.add("validation", ok=True, type="plan")
        st.trace.add("plan_recorded", steps=plan["steps"])
        # a plan proposed while another was followed: the new one's progress starts afresh
        st.run_updates.pop("plan", None)
        return Move(
            RunStatus.RUNNING,
            StepKind.PLAN,
            StepOutcome.PLAN_ACCEPTED,
            observation={"plan": "accepted", "steps": len(plan["steps"])},
            run_updates={"plan": plan, "pending_proposal": None},
        )


def _planned_tools(proposal: PlanProposal) -> list[tuple[int, str]]:
    steps: list[PlanStep] = proposal.steps
    return [(i, s.target) for i, s in enumerate(steps) if s.action == "tool_call" and s.target]
