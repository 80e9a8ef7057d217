"""The step's budget: reserve its worst case before anything runs (in every scope: run,
tenant day, route day), add a proposed tool call, and work out what it really spent."""

from __future__ import annotations

import time
from typing import Any

from runtime.budgets import extension
from runtime.budgets.ledger import BudgetLedger, OutputAllowance, Scope, today
from runtime.budgets.step import StepBudget
from runtime.budgets.tokens import MIN_OUTPUT_TOKENS, model_cost_micro, nano_per_token
from runtime.config import RuntimeConfig
from runtime.errors import BudgetExhausted
from runtime.proposers.base import Prompt
from runtime.step import outcomes
from runtime.step.collaborators import CatalogReads
from runtime.step.state import LEASE_MARGIN_S, Move, Step
from runtime.store.db import utcnow
from runtime.tools.registry import ToolSpec


class Budgeting:
    def __init__(
        self, *, config: RuntimeConfig, ledger: BudgetLedger, catalog: CatalogReads
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.catalog = catalog

    def open(self, st: Step) -> None:
        """The step's (empty) hold; nothing is reserved yet."""
        ttl_ms = int((self.config.lease_ttl_s() + LEASE_MARGIN_S) * 1000)
        st.budget = StepBudget(self.ledger, st.run_id, st.step_no, ttl_ms)

    def reserve(self, st: Step, prompt: Prompt | None, pending: dict[str, Any] | None) -> None:
        """Reserve the step's worst case before anything runs. A model call: its prompt's
        bound plus as many output tokens as every scope still holds, up to the policy's
        ``tokens_per_step`` (the grant becomes the call's ``max_tokens``), and their cost.
        A resumed tool call: one tool call and its cost. A tool call the model proposes is
        reserved when proposed (``reserve_tool``), so a step that only replies needs no
        tool-call budget. ``BudgetExhausted`` if it does not fit."""
        budget = st.budget
        amounts = {
            "tokens": 0,
            "model_calls": 0,
            "tool_calls": 0,
            "retries": _retries_reserved(st),
            "wall_clock_ms": int(st.route.step_timeout_s * 1000),
            "cost_micro_usd": 0,
        }
        output: OutputAllowance | None = None
        tools = 0
        if prompt is not None:
            model = self.config.models[st.model_name]
            cap = self.config.budget_policies[st.route.budget_policy].tokens_per_step
            amounts["tokens"] = prompt.tokens
            amounts["model_calls"] = 1
            output = OutputAllowance(
                cap=cap,
                minimum=min(MIN_OUTPUT_TOKENS, cap),
                cost_base_nano=prompt.tokens * nano_per_token(model.input_usd_per_mtok),
                cost_per_token_nano=nano_per_token(model.output_usd_per_mtok),
            )
        elif pending is not None and pending.get("type") == "tool_call":
            # (a kept call a reviewer denied is not run: nothing to reserve for it)
            budget.tool_cost_micro = self.catalog.tool_cost_micro(str(pending.get("tool")))
            amounts["tool_calls"] = 1
            amounts["cost_micro_usd"] = budget.tool_cost_micro
            tools = 1
        reservation = budget.reserve(self._scopes(st), amounts, output, tools)
        st.trace.add(
            "budget_reserve",
            amounts=budget.hold,
            state=reservation.state,
            prompt_tokens=budget.prompt_tokens if output else None,
            max_output_tokens=budget.granted_output if output else None,
        )

    def reserve_tool(self, st: Step, spec: ToolSpec) -> Move | None:
        """Add the proposed tool call (and its cost) to the step's hold before it runs;
        ``budget_exhausted:<dimension>`` if it does not fit, with nothing executed (or,
        if the route asks, a wait for an extension: the caller keeps the call)."""
        try:
            added = st.budget.reserve_tool(self.catalog.tool_cost_micro(spec.name))
        except BudgetExhausted as exc:
            return self.exhausted(st, exc, tool=True)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return None

    def reserve_retrieval(self, st: Step) -> Move | None:
        """A search counts as one call of the ``tool_calls`` dimension (free of cost):
        reserved before it runs, like a tool call; ``budget_exhausted:tool_calls`` if it
        does not fit, with nothing searched."""
        try:
            added = st.budget.reserve_tool(0)
        except BudgetExhausted as exc:
            return self.exhausted(st, exc, tool=True)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return None

    def exhausted(self, st: Step, exc: BudgetExhausted, *, tool: bool = False) -> Move:
        """A reservation the ledger refused. The run stops (``budget_exhausted``), unless
        its own budget refused and its route says ``on_budget_exhausted: ask``: then it
        waits for an extension of that budget, and the step is tried again once one is
        granted. A tenant's or a route's day is never extended: those stop the run."""
        own = exc.scope == self.ledger.run_scope(st.run_id, {}).name
        # a child's budget was carved out of its parent's: never extended past it
        carved = st.run.get("delegated_budget") is not None
        if not own or carved or st.route.on_budget_exhausted != "ask":
            return outcomes.tool_exhausted(st, exc) if tool else outcomes.exhausted(st, exc)
        asked = extension.requested(
            st.route.budget_extension.ledger_limits(), exc.dimension, exc.shortfall
        )
        record = extension.waiting(st.run.get("budget_extension"), asked, exc.dimension, st.step_no)
        return outcomes.budget_wait(st, exc, record)

    def run_scope(self, st: Step) -> Scope:
        """The run's own scope: its budget policy's per-run limits, raised by extensions
        granted to it; a child's (``delegated_budget``) lowered to what its parent carved
        for it, never raised."""
        policy = self.config.budget_policies[st.route.budget_policy]
        limits = policy.per_run.ledger_limits()
        carved = st.run.get("delegated_budget")
        if isinstance(carved, dict):
            return self.ledger.run_scope(st.run_id, _tighter(limits, carved))
        granted = extension.granted_of(st.run.get("budget_extension"))
        return self.ledger.run_scope(st.run_id, limits, granted)

    def _scopes(self, st: Step) -> list[Scope]:
        run, ledger = st.run, self.ledger
        tenant = self.config.tenants.get(run["tenant_id"])
        day = today()
        scopes = [self.run_scope(st)]
        if tenant is not None:
            scopes.append(
                ledger.tenant_day_scope(run["tenant_id"], tenant.daily_budget.ledger_limits(), day)
            )
        scopes.append(
            ledger.route_day_scope(run["route"], st.route.daily_budget.ledger_limits(), day)
        )
        return scopes

    def actual_spend(self, st: Step) -> dict[str, int]:
        """What the step spent, bounded by what its hold holds (traced if cut)."""
        model, budget = self.config.models[st.model_name], st.budget
        executions = budget.tool_executions
        cost = executions * budget.tool_cost_micro
        if st.used_proposer:
            cost += model_cost_micro(
                st.usage.input_tokens,
                st.usage.output_tokens,
                nano_per_token(model.input_usd_per_mtok),
                nano_per_token(model.output_usd_per_mtok),
            )
        redelivered = 1 if st.attempt > 0 else 0
        actual, over = budget.bounded(
            {
                "tokens": st.usage.total_tokens,
                "model_calls": 1 if st.used_proposer else 0,
                "tool_calls": 1 if executions else 0,
                # a retried call, plus each execution beyond the first (copies of the step
                # that died after running the tool); a redelivered step counts one at least
                "retries": _policy_retry(st) + max(redelivered, executions - 1),
                "wall_clock_ms": int((time.monotonic() - st.started) * 1000),
                "cost_micro_usd": cost,
            }
        )
        if over:
            st.trace.add(
                "spend_clamped",
                spent=over,
                reserved={d: budget.hold.get(d, 0) for d in over},
            )
        return actual


def spend_row(st: Step, actual: dict[str, int]) -> dict[str, Any]:
    """The step's spend record, written with its checkpoint."""
    return {
        "run_id": st.run_id,
        "tenant_id": st.tenant_id,
        "route": st.run["route"],
        "step_no": st.step_no,
        "day": today(),
        "input_tokens": st.usage.input_tokens,
        "output_tokens": st.usage.output_tokens,
        "at": utcnow(),
        **actual,
    }


def _tighter(limits: dict[str, int], carved: dict[str, Any]) -> dict[str, int]:
    """Per dimension the lower of two limits (-1: unlimited)."""
    out = dict(limits)
    for dim, value in carved.items():
        if dim in out and isinstance(value, int) and value >= 0:
            out[dim] = value if out[dim] < 0 else min(out[dim], value)
    return out


def _policy_retry(st: Step) -> int:
    """1 if the step retries a call that failed (the route's retry policy), else 0."""
    return 1 if int(st.run.get("attempt") or 0) > 0 else 0


def _retries_reserved(st: Step) -> int:
    """A retried call, and a redelivered step: each reserves one ``retries`` unit."""
    return _policy_retry(st) + (1 if st.attempt > 0 else 0)
