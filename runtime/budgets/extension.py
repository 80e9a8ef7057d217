"""Budget extensions: a run's per-run limits, raised by approved amounts.

A route with ``on_budget_exhausted: ask`` does not stop a run whose own budget refused a
step: the run waits (``needs_approval:budget_extension``) and asks for a stated amount -
the route's ``budget_extension`` per dimension, or what the refused step needed beyond
what the run had left (its shortfall). An approved extension is added to the run's
per-run limits for the rest of the run. Only the run's own scope is raised: a tenant's
day and a route's day are limits no approval of one run can lift.

The run row's ``budget_extension`` column (JSON) keeps both sides, in ledger units::

    {"granted": {"tool_calls": 2},               # added to the per-run limits
     "requested": {"tool_calls": 1},             # while the run waits for an extension
     "dimension": "tool_calls", "step": 3}       # which limit refused, at which step

This module is pure: it shapes and checks those values; the ledger applies them
(``BudgetLedger.run_scope``), the step asks (``runtime.step.budget``), and the façade's
``extend_budget`` grants (``runtime.budget_extensions``).
"""

from __future__ import annotations

from typing import Any

from runtime.config import DIMENSIONS, MAX_COUNT, MAX_TOKENS, MAX_USD, MAX_WALL_CLOCK_S
from runtime.errors import InvalidRequest

#: the rule a budget wait names (``needs_approval:budget_extension``)
RULE = "budget_extension"

#: the most one dimension's extensions may add up to, in ledger units: the largest limit
#: the deployment file may state, so a raised limit still fits a 64-bit counter
MAX_EXTENSION: dict[str, int] = {
    "tokens": MAX_TOKENS,
    "model_calls": MAX_COUNT,
    "tool_calls": MAX_COUNT,
    "retries": MAX_COUNT,
    "wall_clock_ms": int(MAX_WALL_CLOCK_S * 1000),
    "cost_micro_usd": int(MAX_USD * 1_000_000),
    "delegations": MAX_COUNT,
}
assert set(MAX_EXTENSION) == set(DIMENSIONS)


def checked_amount(amount: Any) -> dict[str, int]:
    """An extension's amount as given by a caller: a non-empty object of ledger
    dimensions to whole numbers above 0, each at most ``MAX_EXTENSION``; else
    ``InvalidRequest`` naming what is wrong."""
    if not isinstance(amount, dict) or not amount:
        raise InvalidRequest(
            ("amount",),
            f"amount must be a non-empty object of dimension -> units ({', '.join(DIMENSIONS)})",
        )
    checked: dict[str, int] = {}
    for dim, value in amount.items():
        if dim not in MAX_EXTENSION:
            raise InvalidRequest(
                ("amount",),
                f"amount: unknown dimension {str(dim)[:100]!r} (one of: {', '.join(DIMENSIONS)})",
            )
        top = MAX_EXTENSION[dim]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise InvalidRequest(
                ("amount",), f"amount.{dim} must be a whole number of units, 1..{top}"
            )
        checked[dim] = value
    return checked


def granted_of(record: Any) -> dict[str, int]:
    """What a run's ``budget_extension`` column grants, per dimension. Anything it holds
    that this version cannot read (edited by hand) grants nothing: limits stay as the
    budget policy says (fail closed)."""
    if not isinstance(record, dict) or not isinstance(record.get("granted"), dict):
        return {}
    return {
        dim: value
        for dim, value in record["granted"].items()
        if dim in MAX_EXTENSION
        and isinstance(value, int)
        and not isinstance(value, bool)
        and 0 < value <= MAX_EXTENSION[dim]
    }


def raised(limits: dict[str, int], granted: dict[str, int]) -> dict[str, int]:
    """Per-run ``limits`` (ledger units, -1 = unlimited) raised by ``granted``."""
    return {
        dim: limit if limit < 0 else limit + granted.get(dim, 0) for dim, limit in limits.items()
    }


def requested(stated: dict[str, int], dimension: str, shortfall: int | None) -> dict[str, int]:
    """What a run asks for when ``dimension`` of its own budget refused a step: every
    dimension the route states (``stated``: its ``budget_extension`` in ledger units,
    -1 = not stated), and the refused one's shortfall if the route does not state it."""
    asked = {dim: max(value, 1) for dim, value in stated.items() if value >= 0}
    if dimension not in asked:
        asked[dimension] = max(shortfall or 1, 1)
    return {dim: min(value, MAX_EXTENSION[dim]) for dim, value in asked.items()}


def waiting(record: Any, asked: dict[str, int], dimension: str, step: int) -> dict[str, Any]:
    """The column of a run that waits for ``asked`` (what it was granted is kept)."""
    return {
        "granted": granted_of(record),
        "requested": asked,
        "dimension": dimension,
        "step": step,
    }


def requested_of(record: Any) -> dict[str, int] | None:
    """What a waiting run asks for (None if it asks for nothing readable)."""
    if not isinstance(record, dict) or not isinstance(record.get("requested"), dict):
        return None
    return {k: v for k, v in record["requested"].items() if isinstance(v, int)} or None


def granting(record: Any, amount: dict[str, int]) -> dict[str, Any]:
    """The column once ``amount`` (checked) is granted: added to what the run had been
    granted, capped at ``MAX_EXTENSION``; the request is answered."""
    granted = granted_of(record)
    for dim, value in amount.items():
        granted[dim] = min(granted.get(dim, 0) + value, MAX_EXTENSION[dim])
    return {"granted": granted}
