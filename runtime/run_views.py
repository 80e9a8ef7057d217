"""A ``RunView`` from a stored run row, whatever the row holds.

Reads must never break on one bad row: a status or priority written by another version or
by hand, a corrupt JSON cell (``store.runs.Unreadable``), a field of the wrong type. Each
field that does not validate is shown as a marked value (status and priority ``unknown``,
the most restrictive autonomy level and risk class, ``?`` for a string, the epoch for a
timestamp) and its raw value is kept, bounded, in ``unreadable_fields`` - except the
input's, which may hold secrets: for it only the kind of problem is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from runtime.admission import bounded, shown
from runtime.contract import UNKNOWN_VALUE, RunStatus, RunView, VersionSet
from runtime.store.runs import Unreadable

#: longest raw value kept in ``unreadable_fields``
MAX_RAW_CHARS = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: view field -> row column
_COLUMNS = {
    name: ("next_step" if name == "steps" else name)
    for name in RunView.model_fields
    if name not in ("estimated_wait_s", "retry_after_s", "unreadable_fields")
}

_FALLBACK: dict[str, Any] = {
    "run_id": "?",
    "trace_id": "?",
    "request_id": "?",
    "actor_id": "?",
    "tenant_id": "?",
    "route": "?",
    "goal": "",
    "autonomy_level": "advisory",
    "risk_class": "high",
    "execution_mode": "async_job",
    "status": RunStatus.UNKNOWN,
    "version_set": VersionSet(model="?", prompt="?", policy="?", tool_schema="?", harness="?"),
    "budget_policy_version": "?",
    "policy_version": "?",
    "allowed_tools": [],
    "created_at": EPOCH,
    "updated_at": EPOCH,
    "priority": UNKNOWN_VALUE,
    "steps": 0,
}


def _fallback(field: str) -> Any:
    if field in _FALLBACK:
        return _FALLBACK[field]
    return RunView.model_fields[field].get_default(call_default_factory=True)


#: fields whose raw value is never echoed (they may hold secrets)
_WITHHELD = frozenset({"input"})


def _raw(field: str, value: Any) -> str:
    if field in _WITHHELD:
        if isinstance(value, Unreadable):
            return f"not JSON ({len(value.raw)} characters, not shown)"
        return f"not a JSON object ({type(value).__name__}, not shown)"
    if isinstance(value, Unreadable):
        return bounded(value.raw, MAX_RAW_CHARS)
    if isinstance(value, str):
        return bounded(value, MAX_RAW_CHARS)
    return shown(value)


def run_view(row: dict[str, Any], shown_input: Callable[[Any], Any] | None = None) -> RunView:
    """The view of a stored run; never raises for what the row holds. ``shown_input``
    turns the stored input into what a view may show (e.g. with secrets redacted); if it
    fails, the input is not shown at all."""
    values = {field: row.get(column) for field, column in _COLUMNS.items()}
    unreadable: dict[str, str] = {}
    if values["status"] == UNKNOWN_VALUE:  # the marker itself, stored: not a status
        unreadable["status"] = UNKNOWN_VALUE
    for field, value in values.items():
        if isinstance(value, Unreadable):
            unreadable[field] = _raw(field, value)
            values[field] = _fallback(field)
    if shown_input is not None and isinstance(values["input"], dict):
        try:
            values["input"] = shown_input(values["input"])
        except Exception as exc:  # fail closed: an input that cannot be redacted is not shown
            unreadable["input"] = f"could not be shown ({type(exc).__name__})"
            values["input"] = None
    for _ in range(2):
        try:
            return RunView.model_validate({**values, "unreadable_fields": unreadable or None})
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(values)
            if not bad:
                break
            for field in bad:
                unreadable[field] = _raw(field, values[field])
                values[field] = _fallback(field)
    # unreachable with the fallbacks above; still, a read never fails on a row
    unreadable["row"] = "unreadable"
    every = {field: _fallback(field) for field in _COLUMNS}
    every["run_id"] = bounded(str(row.get("run_id")), MAX_RAW_CHARS)
    return RunView.model_validate({**every, "unreadable_fields": unreadable})
