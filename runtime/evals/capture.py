"""Turn a stored run into an eval fixture: its identity and input, the proposals its
proposer made (from the trace, as the store redacted them), each tool execution's result,
and the outcome it ended in (``runtime.evals.outcome``), whose spend becomes the bounds a
replay must stay within.

``CaptureSweep`` applies the ``evals.capture_rules`` of the deployment file to ended runs,
off the step's hot path (``agentrt evals sweep``, or any periodic caller): the
``eval_captures`` table records each captured run, so a run is captured once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from runtime.contract import TERMINAL_STATUSES
from runtime.errors import EvalError, EvalFixtureError
from runtime.eval_config import CaptureRule, EvalsConfig
from runtime.evals import fixture as fx
from runtime.evals.outcome import outcome_of
from runtime.store.cells import Unreadable
from runtime.store.db import utcnow
from runtime.store.evals import EvalStore
from runtime.store.runs import RunStore
from runtime.tracing import redact

_ENDED = frozenset(s.value for s in TERMINAL_STATUSES)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def default_name(run: dict[str, Any]) -> str:
    """``<route>-<stop reason>-<run id prefix>`` in the characters a name may use."""
    reason = str(run.get("stop_reason") or run["status"])
    raw = f"{run['route']}-{reason}-{str(run['run_id'])[:8]}"
    return _UNSAFE.sub("_", raw)[:100]


def fixture_from_run(
    store: RunStore,
    run_id: str,
    *,
    tenant: str | None = None,
    name: str | None = None,
    blocking: bool = False,
    rule: str | None = None,
) -> fx.Fixture:
    """The fixture of an ended run (``RunNotFound`` for a missing run or another
    tenant's; ``EvalError`` for one that has not ended or whose record is unreadable)."""
    run = store.read_run(run_id, tenant)
    if run["status"] not in _ENDED:
        raise EvalError(f"run {run_id} is {run['status']}: only an ended run can be captured")
    events = store.trace(run_id, run["tenant_id"])
    unreadable = [e["id"] for e in events if any(isinstance(v, Unreadable) for v in e.values())]
    if unreadable or any(isinstance(v, Unreadable) for v in run.values()):
        raise EvalError(f"run {run_id}: part of its record is unreadable; not captured")
    steps = {int(s["step_no"]): s for s in store.steps(run_id, run["tenant_id"])}
    name = name or default_name(run)
    if not fx.NAME.match(name):
        raise EvalError(f"--name {name!r}: use 1-100 letters, digits, '_', '.' or '-'")
    raw_input = run.get("input")
    run_input: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}
    document = {
        "format": fx.FORMAT,
        "name": name,
        "blocking": blocking,
        "source": {
            "run_id": run_id,
            "tenant": run["tenant_id"],
            "route": run["route"],
            "version_set": run.get("version_set") or {},
            "policy_version": run.get("policy_version"),
            "budget_policy_version": run.get("budget_policy_version"),
            "captured_at": utcnow().isoformat(),
            "rule": rule,
        },
        "case": {
            "tenant": run["tenant_id"],
            "route": run["route"],
            "goal": run["goal"],
            # stored inputs are the submitter's: redact secret-looking values again here,
            # a fixture file is committed to a repository
            "input": redact({k: v for k, v in run_input.items() if k != "script"}),
            "autonomy_level": run.get("autonomy_level"),
            "risk_class": run.get("risk_class"),
        },
        "proposals": _proposals(events),
        "tool_results": _tool_results(events, steps),
        "expected": outcome_of(run, events, store.spend(run_id=run_id)).model_dump(mode="json"),
    }
    return fx.parse(document, f"run {run_id}")


def _proposals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the proposer answered, step by step (a resumed call asked it nothing)."""
    proposals = []
    for event in events:
        data = event.get("data") or {}
        if event["kind"] == "proposal" and isinstance(data.get("proposal"), dict):
            proposal = redact(data["proposal"])
            proposals.append({**proposal, "usage": data.get("usage") or {}})
    return proposals


def _tool_results(
    events: list[dict[str, Any]], steps: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per execution (``tool_end``); a succeeded call's result is what its step
    observed."""
    results = []
    for event in events:
        data = event.get("data") or {}
        if event["kind"] != "tool_end":
            continue
        ok = bool(data.get("ok"))
        step = steps.get(int(event["step_no"])) if event.get("step_no") is not None else None
        results.append({
            "tool": str(data.get("tool")),
            "ok": ok,
            "result": step.get("observation") if ok and step else None,
            "error_code": data.get("error_code"),
            "error": data.get("error"),
        })  # fmt: skip
    return results


def fixture_path(directory: Path, name: str, fmt: str = "json") -> Path:
    return directory / f"{name}.{fmt}"


def write_new(fixture: fx.Fixture, path: Path) -> None:
    """Write a fixture to a path no fixture holds yet (a capture never overwrites one)."""
    if path.exists():
        raise EvalFixtureError(
            str(path), ["a fixture with this name exists; choose another --name"]
        )
    fx.dump(fixture, path)


@dataclass
class SweepResult:
    captured: list[tuple[str, Path]] = field(default_factory=list)
    #: run id -> why it was not captured
    skipped: dict[str, str] = field(default_factory=dict)
    examined: int = 0


class CaptureSweep:
    """Capture every ended run a capture rule matches, once."""

    def __init__(self, *, runs: RunStore, evals: EvalStore, config: EvalsConfig,
                 directory: Path) -> None:  # fmt: skip
        self.runs = runs
        self.evals = evals
        self.config = config
        self.directory = directory

    def sweep(self, since: timedelta, limit: int = 500) -> SweepResult:
        result = SweepResult()
        if not self.config.capture_rules:
            return result
        candidates = self.evals.uncaptured_ended(utcnow() - since, None, limit)
        result.examined = len(candidates)
        for run in candidates:
            rule = self.config.rule_for(run["route"], run["risk_class"], run["stop_reason"])
            if rule is not None:
                self._capture(run, rule, result)
        return result

    def _capture(self, run: dict[str, Any], rule: CaptureRule, result: SweepResult) -> None:
        run_id = str(run["run_id"])
        name = default_name(run)
        path = fixture_path(self.directory, name)
        if not self.evals.claim_capture(run_id, run["tenant_id"], name, str(path), _label(rule)):
            return  # another sweep took it
        try:
            fixture = fixture_from_run(self.runs, run_id, blocking=rule.blocking, rule=_label(rule))
            write_new(fixture, path)
        except (EvalError, OSError) as exc:
            self.evals.release_capture(run_id)
            result.skipped[run_id] = str(exc)
            return
        result.captured.append((run_id, path))


def _label(rule: CaptureRule) -> str:
    scope = rule.route or (f"risk:{rule.risk_class}" if rule.risk_class else "*")
    return f"{scope} {rule.stop_reason}"[:300]


def record_capture(evals: EvalStore, fixture: fx.Fixture, path: Path) -> None:
    """Remember an operator's capture, so a rule does not capture the run again."""
    evals.claim_capture(fixture.source.run_id, fixture.source.tenant, fixture.name, str(path), None)
