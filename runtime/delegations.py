"""Child runs (``delegate``): a new child's row, and what follows a child's end.

A child inherits its parent's tenant and actor; its request id names the parent's step
(``delegate:<parent>:<step>``), so at most one admitted child exists per step. When the
child ends (any terminal status, however it ended: its last step, a cancel, an expired
approval), ``child_ended`` settles the budget its parent's step carved for it with what
it actually spent (the rest returns to the parent) and moves the waiting parent on: its
next step feeds the child's result back. Each part is idempotent (the settle finds no
hold the second time; the parent's resume is a compare-and-set on its wait), and the
reconciler calls ``reconcile`` for children whose end nobody followed up (a crash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis

from runtime import admission, new_runs, stop_reasons
from runtime.budgets.ledger import BudgetLedger
from runtime.catalog import Catalog
from runtime.config import DIMENSIONS
from runtime.keys import Keys
from runtime.scheduling.scheduler import Ops, item_of
from runtime.statuses import TERMINAL_STATUSES
from runtime.step.child_result import CHILD_RESULT
from runtime.step.collaborators import Scheduling
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.delegations")

_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


class Delegations:
    def __init__(
        self,
        *,
        store: RunStore,
        ledger: BudgetLedger,
        keys: Keys,
        dispatch: Scheduling,
        catalog: Catalog,
        route_stopped: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.keys = keys
        self.dispatch = dispatch
        #: the config and versions a new run records
        self.catalog = catalog
        #: an operator's stop switch of a route (``agentrt ops stop-route``): a child is
        #: admitted as a submit would be, never onto a stopped route
        self.route_stopped = route_stopped

    # --- for the step (``runtime.step.collaborators.ChildRuns``) -----------------------
    def child_count(self, run_id: str, tenant_id: str) -> int:
        return self.store.child_count(run_id, tenant_id)

    def child_row(
        self,
        parent: Mapping[str, Any],
        route: str,
        goal: str,
        run_input: dict[str, Any],
        step_no: int,
        depth: int,
        budget: dict[str, int],
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | admission.Refusal:
        """The child's row (queued) and its first trace events (``delegated_from``), or
        why admission would refuse it as a request (``admission.decide``: the route's
        input size, the goal, ...)."""
        parent_id = str(parent["run_id"])
        req = admission.prepare(
            tenant=str(parent["tenant_id"]),
            route=route,
            goal=goal,
            input=run_input,
            actor=str(parent["actor_id"]),
            request_id=f"delegate:{parent_id}:{step_no}",
            idempotency_key=None,
            priority=None,
        )
        stopped = route in self.catalog.config.routes and self.route_stopped(route)
        refusal = admission.decide(self.catalog.config, req, route_stopped=stopped)
        if refusal is not None:
            return refusal
        row = new_runs.row_for(self.catalog, req, None)
        row.update(
            parent_run_id=parent_id,
            parent_step=step_no,
            depth=depth,
            delegated_budget=budget,
        )
        events = list(new_runs.admission_events(row, None))
        trace = TraceBuffer(row["run_id"], row["tenant_id"], row["trace_id"], None)
        trace.add("delegated_from", parent_run_id=parent_id, parent_step=step_no, budget=budget)
        events.extend(trace.drain())
        return row, events

    # --- after a child ended ---------------------------------------------------------
    def after_terminal(self, run: Mapping[str, Any]) -> None:
        """A step ended ``run``: follow up if it is a child. Never raises."""
        if run.get("parent_run_id") is not None:
            self.follow_up(str(run["run_id"]), str(run["tenant_id"]))

    def follow_up(self, child_id: str, tenant_id: str) -> None:
        """``child_ended`` that never raises: what it could not do now, the reconciler
        does (``reconcile``)."""
        try:
            self.child_ended(child_id, tenant_id)
        except Exception:
            log.warning("child run %s: its parent was not resumed now", child_id, exc_info=True)

    def child_ended(self, child_id: str, tenant_id: str) -> bool:
        """Settle the child's carved budget with what it spent and resume its parent (if
        it still waits for it). True if the parent was resumed here."""
        child = self.store.get_run(child_id, tenant_id)
        parent_id = child.get("parent_run_id")
        if parent_id is None or child["status"] not in _TERMINAL:
            return False
        step = int(child["parent_step"])
        # what the child spent, and what it still holds: a grandchild's carved budget (a
        # child cancelled while it waited for its own child) counts in full, so the parent
        # is never credited budget a descendant may still spend (it settles into the
        # child's ended scope, which nothing reads again)
        spent = {
            d: v["used"] + v["reserved"]
            for d, v in self.ledger.balance(self.keys.budget_run(child_id)).items()
        }
        # the child's own spend records too: a last settle Redis missed (the reaper settles
        # it later, in the child's scope only) is never left out of the parent's
        recorded = self.store.spend(run_id=child_id, tenant_id=tenant_id)
        spent = {d: max(v, int(recorded.get(d, 0))) for d, v in spent.items()}
        # the child itself is the delegation its parent's hold counted
        spent["delegations"] = 1
        settled = self.ledger.settle_child(str(parent_id), step, spent)
        return self._resume(child, str(parent_id), spent if settled else None)

    def _resume(self, child: dict[str, Any], parent_id: str, spent: dict[str, int] | None) -> bool:
        tenant = str(child["tenant_id"])
        parent = self.store.get_run(parent_id, tenant)
        waiting_for = stop_reasons.make("delegated", str(child["run_id"]))
        if parent["status"] != "waiting" or parent["stop_reason"] != waiting_for:
            return False  # cancelled, or resumed already
        trace = TraceBuffer(parent_id, tenant, parent["trace_id"], int(parent["next_step"]))
        trace.add(
            "child_ended",
            child_run_id=child["run_id"],
            status=child["status"],
            stop_reason=child["stop_reason"],
            spent=spent,
        )
        row = self.store.resume_waiting(
            parent_id,
            tenant_id=tenant,
            version=int(parent["version"]),
            stop_reason=waiting_for,
            values={
                "pending_proposal": {
                    "type": CHILD_RESULT,
                    "child_run_id": child["run_id"],
                    "route": child["route"],
                    "status": child["status"],
                    "stop_reason": child["stop_reason"],
                    "output": child["output"],
                    "spent": spent,
                },
                "workflow_step": workflow_step(WorkflowStep.STARTED),
            },
            events=trace.drain(),
        )
        if row is None:
            return False
        try:
            self.dispatch.schedule(Ops().enqueue(item_of(row, int(row["next_step"]))).dispatch(1))
        except redis.RedisError:
            log.warning("run %s resumed; its next step is queued by the reconciler", parent_id)
        return True

    def reconcile(self, limit: int = 100) -> list[str]:
        """Follow up children that ended while their parent still waits: the parents
        resumed."""
        resumed = []
        for child in self.store.ended_children_of_waiting(limit):
            if self.child_ended(str(child["run_id"]), str(child["tenant_id"])):
                resumed.append(str(child["parent_run_id"]))
        return resumed

    def live_children(self, run_id: str, tenant_id: str) -> list[str]:
        """The children of ``run_id`` that have not ended (a cancel of it cancels them)."""
        return [
            str(c["run_id"])
            for c in self.store.children(run_id, tenant_id)
            if c["status"] not in _TERMINAL
        ]


# --- recovery: the ledger rebuilt from SQL ----------------------------------------------
def rebuilt_holds(
    children: list[dict[str, Any]], keys: Keys, used: dict[str, dict[str, int]]
) -> dict[str, dict[str, Any]]:
    """The delegation holds of a ledger rebuilt from SQL (``runtime.recovery``), given
    the children of the parents that have not ended (``delegations_of_open_parents``,
    deepest first) and the settled spend per scope SQL gave (``used``, changed here). A
    child that has not ended holds what was carved for it (and one delegation) in its
    parent's scope, as before Redis lost it: never "unlimited" (fail closed). An ended
    child's spend - its own and, deepest first, its ended children's - is its parent's
    settled spend, with one delegation. Returns hold key -> {scopes, amounts}."""
    holds: dict[str, dict[str, Any]] = {}
    for child in children:
        parent_scope = keys.budget_run(str(child["parent_run_id"]))
        if child["status"] in _TERMINAL:
            spent = used.get(keys.budget_run(str(child["run_id"])), {})
            into = used.setdefault(parent_scope, {})
            for dim, value in spent.items():
                if dim != "delegations":
                    into[dim] = into.get(dim, 0) + int(value)
            into["delegations"] = into.get("delegations", 0) + 1
            continue
        carved = child["delegated_budget"] or {}
        amounts = {d: int(v) for d, v in carved.items() if d in DIMENSIONS}
        amounts["delegations"] = 1
        hold = keys.budget_delegation_hold(str(child["parent_run_id"]), int(child["parent_step"]))
        holds[hold] = {"scopes": [parent_scope], "amounts": amounts}
    return holds


def write_holds(pipe: Any, keys: Keys, stale: list[Any], holds: dict[str, dict[str, Any]]) -> None:
    """Queue the rebuilt delegation holds on ``pipe`` (a MULTI), replacing ``stale`` ones."""
    index = keys.budget_delegations_index()
    for key in stale:
        pipe.delete(key)
    pipe.delete(index)
    for key, hold in holds.items():
        fields: dict[str, Any] = {"scopes": "\n".join(hold["scopes"]), "expires": 0, "x": 0}
        fields.update({f"a:{d}": v for d, v in hold["amounts"].items()})
        pipe.hset(key, mapping=fields)
        pipe.zadd(index, {key: 0})
