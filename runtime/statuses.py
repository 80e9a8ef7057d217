"""Run statuses and the other closed value sets of a run: plain Python, no pydantic.

``runtime.contract`` re-exports these (``from runtime.contract import RunStatus`` works
everywhere); they live here so that what only needs a status or a value set - the
stop-reason taxonomy, the CLI's options and its views for people (``runtime.run_rows``) -
does not load the pydantic contract.
"""

from __future__ import annotations

import enum
from typing import Literal

AutonomyLevel = Literal[
    "advisory", "drafts_for_review", "executes_after_approval", "bounded_autonomous"
]
RiskClass = Literal["low", "medium", "high"]
ExecutionMode = Literal["sync", "async_job", "durable_workflow", "event_triggered"]
SideEffectClass = Literal["read", "write", "external", "irreversible"]
PriorityClass = Literal["critical", "high", "normal", "low"]


class RunStatus(enum.StrEnum):
    #: admitted and stored; its first step is queued
    QUEUED = "queued"
    #: a step has started
    RUNNING = "running"
    #: paused: needs approval, escalated, or waiting on an operator
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: admission or the runtime refused the work
    REFUSED = "refused"
    CANCELLED = "cancelled"
    #: an operator asked to cancel it: no new step starts and (mode ``immediate``) no side
    #: effect is claimed any more; the step in flight, if any, ends it ``cancelled``
    CANCEL_REQUESTED = "cancel_requested"
    #: read-only marker, never stored by the runtime: the stored status is not one this
    #: version knows (written by hand or by another version); the view's
    #: ``unreadable_fields`` holds the raw value
    UNKNOWN = "unknown"


#: the statuses the runtime writes (a run listed with status ``unknown`` holds none of them)
KNOWN_STATUSES = tuple(s.value for s in RunStatus if s is not RunStatus.UNKNOWN)

TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.REFUSED, RunStatus.CANCELLED}
)

#: statuses in which a run still has a step to run (a cancel request's step ends it)
LIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED})


class CancelMode(enum.StrEnum):
    """How a cancel treats the step in flight (``runtime.cancellation``)."""

    #: the step in flight is interrupted at its next boundary; no side effect is claimed
    #: or committed after the cancel
    IMMEDIATE = "immediate"
    #: the step in flight finishes (its side effect included); nothing new starts
    DRAIN = "drain"


def cancel_subject(mode: CancelMode, compensate: bool) -> str:
    """The ``cancelling:<subject>`` a cancel request stores in the run's workflow step:
    ``immediate``, ``drain``, ``immediate+compensate``, ``drain+compensate``."""
    return f"{mode.value}+compensate" if compensate else mode.value


def read_cancel_request(workflow_step: str | None) -> tuple[CancelMode, bool]:
    """(mode, compensate) of a run in ``cancel_requested`` from its stored workflow step.
    Fails closed: anything this version cannot read is an immediate cancel."""
    state, _, subject = (workflow_step or "").partition(":")
    mode_text, _, extra = subject.partition("+")
    mode = CancelMode.DRAIN if state == "cancelling" and mode_text == "drain" else None
    return mode or CancelMode.IMMEDIATE, extra == "compensate"


def side_effects_fenced(status: str, workflow_step: str | None) -> bool:
    """Whether a run in this state may no longer claim a side effect: it is cancelled, or
    an immediate cancel was requested (a drain lets the step in flight finish)."""
    if status == RunStatus.CANCELLED.value:
        return True
    if status != RunStatus.CANCEL_REQUESTED.value:
        return False
    return read_cancel_request(workflow_step)[0] is CancelMode.IMMEDIATE


#: a stored value this version cannot read is shown as this (and kept raw, see RunView)
UNKNOWN_VALUE = "unknown"
