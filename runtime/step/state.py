"""The values a step passes between its stages: its state, its decision, its result."""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from runtime import stop_reasons
from runtime.budgets.step import StepBudget
from runtime.config import RouteConfig
from runtime.contract import RunStatus, Usage
from runtime.controls import ControlsRead
from runtime.scheduling.scheduler import Item
from runtime.step_record import StepKind
from runtime.store.approvals import ApprovalSpend
from runtime.store.db import utcnow
from runtime.tracing import TraceBuffer

#: seconds a step's budget hold, a tool lock or a bulkhead place outlives what it covers
LEASE_MARGIN_S = 15.0


class Delivery(enum.StrEnum):
    """What a delivered step message came to when the loop did not decide the step (a
    ``StepResult.outcome`` besides a step outcome; never stored)."""

    #: a live copy of the step holds the run lease
    DUPLICATE_DROPPED = "duplicate_dropped"
    #: the step was done; its next step was queued again (idempotent)
    DUPLICATE_ENSURED_NEXT = "duplicate_ensured_next"
    DUPLICATE_SKIPPED = "duplicate_skipped"
    #: Redis's state is unknown: recovery queues the step again
    STATE_UNKNOWN = "state_unknown"
    #: the deployment enforces another config: the caller reloads and runs it again
    CONFIG_CHANGED = "config_changed"
    #: another copy of the step checkpointed first
    STALE_WRITE = "stale_write"
    ROUTE_REMOVED = "route_removed"
    UNKNOWN_RELEASE = "unknown_release"
    #: ``:<class>``: retries exhausted, the run waits in the dead-letter queue
    DEAD_LETTERED = "dead_lettered"


@dataclass
class StepResult:
    """What happened, for the task wrapper's log line and for tests: a step outcome
    (``runtime.step_record.StepOutcome``) or a ``Delivery``."""

    outcome: str
    next_step: int | None = None
    #: the step the checkpoint dispatched and did not publish: the task runs it next
    kept: Item | None = None
    #: the run's status after this step (None: the step did not decide it)
    run_status: str | None = None
    #: the run's stop reason when this step ended it
    stop_reason: str | None = None
    #: the next step runs no sooner than this (a retry or a deferral the scheduler holds)
    countdown_s: float | None = None

    @classmethod
    def of(cls, move: Move, step_no: int, kept: Item | None) -> StepResult:
        """The result of a step whose ``move`` took effect."""
        if move.continues:
            return cls(
                str(move.outcome),
                next_step=step_no + 1,
                kept=kept,
                run_status=move.status.value,
                countdown_s=move.countdown_s,
            )
        return cls(
            str(move.outcome), kept=kept, run_status=move.status.value, stop_reason=move.stop_reason
        )

    @classmethod
    def dead_lettered(cls, dl_class: str, kept: Item | None) -> StepResult:
        """The result of a step whose run went to the dead-letter queue."""
        return cls(
            Delivery.DEAD_LETTERED.value + f":{dl_class}",
            kept=kept,
            run_status=RunStatus.FAILED.value,
            stop_reason=stop_reasons.make(Delivery.DEAD_LETTERED.value, dl_class),
        )


@dataclass
class Step:
    """Mutable state of the step being executed."""

    run: dict[str, Any]
    route: RouteConfig
    step_no: int
    attempt: int
    trace: TraceBuffer
    started: float = field(default_factory=time.monotonic)
    started_at: Any = field(default_factory=utcnow)
    #: how long each timed stage took (ms): model_call, tool_call, checkpoint (Prometheus'
    #: step latency by stage, ``runtime.scheduling.histograms``)
    stage_ms: dict[str, int] = field(default_factory=dict)
    #: the step's hold in the ledger: what it holds, what the step is charged (set by
    #: ``Budgeting.open``; settling is bounded by it: never overspent, in every dimension)
    budget: StepBudget = field(init=False)
    #: tokens taken from the model's global token rate limit, given back after the call
    rate_tokens: int = 0
    used_proposer: bool = False
    usage: Usage = field(default_factory=Usage)
    model_version: str | None = None
    proposal: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    effect_update: dict[str, Any] | None = None
    #: switches read with the lease (None: read them in the guards)
    controls: ControlsRead | None = None
    #: tools switched off by a live kill switch (read once per step with the other controls)
    disabled_tools: frozenset[str] = frozenset()
    #: the model an operator pinned for the route (``ops pin-model``): asked instead of the
    #: route's proposer and its fallbacks
    pinned_model: str | None = None
    #: tools whose calls an operator made need approval (every tool: the route's lever)
    forced_approval_tools: frozenset[str] = frozenset()
    forced_approval_route: bool = False
    #: the model asked this step: the route's proposer, or a fallback while its breaker is open
    model_name: str = ""
    #: idempotency key of the call being retried (kept across attempts of one call)
    call_key: str | None = None
    #: the secret arguments of a call kept for a later step: stored apart from the run row
    pending_secrets: dict[str, Any] | None = None
    #: the text of secret argument values, scrubbed from errors
    secrets: list[str] = field(default_factory=list)
    #: whether the task may run the step its checkpoint dispatches, itself (a chain)
    keep: Callable[[Item, int], bool] | None = None
    #: the stored cancel request (``cancelling:<mode>[+compensate]``) the checkpoint found
    cancel_request: str | None = None
    #: the approval the kept call was asked for: {"id", "step"} (``runtime.step.approval``)
    approval_ref: dict[str, Any] | None = None
    #: the approval this step spends with its call's claim (it covers exactly this call)
    approval_spend: ApprovalSpend | None = None
    #: a new pending approval, committed with the checkpoint that makes the run wait
    approval_request: dict[str, Any] | None = None
    #: the policy set of the run's release (None: the top-level ``policy``)
    policy_set: str | None = None
    #: run row changes this step made before its move (a release taken at this step)
    run_updates: dict[str, Any] = field(default_factory=dict)
    #: evidence references of the search this step showed its model (checkpointed)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    #: rows a stage adds that commit with the checkpoint or not at all (an accepted
    #: memory write): a redelivered step that lost its checkpoint never wrote them
    rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    #: the proposal departs from the run's plan (``runtime.step.plan_follow``): every
    #: policy decision of this step is told (``PolicyContext.plan_deviation``)
    plan_deviation: bool = False
    #: child runs this step started (``delegate``) and their first trace events, committed
    #: with the checkpoint that makes the run wait for them (and only with that one)
    new_runs: list[dict[str, Any]] = field(default_factory=list)
    new_run_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def tenant_id(self) -> str:
        return str(self.run["tenant_id"])


@dataclass
class Move:
    """The decision at the end of a step: a value the stages return and only the
    checkpoint applies."""

    status: RunStatus
    kind: StepKind
    outcome: str
    observation: Any = None
    stop_reason: str | None = None
    output: Any = None
    run_updates: dict[str, Any] = field(default_factory=dict)
    #: run the next step no sooner than this (a wait that holds no slot)
    countdown_s: float | None = None
    #: retries exhausted: after the checkpoint the run is dead-lettered at the next step,
    #: which holds the call to try again: (class, error type, error)
    dead_letter: tuple[str, str, str] | None = None

    @property
    def continues(self) -> bool:
        return self.status == RunStatus.RUNNING


def args_digest(args: Any) -> str:
    raw = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()
