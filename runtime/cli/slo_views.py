"""Rich views of ``agentrt slo report`` and ``agentrt evidence`` (data in, renderables out)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from runtime.slo import SloReport

_STATUS_STYLE = {"met": "green", "missed": "red bold", "no data": "yellow"}


def slo_views(report: SloReport) -> list[RenderableType]:
    """The SLO table, then one line per SLO saying what was counted, with the runs that
    prove a miss (whole run ids, on lines of their own: a table would cut them)."""
    scope = f"since {report.since:%Y-%m-%d %H:%M:%S}Z" + (
        f", route {report.route}" if report.route else ""
    )
    table = Table(title=escape(f"Runtime SLOs ({scope})"))
    table.add_column("SLO")
    for column in ("target", "measured", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("owner")
    lines: list[RenderableType] = []
    for r in report.results:
        target = f"{'<=' if r.bound == 'at most' else '>='} {r.target:g}%"
        measured = "-" if r.measured is None else f"{r.measured:g}%"
        style = _STATUS_STYLE[r.status]
        table.add_row(escape(r.name), target, measured, f"[{style}]{r.status}[/]", escape(r.owner))
        line = f"[{style}]{escape(r.name)}[/]: {escape(r.detail)}"
        if r.offenders:
            line += f"\n  offending: {escape(', '.join(r.offenders))}"
        lines.append(line)
    return [table, *lines]


def _kv_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[escape(_cell(row.get(c))) for c in columns])
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "; ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "-"
    return str(value)


def evidence_views(data: dict[str, Any]) -> list[RenderableType]:
    """One table per concern of the launch-evidence map."""
    dep = data["deployment"]
    applied = dep["applied"]
    where = (
        escape(f"applied {applied['version']} ({applied['digest'][:12]})") if applied else "file"
    )
    version = escape(str(dep["config_version"]))
    views: list[RenderableType] = [f"[bold]Launch evidence[/] for config {version} ({where})"]
    views.append(
        _kv_table(
            "Admission: route table",
            data["admission"]["routes"],
            ["route", "task_class", "risk_class", "autonomy_level", "tenant_scope", "refusal_path"],
        )
    )
    state = data["state"]
    views.append(
        f"[bold]State:[/] statuses {escape(', '.join(state['statuses']))}; terminal "
        f"{escape(', '.join(state['terminal_statuses']))}; stop reasons "
        f"{escape(', '.join(state['stop_reason_kinds']))}\n"
        f"RuntimeRun fields: {escape(', '.join(state['contract_fields']))}"
    )
    policy = data["policy"]
    views.append(
        _kv_table(
            f"Policy {policy['version']} (default {policy['default']}): decision matrix",
            policy["rules"],
            ["id", "effect", "reason", "owner", "match", "decisions_recorded"],
        )
    )
    views.append(f"Reason codes: {escape(', '.join(policy['reason_codes']) or 'none')}")
    budget = data["budget"]
    views.append(
        _kv_table(
            "Budget policies",
            [{"policy": k, **v} for k, v in budget["policies"].items()],
            ["policy", "version", "per_run", "tokens_per_step"],
        )
    )
    views.append(
        _kv_table(
            "Budget per route and exhaustion behaviour",
            [{"route": k, **v} for k, v in budget["routes"].items()],
            ["route", "budget_policy", "daily_budget", "on_exhausted", "max_steps"],
        )
    )
    views.append(
        _kv_table(
            "Tool manifest",
            [
                {**t, "input_fields": sorted((t["input_schema"] or {}).get("properties", {}))}
                for t in data["tools"]
            ],
            ["tool", "version", "side_effect", "timeout_s", "enabled", "routes", "input_fields"],
        )
    )
    obs = data["observability"]
    views.append(
        f"[bold]Trace contract:[/] events carry {escape(', '.join(obs['trace_event_fields']))}; "
        f"a complete trace has {escape(' and '.join(obs['required_events']))}; recorded: "
        f"{escape(_cell(obs['events_recorded']))}"
    )
    views.append(f"[bold]Blocking evals:[/] {escape(_cell(data['evaluation']['blocking_evals']))}")
    views.append(
        _kv_table("Runbook: levers and recovery", data["recovery"]["runbook"], ["command", "help"])
    )
    return views
