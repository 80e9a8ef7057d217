"""What a stored run row shows, field by field: the one rule every view of a run follows.

Reads must never break on one bad row: a status or priority written by another version or
by hand, a corrupt JSON cell (``store.cells.Unreadable``), a field of the wrong type. Each
field holds a value of the type the runtime writes, or else its marked fallback (status and
priority ``unknown``, the most restrictive autonomy level and risk class, ``?`` for a
string, the epoch for a timestamp) and the stored value is kept as a problem.

``read_row`` applies that rule without pydantic. ``runtime.run_views.run_view`` builds the
``RunView`` (the contract, for the API and ``--json``) from its result; ``plain_run`` builds
a ``PlainRun``, the same fields as plain attributes, for the CLI's views for people, which
must not pay for importing pydantic. Both show the same values for the same row (tested).
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runtime.statuses import (
    UNKNOWN_VALUE,
    AutonomyLevel,
    ExecutionMode,
    PriorityClass,
    RiskClass,
    RunStatus,
)
from runtime.store.cells import Unreadable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the version set shown for one that cannot be read
UNKNOWN_VERSIONS = {
    "model": "?",
    "prompt": "?",
    "policy": "?",
    "tool_schema": "?",
    "retriever": None,
    "harness": "?",
}


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _time(value: Any) -> bool:
    return isinstance(value, datetime)


def _optional_time(value: Any) -> bool:
    return value is None or isinstance(value, datetime)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _anything(value: Any) -> bool:
    return True


def _optional_object(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(isinstance(k, str) for k in value))


def _versions(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    required = ("model", "prompt", "policy", "tool_schema", "harness")
    return all(isinstance(value.get(k), str) for k in required) and _optional_text(
        value.get("retriever")
    )


def _one_of(values: frozenset[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in values


def _literal(alias: Any) -> frozenset[str]:
    return frozenset(typing.get_args(alias))


@dataclass(frozen=True)
class FieldRule:
    """A view field: the column it comes from, what it may hold, what is shown instead."""

    column: str
    valid: Callable[[Any], bool]
    #: shown in place of a value that is not valid (a copy of it: it may be a list)
    fallback: Any


_STATUSES = frozenset(s.value for s in RunStatus)

#: view field -> its rule, in ``RunView``'s field order (a test holds them together)
FIELDS: dict[str, FieldRule] = {
    "run_id": FieldRule("run_id", _text, "?"),
    "trace_id": FieldRule("trace_id", _text, "?"),
    "request_id": FieldRule("request_id", _text, "?"),
    "actor_id": FieldRule("actor_id", _text, "?"),
    "tenant_id": FieldRule("tenant_id", _text, "?"),
    "route": FieldRule("route", _text, "?"),
    "goal": FieldRule("goal", _text, ""),
    "autonomy_level": FieldRule("autonomy_level", _one_of(_literal(AutonomyLevel)), "advisory"),
    "risk_class": FieldRule("risk_class", _one_of(_literal(RiskClass)), "high"),
    "execution_mode": FieldRule("execution_mode", _one_of(_literal(ExecutionMode)), "async_job"),
    "status": FieldRule("status", _one_of(_STATUSES), RunStatus.UNKNOWN.value),
    "version_set": FieldRule("version_set", _versions, UNKNOWN_VERSIONS),
    "budget_policy_version": FieldRule("budget_policy_version", _text, "?"),
    "policy_version": FieldRule("policy_version", _text, "?"),
    "workflow_step": FieldRule("workflow_step", _optional_text, None),
    "allowed_tools": FieldRule("allowed_tools", _names, []),
    "idempotency_key": FieldRule("idempotency_key", _optional_text, None),
    "approval_id": FieldRule("approval_id", _optional_text, None),
    "checkpoint_ref": FieldRule("checkpoint_ref", _optional_text, None),
    "stop_reason": FieldRule("stop_reason", _optional_text, None),
    "created_at": FieldRule("created_at", _time, EPOCH),
    "updated_at": FieldRule("updated_at", _time, EPOCH),
    "started_at": FieldRule("started_at", _optional_time, None),
    "finished_at": FieldRule("finished_at", _optional_time, None),
    "priority": FieldRule(
        "priority", _one_of(_literal(PriorityClass) | {UNKNOWN_VALUE}), UNKNOWN_VALUE
    ),
    "steps": FieldRule("next_step", _count, 0),
    "output": FieldRule("output", _anything, None),
    "input": FieldRule("input", _optional_object, None),
}

#: the columns a view for people reads (it never shows the input)
VIEW_COLUMNS = tuple(rule.column for name, rule in FIELDS.items() if name != "input")


@dataclass
class RowRead:
    """A row read by the rule: every value valid (or its fallback), and the problems."""

    values: dict[str, Any]
    #: field -> what is stored in its place (an ``Unreadable`` cell or the raw value); the
    #: status ``unknown`` stored as such is a problem too (it is a marker, not a status)
    problems: dict[str, Any]


def read_row(row: dict[str, Any]) -> RowRead:
    """The view values of a stored run row; never raises for what the row holds (a missing
    column reads as NULL)."""
    values: dict[str, Any] = {}
    problems: dict[str, Any] = {}
    if row.get("status") == UNKNOWN_VALUE:
        problems["status"] = UNKNOWN_VALUE
    for name, rule in FIELDS.items():
        value = row.get(rule.column)
        if isinstance(value, Unreadable) or not rule.valid(value):
            problems[name] = value
            value = copy.deepcopy(rule.fallback)
        values[name] = value
    return RowRead(values, problems)


# --- views for people, without pydantic -------------------------------------------------------


@dataclass(frozen=True)
class Versions:
    """A run's version set (``contract.VersionSet``'s fields)."""

    model: str
    prompt: str
    policy: str
    tool_schema: str
    harness: str
    retriever: str | None = None


@dataclass(frozen=True)
class PlainRun:
    """A run as a person sees it: ``RunView``'s fields but the input, plain attributes."""

    run_id: str
    trace_id: str
    request_id: str
    actor_id: str
    tenant_id: str
    route: str
    goal: str
    autonomy_level: str
    risk_class: str
    execution_mode: str
    status: RunStatus
    version_set: Versions
    budget_policy_version: str
    policy_version: str
    workflow_step: str | None
    allowed_tools: list[str]
    idempotency_key: str | None
    approval_id: str | None
    checkpoint_ref: str | None
    stop_reason: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: str
    steps: int
    output: Any
    #: the fields shown as their fallback (what is stored there could not be read); the
    #: input is not one of them, read or not
    unreadable: tuple[str, ...] = ()


