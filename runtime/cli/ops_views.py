"""How ``agentrt ops`` shows levers: a change (or a dry run's preview with the runs it
would affect), the levers on now, and the audit. Every value from the store passes
through ``render.cell``/``render.line`` (sanitized) before it is shown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.cli.render import cell, line

if TYPE_CHECKING:
    from runtime.levers import LeverChange


def shown(value: Any) -> str:
    """A lever's setting: ``off`` for None, else its JSON."""
    if value is None:
        return "off"
    if value is True:
        return "on"
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def affected_table(runs: Sequence[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for name in ("run", "route", "tenant", "status"):
        table.add_column(name)
    for run in runs:
        table.add_row(
            cell(run["run_id"]), cell(run["route"]), cell(run["tenant_id"]), cell(run["status"])
        )
    return table


def change_view(change: LeverChange) -> RenderableType:
    what = f"{line(change.lever)} {line(change.target)}: {line(shown(change.old))} -> " + line(
        shown(change.new)
    )
    if change.dry_run:
        head = Text(f"dry run, nothing changed: {what}", style="yellow")
    elif not change.changed:
        head = Text(f"unchanged (already so): {what}", style="dim")
    else:
        head = Text(f"changed: {what}", style="green")
    count = Text(f"runs not ended it applies to: {change.affected_count}")
    parts: list[RenderableType] = [head, count]
    if change.dry_run and change.affected:
        parts.append(affected_table(change.affected))
        if change.affected_count > len(change.affected):
            parts.append(Text(f"... and {change.affected_count - len(change.affected)} more"))
    return Group(*parts)


def status_table(rows: Sequence[dict[str, Any]]) -> RenderableType:
    if not rows:
        return Text("no levers on", style="dim")
    table = Table(show_edge=False, pad_edge=False)
    for name in ("lever", "target", "setting", "since", "by", "reason"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            cell(row["lever"]),
            cell(row["target"]),
            cell(shown(row["value"])),
            cell(row["updated_at"]),
            cell(row["actor"]),
            cell(row["reason"] or ""),
        )
    return table


def log_table(rows: Sequence[dict[str, Any]]) -> RenderableType:
    if not rows:
        return Text("no lever changes recorded", style="dim")
    table = Table(show_edge=False, pad_edge=False)
    for name in ("at", "actor", "lever", "target", "old -> new", "runs", "dry run", "reason"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            cell(row["at"]),
            cell(row["actor"]),
            cell(row["lever"]),
            cell(row["target"]),
            cell(f"{shown(row['old'])} -> {shown(row['new'])}"),
            cell(row["affected"]),
            cell("yes" if row["dry_run"] else ""),
            cell(row["reason"] or ""),
        )
    return table


def rows_json(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]
