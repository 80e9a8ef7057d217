"""The demo's reviewer: a person at ``agentrt approvals``, played by the demo itself.

Runs of the scenarios it reviews wait for approval (``billing.refunds`` refunds over 100
EUR); the reviewer approves one and denies the other, as ``demo:reviewer`` (not the runs'
submitter: the route is high risk), through ``rt.approvals`` - the same calls the CLI
makes. The summary shows each decision and its latency (request to decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table

from runtime.errors import AgentRuntimeError

if TYPE_CHECKING:
    from runtime.service import RuntimeService

REVIEWER = "demo:reviewer"
DENIAL_REASON = "refunds over 250 EUR need the customer's receipt"


@dataclass
class Decided:
    scenario: str
    run_id: str
    approval_id: str
    status: str
    decided_by: str | None
    latency_ms: int | None


class Reviewer:
    """Decides, once each, the approvals of the runs it reviews (``reviews``: run id ->
    (scenario, "approve" | "deny"))."""

    def __init__(self, reviews: dict[str, tuple[str, str]]) -> None:
        self.reviews = reviews
        self.decided: set[str] = set()

    def review(self, svc: RuntimeService) -> bool:
        """Decide what waits now; True while a reviewed run has yet to be decided."""
        undecided = False
        for run_id, (_, verdict) in self.reviews.items():
            if run_id in self.decided:
                continue
            run = svc.store.get_run(run_id)
            if run["status"] != "waiting" or not run["approval_id"]:
                undecided = undecided or run["status"] in ("queued", "running")
                continue
            try:
                if verdict == "approve":
                    svc.approvals.approve(run["approval_id"], REVIEWER, "within policy")
                else:
                    svc.approvals.deny(run["approval_id"], REVIEWER, DENIAL_REASON)
            except AgentRuntimeError:  # expired or decided meanwhile: nothing to do
                pass
            self.decided.add(run_id)
            undecided = True
        return undecided

    def collect(self, svc: RuntimeService) -> list[Decided]:
        rows: list[Decided] = []
        for run_id, (scenario, _) in self.reviews.items():
            for a in svc.approvals.store.find(run_id=run_id, status=None):
                rows.append(
                    Decided(
                        scenario,
                        run_id,
                        a["approval_id"],
                        a["status"],
                        a["decided_by"],
                        a["latency_ms"],
                    )
                )
        return rows


def percentile(values: list[int], pct: int) -> int | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(1, -(-pct * len(ordered) // 100)) - 1]


def approvals_table(decided: list[Decided]) -> Table:
    table = Table(title="Approvals (decided by the demo's reviewer)", title_justify="left")
    for name in ("scenario", "run", "approval", "decision", "by", "latency"):
        table.add_column(name, justify="right" if name == "latency" else "left")
    for d in decided:
        table.add_row(
            d.scenario,
            d.run_id[:12],
            d.approval_id[:12],
            "approved, spent once" if d.status == "consumed" else d.status,
            d.decided_by or "-",
            "-" if d.latency_ms is None else f"{d.latency_ms} ms",
        )
    return table


def latency_line(decided: list[Decided]) -> str:
    latencies = [d.latency_ms for d in decided if d.latency_ms is not None]
    if not latencies:
        return "approval latency: no decisions"
    return (
        f"approval latency (request -> decision): p50 {percentile(latencies, 50)} ms, "
        f"p95 {percentile(latencies, 95)} ms over {len(latencies)} decisions "
        "(agentrt approvals stats)"
    )


def to_json(decided: list[Decided]) -> list[dict[str, Any]]:
    return [d.__dict__ for d in decided]