def plain_run(row: dict[str, Any]) -> PlainRun:
    """The view for people of a stored run row (its input is never shown)."""
    read = read_row(row)
    values = read.values
    values.pop("input")
    versions = values.pop("version_set")
    return PlainRun(
        **{**values, "status": RunStatus(values["status"])},
        version_set=Versions(
            **{k: versions.get(k) for k in ("model", "prompt", "policy", "tool_schema")},
            harness=versions["harness"],
            retriever=versions.get("retriever"),
        ),
        unreadable=tuple(name for name in read.problems if name != "input"),
    )


# --- trace events -------------------------------------------------------------------------------

#: longest raw cell kept in an event whose data cannot be read
MAX_RAW_CHARS = 200


@dataclass(frozen=True)
class TraceLine:
    """One trace event as a person sees it (``contract.TraceEvent``'s fields)."""

    run_id: str
    trace_id: str
    step: int | None
    seq: int
    at: datetime
    kind: str
    data: dict[str, Any]


def trace_fields(row: dict[str, Any], seq: int) -> dict[str, Any]:
    """A ``TraceEvent``'s fields from a stored event row, never raising for what it holds:
    a value of the wrong type shows as ``?``, no step, the epoch, or its data as
    ``{"unreadable": <raw, cut short>}``."""
    data = row.get("data")
    if isinstance(data, Unreadable):
        data = {"unreadable": data.raw[:MAX_RAW_CHARS]}
    elif not data:
        data = {}
    elif not _optional_object(data):
        data = {"unreadable": repr(data)[:MAX_RAW_CHARS]}
    step = row.get("step_no")
    at = row.get("at")
    return {
        "run_id": _or(row.get("run_id"), "?"),
        "trace_id": _or(row.get("trace_id"), "?"),
        "step": step if _count(step) else None,
        "seq": seq,
        "at": at if isinstance(at, datetime) else EPOCH,
        "kind": _or(row.get("kind"), "?"),
        "data": data,
    }


def _or(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) else fallback


def trace_lines(rows: list[dict[str, Any]]) -> list[TraceLine]:
    return [TraceLine(**trace_fields(row, seq)) for seq, row in enumerate(rows)]
