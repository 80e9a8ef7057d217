"""Rich renderings of ``agentrt releases`` results (the commands are in ``releases``)."""

from __future__ import annotations

from typing import Any

from runtime.cli import render


def _v(value: Any) -> str:
    return "-" if value is None or value == [] else render.markup(str(value))


def routes_table(routes: list[dict[str, Any]]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title="routes")
    for header in ("route", "active", "canary", "gets canary", "assignment", "upgrade", "gen"):
        table.add_column(header)
    for r in routes:
        share = []
        if r["percent"] is not None:
            share.append(f"{r['percent']:g}%")
        if r["tenants"]:
            share.append("tenants " + ",".join(r["tenants"]))
        table.add_row(
            _v(r["route"]),
            _v(r["active"]),
            _v(r["canary"]),
            _v(" + ".join(share) or None),
            _v(r["assignment"]),
            _v(r["upgrade"]),
            str(r["generation"]),
        )
    return table


def releases_table(releases: list[dict[str, Any]]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title="releases")
    for header in ("release", "model", "prompt", "policy", "budget policy", "runs on"):
        table.add_column(header)
    for r in releases:
        table.add_row(
            _v(r["release"]),
            _v(f"{r['model']} ({r['model_version']})"),
            _v(r["prompt"]),
            _v(f"{r['policy']} ({r['policy_version']})"),
            _v(r["budget_policy"] or "(route's)"),
            _v(", ".join(r["routes"]) or None),
        )
    return table


def version_set_table(name: str, described: dict[str, Any]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title=f"release {name}")
    table.add_column("field")
    table.add_column("value")
    for field, value in described.items():
        table.add_row(field, _v(value))
    return table


def gates_table(gates: list[dict[str, Any]]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title="gate results")
    for header in ("at", "route", "action", "passed", "cases", "failures", "flaky", "summary"):
        table.add_column(header)
    for g in gates:
        table.add_row(
            f"{g['at']:%Y-%m-%d %H:%M:%S}",
            _v(g["route"]),
            _v(g["action"]),
            "yes" if g["passed"] else "[red]no[/]",
            str(g["cases"]),
            str(g["failures"]),
            str(g["flaky"]),
            _v(g["summary"]),
        )
    return table


def audit_table(rows: list[dict[str, Any]]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title="audit")
    for header in ("at", "route", "action", "release", "actor", "reason", "after"):
        table.add_column(header)
    for a in rows:
        after = a["after"] or {}
        state = f"active {after.get('active')}" + (
            f", canary {after['canary']}" if after.get("canary") else ""
        )
        table.add_row(
            f"{a['at']:%Y-%m-%d %H:%M:%S}",
            _v(a["route"]),
            _v(a["action"]),
            _v(a["release"]),
            _v(a["actor"]),
            _v(a["reason"]),
            _v(state),
        )
    return table


def diff_table(a: str, b: str, changes: list[tuple[str, Any, Any]]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False, title=f"{a} -> {b}")
    table.add_column("field")
    table.add_column(a)
    table.add_column(b)
    for field, left, right in changes:
        table.add_row(field, _v(left), _v(right))
    return table


def compare_table(result: dict[str, Any]) -> render.FitTable:
    figures = result["figures"]
    names = [n for n in (result["active"], result["canary"]) if n is not None]
    table = render.FitTable(
        show_edge=False,
        pad_edge=False,
        title=f"{result['route']} since {result['since']:%Y-%m-%d %H:%M}",
    )
    table.add_column("")
    for name in names:
        table.add_column(f"{name} ({'active' if name == result['active'] else 'canary'})")

    def row(label: str, show: Any) -> None:
        table.add_row(label, *[show(figures[n]) for n in names])

    row("runs", lambda f: str(f["runs"]))
    row("completed", lambda f: str(f["completed"]))
    row("stop reasons", lambda f: _reasons(f["stop_reasons"]))
    row("policy denials", lambda f: str(f["policy_denials"]))
    row("cost / completed run", lambda f: _usd(f["cost_per_completed_usd"]))
    row("tool errors", lambda f: str(f["tool_errors"]))
    row("p95 step latency", lambda f: "-" if f["p95_step_ms"] is None else f"{f['p95_step_ms']} ms")
    return table


def _reasons(counts: dict[str, int]) -> str:
    return _v(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or None)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"
