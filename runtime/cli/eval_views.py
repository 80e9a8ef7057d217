"""What ``agentrt evals`` and ``agentrt policy diff`` show people (Rich) and scripts (JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from runtime.cli.render import cell

if TYPE_CHECKING:
    from runtime.evals.policy_diff import PolicyDiff
    from runtime.evals.report import EvalReport

_VERDICT_STYLE = {"pass": "green", "fail": "red bold", "flaky": "yellow bold"}


def eval_table(report: EvalReport) -> Table:
    table = Table(title="evals", show_lines=False)
    for column in ("case", "route", "blocking", "expected", "got", "result"):
        table.add_column(column)
    for case in report.cases:
        style = _VERDICT_STYLE[case.verdict]
        result = case.verdict if case.runs == 1 else f"{case.verdict} ({case.passes}/{case.runs})"
        table.add_row(
            cell(case.name),
            cell(case.route),
            "yes" if case.blocking else "no",
            cell(case.expected),
            cell(case.got),
            f"[{style}]{result}[/]",
        )
    return table


def eval_json(report: EvalReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "summary": report.summary(),
        "cases": [
            {
                "name": c.name,
                "route": c.route,
                "blocking": c.blocking,
                "verdict": c.verdict,
                "expected": c.expected,
                "got": c.got,
                "passes": c.passes,
                "runs": c.runs,
                "reasons": list(c.reasons),
            }
            for c in report.cases
        ],
    }


def diff_tables(result: PolicyDiff) -> tuple[Table, Table]:
    transitions = Table(title="what would change")
    transitions.add_column("transition")
    transitions.add_column("calls", justify="right")
    for transition, count in result.transitions.most_common():
        transitions.add_row(cell(transition), str(count))
    rules = Table(title="by candidate rule")
    for column in ("transition", "rule", "calls", "example runs"):
        rules.add_column(column, justify="right" if column == "calls" else "left")
    for change in result.changes():
        rules.add_row(
            cell(change.transition), cell(change.rule), str(change.count),
            cell(", ".join(change.examples)),
        )  # fmt: skip
    return transitions, rules


def diff_json(result: PolicyDiff) -> dict[str, Any]:
    return {
        "examined": result.examined,
        "changed": result.changed,
        "truncated": result.truncated,
        "transitions": dict(result.transitions),
        "changes": [
            {"transition": c.transition, "rule": c.rule, "count": c.count, "examples": c.examples}
            for c in result.changes()
        ],
    }
