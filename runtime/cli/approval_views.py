"""How ``agentrt approvals`` shows approvals to people (Rich); ``--json`` prints the
``ApprovalView`` model as it is. Every stored value passes through ``render.line`` /
``render.block`` (sanitized) before it is shown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.cli import render
from runtime.cli.dlq_views import when
from runtime.cli.render import line

if TYPE_CHECKING:
    from runtime.approvals import ApprovalView

STATUS_STYLE = {
    "pending": "yellow",
    "approved": "green",
    "consumed": "green",
    "denied": "red",
    "expired": "red",
}


def _status(status: str) -> Text:
    return Text(line(status), style=STATUS_STYLE.get(status, ""))


def _in(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def approvals_table(views: Sequence[ApprovalView], now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)
    table = Table(show_edge=False)
    for name in ("approval", "status", "tenant", "route", "run", "step", "tool", "rule",
                 "owner", "asked", "expires"):  # fmt: skip
        table.add_column(name, no_wrap=name in ("approval", "run", "asked"))
    for a in views:
        left = (a.expires_at - now).total_seconds()
        table.add_row(
            line(a.approval_id),
            _status(a.status),
            line(a.tenant),
            line(a.route),
            line(a.run_id),
            str(a.step),
            line(a.tool),
            line(f"{a.rule} ({a.effect})"),
            line(a.owner or "-"),
            f"{render.age(a.requested_at, now)} ago",
            ("due" if left <= 0 else f"in {_in(left)}") if a.status == "pending" else "-",
        )
    return table


def approval_details(a: ApprovalView) -> RenderableType:
    who = (a.approvers or {}) if isinstance(a.approvers, dict) else {}
    may = f"members of {who.get('owner')}" if who.get("owner") else "any approver"
    if who.get("not"):
        may += f", not {', '.join(str(x) for x in who['not'])}"
    rows: list[tuple[str, Any]] = [
        ("approval", a.approval_id),
        ("status", _status(a.status)),
        ("tenant", a.tenant),
        ("run", f"{a.run_id} (step {a.step}, route {a.route})"),
        ("tool", f"{a.tool} (schema version {a.tool_version})"),
        ("rule", f"{a.rule} ({a.effect}, policy {a.policy_version})"),
        ("owner", a.owner or "-"),
        ("may decide", may),
        ("submitted by", a.submitted_by),
        ("requested", when(a.requested_at)),
        ("expires", when(a.expires_at)),
        ("decided", f"{a.decided_by} at {when(a.decided_at)}" if a.decided_by else "-"),
        ("reason", a.reason or "-"),
        ("latency", f"{a.latency_ms} ms" if a.latency_ms is not None else "-"),
        ("spent by", f"{a.consumed_by} at {when(a.consumed_at)}" if a.consumed_by else "-"),
        ("digest", a.digest),
    ]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else line(value))
    args = Text(render.block(json.dumps(a.args, indent=2, default=str)))
    parts: list[RenderableType] = [table, Text("arguments (as they will run)", style="bold"), args]
    if a.status == "pending":
        parts.append(
            Text(
                f"approve: agentrt approvals approve {a.approval_id} · "
                f"deny: agentrt approvals deny {a.approval_id} --reason ...",
                style="dim",
            )
        )
    return Group(*parts)


def decided_line(a: ApprovalView) -> Text:
    verb = {"approved": "approved: its run resumes", "denied": "denied"}.get(a.status, a.status)
    return Text.assemble(
        "approval ", (line(a.approval_id), "bold"), f" {line(verb)}", f" (run {line(a.run_id)})"
    )


def stats_table(stats: dict[str, Any]) -> RenderableType:
    table = Table(show_edge=False)
    for name in ("route", "decided", "p50", "p95", "pending", "oldest pending"):
        table.add_column(name, justify="left" if name == "route" else "right")

    def ms(value: int | None) -> str:
        return "-" if value is None else f"{value / 1000:.1f}s"

    for r in stats["routes"]:
        oldest = r["oldest_pending_age_s"]
        table.add_row(
            line(r["route"]),
            str(r["decided"]),
            ms(r["p50_ms"]),
            ms(r["p95_ms"]),
            str(r["pending"]),
            "-" if oldest is None else _in(oldest),
        )
    total = Text(f"{stats['pending']} pending", style="bold")
    if stats["oldest_pending_age_s"] is not None:
        total.append(f", the oldest waiting {_in(stats['oldest_pending_age_s'])}")
    return Group(table, total)
