"""A ``delegate`` proposal: start a child run under a budget carved out of this run's.

The stage checks the target route (``delegates_to``; enabled; open to the tenant), the
depth and fan-out caps of the route's ``delegation``, and the policy (a synthetic tool
``delegate:<route>``); then the ledger carves the child's budget out of this run's per-run
scope (``BudgetLedger.carve``: all dimensions or none, ``delegations`` counting one). Only
then is the child's row made; the checkpoint that makes this run wait commits it, so the
child exists exactly when this step took effect (a redelivered copy loses the
checkpoint's compare-and-set and its row with it). The child's per-run limits are what was
carved: it can never spend more. When it ends, ``runtime.delegations`` settles the hold
with what it spent and resumes this run; its next step feeds the result back
(``returned``).
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime import stop_reasons
from runtime.admission import Refusal
from runtime.budgets.ledger import BudgetLedger
from runtime.config import DIMENSIONS, RouteConfig, RuntimeConfig
from runtime.contract import DelegatedBudget, DelegateProposal, RunStatus
from runtime.errors import BudgetExhausted
from runtime.policy import PolicyContext, PolicyEngine
from runtime.step import decisions, outcomes
from runtime.step.budget import Budgeting
from runtime.step.child_result import WAITING_FOR_CHILD
from runtime.step.collaborators import ChildRuns
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step

#: the policy sees a delegation as a call of this tool, ``delegate:<route>``
POLICY_TOOL_PREFIX = "delegate:"


class DelegateStage:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        ledger: BudgetLedger,
        budgeting: Budgeting,
        policy: PolicyEngine,
        policy_sets: Mapping[str, PolicyEngine] | None = None,
        children: ChildRuns,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.budgeting = budgeting
        self.policy = policy
        self.policy_sets = dict(policy_sets or {})
        self.children = children

    def act(self, st: Step, proposal: DelegateProposal) -> Move:
        rules = st.route.delegation
        target = self.config.routes.get(proposal.route)
        if proposal.route not in st.route.delegates_to or not _open_to(target, st.tenant_id):
            return _refuse(
                st,
                "route_not_delegable",
                f"route {proposal.route!r} is not among this route's delegates_to "
                f"({', '.join(st.route.delegates_to) or 'none'}) or is closed to the tenant",
            )
        depth = int(st.run.get("depth") or 0) + 1
        if depth > rules.max_depth:
            return _refuse(
                st,
                "delegation_too_deep",
                f"a child would be at depth {depth}; at most {rules.max_depth}",
            )
        started = self.children.child_count(st.run_id, st.tenant_id)
        if started >= rules.max_children:
            return _refuse(
                st,
                "too_many_children",
                f"this run started {started} children; at most {rules.max_children}",
            )
        denied = self._policy(st, proposal)
        if denied is not None:
            return denied
        scope = self.budgeting.run_scope(st)
        limits = child_limits(scope.limits, proposal.budget, rules.default_budget.ledger_limits())
        if isinstance(limits, str):
            return _refuse(
                st,
                f"budget_unbounded:{limits}",
                f"this run's budget is limited in {limits}: the child's budget must name it",
            )
        made = self.children.child_row(
            st.run, proposal.route, proposal.goal, proposal.input, st.step_no, depth, limits
        )
        if isinstance(made, Refusal):  # as admission would refuse it from a caller
            return _refuse(st, f"child_refused:{made.code}", made.detail)
        row, events = made
        try:
            carved = self.ledger.carve(st.run_id, st.step_no, scope, {**limits, "delegations": 1})
        except BudgetExhausted as exc:
            st.trace.add("delegation_refused", code="budget_exhausted", dimension=exc.dimension)
            return _refuse(
                st,
                stop_reasons.make("budget_exhausted", exc.dimension),
                f"this run's remaining budget cannot cover the child's {exc.dimension}",
            )
        if carved.state != "new":
            limits = self._as_carved(st, scope.limits, limits)
            row["delegated_budget"] = limits
        child_id = str(row["run_id"])
        st.new_runs, st.new_run_events = [row], events
        st.trace.add(
            "delegated",
            child_run_id=child_id,
            route=proposal.route,
            depth=depth,
            budget=limits,
            hold=carved.state,
        )
        return Move(
            RunStatus.WAITING,
            StepKind.WAITING,
            StepOutcome.DELEGATED.of(child_id),
            observation={"delegated": child_id, "route": proposal.route, "budget": limits},
            stop_reason=stop_reasons.make("delegated", child_id),
            run_updates={
                "pending_proposal": {
                    "type": WAITING_FOR_CHILD,
                    "child_run_id": child_id,
                    "route": proposal.route,
                },
                "workflow_step": workflow_step(WorkflowStep.AWAITING_CHILD, child_id),
            },
        )

    def _as_carved(
        self, st: Step, parent: Mapping[str, int], asked: dict[str, int]
    ) -> dict[str, int]:
        """An earlier copy of this step carved the child's budget (it died before its
        checkpoint) and this copy's model may have asked for another: the child gets what
        the parent holds for it in every dimension the parent is limited in, never more."""
        held = self.ledger.carved(st.run_id, st.step_no) or {}
        limits = dict(asked)
        for dim, limit in parent.items():
            if limit >= 0 and dim != "delegations":
                limits[dim] = held.get(dim, 0)
        st.trace.add("delegation_carved_before", budget=limits)
        return limits

    def _policy(self, st: Step, proposal: DelegateProposal) -> Move | None:
        """The policy's decision on ``delegate:<route>``; anything but allow refuses the
        delegation (a delegation is never kept for an approval: fail closed)."""
        tool = POLICY_TOOL_PREFIX + proposal.route
        engine = self.policy if st.policy_set is None else self.policy_sets[st.policy_set]
        args = {"route": proposal.route, "goal": proposal.goal}
        decision = engine.decide(
            PolicyContext(
                tool=tool,
                args=args,
                side_effect=None,
                tenant=st.tenant_id,
                route=st.run["route"],
                risk_class=st.run["risk_class"],
                autonomy_level=st.run["autonomy_level"],
                # the route's delegates_to is its allow-list here (checked above)
                allowed_tools=(*st.run["allowed_tools"], tool),
                tool_registered=True,
                tool_enabled=True,
            )
        )
        decisions.record(st, tool, decision, args)
        if decision.effect == "allow":
            return None
        return Move(
            RunStatus.REFUSED,
            StepKind.REFUSED,
            StepOutcome.POLICY_DENIED.of(decision.label),
            observation={"denied": decision.label, "reasons": decision.reason_codes},
            stop_reason=stop_reasons.make("policy_denied", decision.label),
        )


def child_limits(
    parent: Mapping[str, int], asked: DelegatedBudget | None, default: Mapping[str, int]
) -> dict[str, int] | str:
    """The child's per-run limits in ledger units: what the proposal asks, else the
    route's default child budget, per dimension. A dimension the parent is limited in and
    neither names: that dimension's name (the delegation is refused; a child unlimited
    there could spend the parent's budget past its limit). ``delegations`` is not carved:
    the child's own budget policy limits its children."""
    given: dict[str, int | None] = {}
    if asked is not None:
        given = {
            "tokens": asked.tokens,
            "model_calls": asked.model_calls,
            "tool_calls": asked.tool_calls,
            "cost_micro_usd": None if asked.cost_usd is None else round(asked.cost_usd * 1e6),
        }
    limits: dict[str, int] = {}
    for dim in DIMENSIONS:
        if dim == "delegations":
            continue
        value = given.get(dim)
        if value is None and default.get(dim, -1) >= 0:
            value = default[dim]
        if value is None:
            if parent.get(dim, -1) >= 0:
                return dim
            continue
        limits[dim] = value
    return limits


def _open_to(route: RouteConfig | None, tenant: str) -> bool:
    return route is not None and route.enabled and ("*" in route.tenants or tenant in route.tenants)


def _refuse(st: Step, code: str, detail: str) -> Move:
    return outcomes.refuse(st, code, [{"loc": "delegate", "msg": detail}], st.proposal)
