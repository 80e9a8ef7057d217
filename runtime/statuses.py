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
    #: read-only marker, never stored by the runtime: the stored status is not one this
    #: version knows (written by hand or by another version); the view's
    #: ``unreadable_fields`` holds the raw value
    UNKNOWN = "unknown"


#: the statuses the runtime writes (a run listed with status ``unknown`` holds none of them)
KNOWN_STATUSES = tuple(s.value for s in RunStatus if s is not RunStatus.UNKNOWN)

TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.REFUSED, RunStatus.CANCELLED}
)

#: a stored value this version cannot read is shown as this (and kept raw, see RunView)
UNKNOWN_VALUE = "unknown"
