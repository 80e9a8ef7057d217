"""The demo's rollout act (``make demo``, issue 13): after the workload, on the same workers,
a canary of the refunds route's next release, one operator lever, and a gated promotion.

1. **Canary**: ``billing.refunds`` runs ``refunds-2026-11``; ``refunds-2026-12`` (a new
   prompt version) gets 25% of new runs, assigned by run id and recorded on each run before
   its first model call. The demo submits small refunds and counts the runs per release.
2. **Lever**: ``payments.refund`` is disabled (``agentrt ops disable-tool``) while refunds
   are queued: their calls are refused ``policy_denied:tool_disabled`` at their next step,
   none executes; the tool is enabled again.
3. **Gated promotion**: the workload's refund over the hard cap (``policy_denied``) is
   captured as a blocking eval fixture. ``refunds-relaxed`` (a policy set without the cap)
   is canaried and promoted: the gate replays the fixture under it, the refund would now
   run, so the promotion is refused. ``refunds-2026-12`` keeps the outcome and is promoted.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runtime.errors import DemoError, GateFailed
from runtime.evals.capture import fixture_from_run, fixture_path, write_new
from runtime.evals.gate import eval_gate
from runtime.service import RuntimeService

ROUTE = "billing.refunds"
ACTIVE, CANARY, RELAXED = "refunds-2026-11", "refunds-2026-12", "refunds-relaxed"
CANARY_PERCENT = 25.0
CANARY_RUNS = 16
LEVER_TOOL = "payments.refund"
LEVER_RUNS = 2
ACTOR = "demo:operator"


@dataclass
class RolloutReport:
    #: release -> runs of the canary phase recorded under it
    canary_split: dict[str, int] = field(default_factory=dict)
    #: stop reasons of the runs submitted while the tool was disabled
    lever_outcomes: dict[str, int] = field(default_factory=dict)
    #: executions of the tool by those runs (0: the lever held)
    lever_executions: int = 0
    fixture: str | None = None
    refused_promotion: str | None = None
    promoted: str | None = None
    promotion_gate: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "canary_split": self.canary_split,
            "lever_outcomes": self.lever_outcomes,
            "lever_executions": self.lever_executions,
            "fixture": self.fixture,
            "refused_promotion": self.refused_promotion,
            "promoted": self.promoted,
            "promotion_gate": self.promotion_gate,
        }


def _refund_script(amount: float) -> list[dict[str, Any]]:
    usage = {"input_tokens": 300, "output_tokens": 20}
    return [
        {
            "type": "tool_call",
            "tool": LEVER_TOOL,
            "args": {"customer_id": "cus_acme42", "amount": amount},
            "usage": usage,
        },
        {"type": "reply", "text": f"Refunded {amount:g} EUR.", "usage": usage},
    ]


def _submit(svc: RuntimeService, tenant: str, amount: float, label: str) -> str:
    view = svc.submit(
        tenant,
        ROUTE,
        f"Refund {amount:g} EUR ({label})",
        {"script": _refund_script(amount)},
        actor="demo",
    )
    return view.run_id


def _wait_ended(svc: RuntimeService, run_ids: list[str], deadline: float) -> list[dict[str, Any]]:
    while True:
        runs = [svc.store.get_run(r) for r in run_ids]
        if all(r["status"] in ("succeeded", "failed", "refused", "cancelled") for r in runs):
            return runs
        if time.monotonic() > deadline:
            waiting = Counter(str(r["status"]) for r in runs)
            raise DemoError(f"rollout runs did not finish in time: {dict(waiting)}")
        time.sleep(0.1)


def run_rollout(
    svc: RuntimeService, over_cap_run: str | None, evals_dir: Path, timeout_s: float
) -> RolloutReport:
    """The three acts on a running deployment; ``over_cap_run``: the workload's run that
    policy denied (the fixture the gate replays)."""
    if svc.releases is None:
        raise DemoError("this runtime was built without releases")
    deadline = time.monotonic() + timeout_s
    report = RolloutReport()
    releases = svc.releases

    # 1. canary: a quarter of new refunds run the next release
    releases.canary(ROUTE, CANARY, percent=CANARY_PERCENT, actor=ACTOR, reason="demo canary")
    ids = [_submit(svc, ("acme", "globex")[i % 2], 20 + i, "canary") for i in range(CANARY_RUNS)]
    runs = _wait_ended(svc, ids, deadline)
    report.canary_split = dict(Counter(str(r["release"]) for r in runs))

    # 2. a lever: the refund tool disabled while refunds are queued
    svc.levers.disable_tool(LEVER_TOOL, actor=ACTOR, reason="demo: payment provider incident")
    try:
        ids = [_submit(svc, "acme", 15, "tool disabled") for _ in range(LEVER_RUNS)]
        runs = _wait_ended(svc, ids, deadline)
    finally:
        svc.levers.enable_tool(LEVER_TOOL, actor=ACTOR, reason="demo: incident over")
    report.lever_outcomes = dict(Counter(str(r["stop_reason"]) for r in runs))
    report.lever_executions = sum(1 for r in ids for e in svc.trace(r) if e.kind == "tool_start")

    # 3. a gated promotion: the incident fixture blocks the release that would change it
    if over_cap_run is not None:
        fixture = fixture_from_run(svc.store, over_cap_run, name="refund-over-cap", blocking=True)
        path = fixture_path(evals_dir, fixture.name)
        if path.exists():
            path.unlink()  # a rerun of the demo in the same home: this run's fixture
        write_new(fixture, path)
        report.fixture = str(path)
    gate = eval_gate(svc.config, svc.settings, directory=evals_dir)
    releases.canary(ROUTE, RELAXED, percent=10, actor=ACTOR, reason="demo: relaxed policy")
    try:
        releases.promote(ROUTE, actor=ACTOR, reason="demo", gate=gate)
    except GateFailed as exc:
        report.refused_promotion = f"{RELAXED}: {exc.summary}"
    else:
        raise DemoError(f"the gate let {RELAXED} through: the fixture should have blocked it")
    releases.canary(ROUTE, CANARY, percent=CANARY_PERCENT, actor=ACTOR, reason="demo: retry")
    state = releases.promote(ROUTE, actor=ACTOR, reason="demo: canary looked good", gate=gate)
    report.promoted = state.active
    shown = releases.show(state.active)
    gates = shown.get("gates") or []
    report.promotion_gate = str(gates[-1].get("summary")) if gates else None
    return report


def rollout_table(report: RolloutReport) -> Table:
    table = Table(title="Rollout (billing.refunds): canary, a lever, a gated promotion")
    table.add_column("act")
    table.add_column("what happened")
    split = ", ".join(f"{k} {v}" for k, v in sorted(report.canary_split.items()))
    table.add_row(f"canary {CANARY} at {CANARY_PERCENT:g}%", f"{CANARY_RUNS} runs: {split}")
    outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(report.lever_outcomes.items()))
    table.add_row(
        f"ops disable-tool {LEVER_TOOL}",
        f"{outcomes}; {report.lever_executions} executions",
    )
    table.add_row("evals capture (blocking)", report.fixture or "-")
    table.add_row(f"promote {RELAXED}", f"refused: {report.refused_promotion}")
    table.add_row(f"promote {CANARY}", f"active: {report.promoted} ({report.promotion_gate})")
    return table


def print_rollout(report: RolloutReport, console: Console) -> None:
    console.print(rollout_table(report))
