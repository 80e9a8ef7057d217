"""Granting a budget extension: a run that waits on its own budget
(``needs_approval:budget_extension``) gets its per-run limits raised and its step queued
again.

Checked before anything is written: the amount (``extension.checked_amount``), the run
scoped by tenant (another tenant's run is ``RunNotFound``), and that it waits for an
extension (``NotWaitingForBudget``). Then one conditional SQL update (the run as it was
read, still waiting for an extension) records the grant and moves it to running, with its
trace event; only after that commits is its next step queued in Redis. Two grants racing
for one wait: one wins, the other changes nothing and is refused.

The grant lives in SQL (``runs.budget_extension``) and the ledger applies it at every
reservation of the run (``BudgetLedger.run_scope``): nothing in Redis holds a raised
limit, so a Redis loss cannot lose or invent one, and no other scope is touched.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from runtime import stop_reasons
from runtime.budgets import extension
from runtime.contract import RunStatus
from runtime.errors import NotWaitingForBudget
from runtime.scheduling.scheduler import Ops, item_of
from runtime.step.collaborators import Scheduling
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.budgets")


class BudgetExtensions:
    def __init__(self, *, store: RunStore, dispatch: Scheduling) -> None:
        self.store = store
        self.dispatch = dispatch

    def extend(
        self, run_id: str, amount: Any, actor: str, tenant: str | None = None
    ) -> dict[str, Any]:
        """Raise the run's per-run limits by ``amount`` (ledger units per dimension) and
        queue the step its budget refused again; the updated run row."""
        checked = extension.checked_amount(amount)
        run = self.store.run_for_write(run_id, tenant)  # RunNotFound before anything else
        if (
            run["status"] != RunStatus.WAITING.value
            or run["stop_reason"] != stop_reasons.BUDGET_EXTENSION
        ):
            raise NotWaitingForBudget(run_id, str(run["status"]), run["stop_reason"])
        record = extension.granting(run["budget_extension"], checked)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], None)
        trace.add(
            "budget_extended",
            actor=actor,
            amount=checked,
            requested=extension.requested_of(run["budget_extension"]),
            granted=record["granted"],
        )
        row = self.store.resume_waiting(
            run_id,
            tenant_id=run["tenant_id"],
            version=int(run["version"]),
            stop_reason=stop_reasons.BUDGET_EXTENSION,
            values={
                "budget_extension": record,
                "approval_id": None,
                "workflow_step": workflow_step(WorkflowStep.QUEUED),
            },
            events=trace.drain(),
        )
        if row is None:  # it moved meanwhile (another grant, a cancel): nothing written
            now = self.store.get_run(run_id, run["tenant_id"])
            raise NotWaitingForBudget(run_id, str(now["status"]), now["stop_reason"])
        try:
            self.dispatch.schedule(Ops().enqueue(item_of(row, int(row["next_step"]))).dispatch(1))
        except redis.RedisError:
            # SQL is the truth: the run is running with its step unqueued; the reconciler
            # queues the step of a running run that stopped moving
            log.warning("run %s extended; its step could not be queued yet", run_id, exc_info=True)
        return row
