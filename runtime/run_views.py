"""A ``RunView`` from a stored run row, whatever the row holds.

Reads must never break on one bad row: a status or priority written by another version or
by hand, a corrupt JSON cell (``store.cells.Unreadable``), a field of the wrong type. Which
value each field shows is ``runtime.run_rows.read_row``'s rule (the one the CLI's views for
people follow too): a value of the type the runtime writes, else a marked fallback (status
and priority ``unknown``, the most restrictive autonomy level and risk class, ``?`` for a
string, the epoch for a timestamp). The stored value is kept, bounded, in
``unreadable_fields`` - except the input's, which may hold secrets: for it only the kind of
problem is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from runtime.admission import bounded, shown
from runtime.contract import RunView
from runtime.run_rows import EPOCH, FIELDS, read_row
from runtime.store.cells import Unreadable

__all__ = ["EPOCH", "MAX_RAW_CHARS", "run_view"]

#: longest raw value kept in ``unreadable_fields``
MAX_RAW_CHARS = 200

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


def _fallback(field: str) -> Any:
    return FIELDS[field].fallback


def run_view(row: dict[str, Any], shown_input: Callable[[Any], Any] | None = None) -> RunView:
    """The view of a stored run; never raises for what the row holds. ``shown_input``
    turns the stored input into what a view may show (e.g. with secrets redacted); if it
    fails, the input is not shown at all."""
    read = read_row(row)
    values = read.values
    unreadable = {field: _raw(field, value) for field, value in read.problems.items()}
    if shown_input is not None and isinstance(values["input"], dict):
        try:
            values["input"] = shown_input(values["input"])
        except Exception as exc:  # fail closed: an input that cannot be redacted is not shown
            unreadable["input"] = f"could not be shown ({type(exc).__name__})"
            values["input"] = None
    # every value is of its field's type now; pydantic remains the last guard (e.g. for
    # what ``shown_input`` made of the input)
    for _ in range(2):
        try:
            return RunView.model_validate({**values, "unreadable_fields": unreadable or None})
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(values)
            if not bad:
                break
            for field in sorted(bad):
                unreadable[field] = _raw(field, values[field])
                values[field] = _fallback(field)
    # unreachable with the fallbacks above; still, a read never fails on a row
    unreadable["row"] = "unreadable"
    every = {field: _fallback(field) for field in FIELDS}
    every["run_id"] = bounded(str(row.get("run_id")), MAX_RAW_CHARS)
    return RunView.model_validate({**every, "unreadable_fields": unreadable})
