"""A run's outcome as an eval compares it: status, stop reason, policy decisions (effect +
rule) in order, the tools that executed and those refused, and what it spent. Captured
runs and replays are read the same way, so a difference is a difference in behaviour."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runtime.evals.fixture import DecisionRecord, Expected, SpendBounds

#: effects under which a proposed call does not execute
_REFUSING = ("deny", "record_only")


def outcome_of(
    run: dict[str, Any], events: Iterable[dict[str, Any]], spend: dict[str, int]
) -> Expected:
    """The outcome of a stored run from its row, its trace events and its spend totals."""
    decisions: list[DecisionRecord] = []
    executed: list[str] = []
    refused: list[str] = []
    for event in events:
        kind, data = event.get("kind"), event.get("data") or {}
        if kind == "policy_decision":
            tool = str(data.get("tool"))
            decisions.append(DecisionRecord(tool=tool, effect=str(data.get("effect")),
                                            rule=data.get("rule")))  # fmt: skip
            if data.get("effect") in _REFUSING:
                refused.append(tool)
        elif kind == "tool_start":
            executed.append(str(data.get("tool")))
        elif kind == "validation" and data.get("ok") is False:
            refused.append(str(data.get("tool") or f"<{data.get('code')}>"))
    return Expected(
        status=str(run["status"]),
        stop_reason=run.get("stop_reason"),
        decisions=decisions,
        executed=executed,
        refused=refused,
        spend=SpendBounds(
            tokens=int(spend.get("tokens", 0)),
            cost_micro_usd=int(spend.get("cost_micro_usd", 0)),
            tool_calls=int(spend.get("tool_calls", 0)),
        ),
    )


def differences(expected: Expected, got: Expected) -> list[str]:
    """What ``got`` does differently from ``expected``; empty when it passes. Spend is an
    upper bound: spending less passes."""
    diffs: list[str] = []
    if got.status != expected.status:
        diffs.append(f"status {got.status} (expected {expected.status})")
    if got.stop_reason != expected.stop_reason:
        diffs.append(f"stop reason {got.stop_reason} (expected {expected.stop_reason})")
    if got.decisions != expected.decisions:
        wanted = _decisions(expected.decisions)
        diffs.append(f"policy decisions {_decisions(got.decisions)} (expected {wanted})")
    if got.executed != expected.executed:
        diffs.append(f"executed {got.executed} (expected {expected.executed})")
    if got.refused != expected.refused:
        diffs.append(f"refused {got.refused} (expected {expected.refused})")
    for dim in ("tokens", "cost_micro_usd", "tool_calls"):
        spent, bound = getattr(got.spend, dim), getattr(expected.spend, dim)
        if spent > bound:
            diffs.append(f"spent {dim} {spent} > {bound}")
    return diffs


def _decisions(decisions: list[DecisionRecord]) -> str:
    return "[" + ", ".join(f"{d.tool}:{d.effect}/{d.rule}" for d in decisions) + "]"


def summary(outcome: Expected) -> str:
    """One short line: ``failed dead_lettered:exhausted``."""
    return f"{outcome.status} {outcome.stop_reason or ''}".strip()
