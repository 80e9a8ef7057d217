"""How ``agentrt dlq`` shows dead letters: JSON shapes for scripts, Rich views for people.

The command module (``runtime.cli.dlq``) parses arguments and runs the operations; every
table, line and JSON object it prints is built here. Every value from the store passes
through ``render.line``/``render.cell``/``render.block`` (sanitized) before it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.cli import render
from runtime.cli.render import block, cell, line

if TYPE_CHECKING:
    from runtime.cli.reads import Counter
    from runtime.dead_letters import RetryOutcome

#: entries listed by name under a retry/purge report; the rest are counted
SHOWN = 50
#: lines to print, each with whether it is printed whole however wide (soft wrap): a
#: report's heads wrap at the terminal's width, its entry lines never do
Lines = list[tuple[Text, bool]]


# --- retry -------------------------------------------------------------------------------


def retry_json(outcome: RetryOutcome, rate_per_s: float) -> dict[str, Any]:
    return {
        "matched": outcome.matched,
        "retried": outcome.retried,
        "skipped": outcome.skipped,
        "dryRun": outcome.dry_run,
        "ratePerS": rate_per_s,
    }


def retry_report(
    outcome: RetryOutcome, entries: dict[str, dict[str, Any]], rate_per_s: float
) -> Lines:
    """What a retry did (or would do): a head, a line per entry, then the skipped ones."""
    n = len(outcome.retried)
    if outcome.dry_run:
        head = f"dry run, nothing changed: would retry {n} of {outcome.matched} matching"
    else:
        head = f"retried {n} of {outcome.matched} matching"
    head += f" dead letter{'' if outcome.matched == 1 else 's'}"
    if n > 1:
        head += f", at most {rate_per_s:g}/s (about {(n - 1) / rate_per_s:.1f}s in all)"
    lines: Lines = [(Text(head, style="bold"), False)]
    verb = "would resume" if outcome.dry_run else "resumes"
    lines += [
        (text, True)
        for text in _listed(outcome.retried, lambda i: _retried_line(entries.get(i), i, verb))
    ]
    if outcome.skipped:
        lines += _skipped(outcome.skipped, entries)
    return lines


def _retried_line(entry: dict[str, Any] | None, entry_id: str, verb: str) -> Text:
    if entry is None:
        return Text(f"  {line(entry_id)}")
    where = (
        f"compensation of run {entry['run_id']} runs again"
        if entry["dl_class"] == "compensation"
        else f"run {entry['run_id']} {verb} at step {entry['step_no']}"
    )
    return Text.assemble(
        "  ", line(entry_id), "  ", (line(entry["dl_class"]), "bold"), f"  {line(where)}"
    )


def _reason_line(entry: dict[str, Any] | None, entry_id: str, reason: str) -> Text:
    kind = line(entry["dl_class"]) if entry else "?"
    return Text.assemble("  ", line(entry_id), "  ", (kind, "bold"), "  ", (line(reason), "yellow"))


def _listed(ids: Sequence[str], make: Callable[[str], Text]) -> list[Text]:
    lines = [make(i) for i in ids[:SHOWN]]
    if len(ids) > SHOWN:
        lines.append(Text(f"  ... and {len(ids) - SHOWN} more (--json lists all)", style="dim"))
    return lines


def _skipped(reasons: dict[str, str], entries: dict[str, dict[str, Any]]) -> Lines:
    lines: Lines = [(Text(f"skipped {len(reasons)}:", style="bold yellow"), False)]
    lines += [
        (text, True)
        for text in _listed(list(reasons), lambda i: _reason_line(entries.get(i), i, reasons[i]))
    ]
    return lines


# --- purge -------------------------------------------------------------------------------


def purge_json(
    purged: list[str], matched: int, not_open: dict[str, str], dry_run: bool
) -> dict[str, Any]:
    return {"matched": matched, "purged": purged, "skipped": not_open, "dryRun": dry_run}


def purge_report(
    purged: list[str],
    matched: int,
    not_open: dict[str, str],
    entries: dict[str, dict[str, Any]],
    dry_run: bool,
) -> Lines:
    """What a purge did (or would do): a head, a line per entry, then the named entries
    it left alone; ``matched`` is the count the preview saw (what was confirmed)."""
    n = len(purged)
    head = (
        f"dry run, nothing changed: would purge {n} of {matched} matching"
        if dry_run
        else f"purged {n} of {matched} matching"
    ) + f" dead letter{'' if matched == 1 else 's'}"
    lines: Lines = [(Text(head, style="bold"), False)]
    lines += [(text, True) for text in entry_lines(purged, entries)]
    if not_open:
        lines += _skipped(not_open, entries)
    return lines


def entry_lines(ids: Sequence[str], entries: dict[str, dict[str, Any]]) -> list[Text]:
    """One line per entry (``SHOWN`` at most, the rest counted): what a purge asks about."""
    return _listed(ids, lambda i: _entry_line(entries.get(i), i))


def _entry_line(entry: dict[str, Any] | None, entry_id: str) -> Text:
    if entry is None:
        return Text(f"  {line(entry_id)}")
    where = f"run {entry['run_id']} step {entry['step_no']}" if entry["run_id"] else "no run"
    return Text.assemble(
        "  ",
        line(entry_id),
        "  ",
        (line(entry["dl_class"]), "bold"),
        line(f"  {entry['queue']} · {entry['error_type']} · {where}"),
    )


# --- stats -------------------------------------------------------------------------------


def stats_json(rows: list[dict[str, Any]], counters: dict[str, Counter] | str) -> dict[str, Any]:
    return {
        "open": sum(int(r["open"]) for r in rows),
        "queues": [
            {
                "queue": r["queue"],
                "class": r["class"],
                "open": r["open"],
                "oldest": _iso(r["oldest"]),
                "newest": _iso(r["newest"]),
            }
            for r in rows
        ],
        # null: not read (the note says why)
        "counters": None
        if isinstance(counters, str)
        else {
            q: {
                "open": c.open,
                "key": c.key,
                "stream": c.stream,
                "streamLength": c.stream_length,
            }
            for q, c in counters.items()
        },
        "countersNote": counters if isinstance(counters, str) else None,
    }


def stats_view(rows: list[dict[str, Any]], counters: dict[str, Counter] | str) -> RenderableType:
    """The open count, a table per queue and class (ages first: at 80 columns the times
    are cut, the counts never), and the Redis counters set against SQL."""
    total = sum(int(r["open"]) for r in rows)
    parts: list[RenderableType] = [
        Text.assemble(("open dead letters ", "bold"), (str(total), "bold red" if total else ""))
    ]
    if rows:
        table = render.FitTable(show_edge=False)
        render.text_column(table, "queue")
        render.text_column(table, "class")
        render.number_column(table, "open")
        render.text_column(table, "oldest failure")
        render.text_column(table, "newest failure")
        for r in rows:
            table.add_row(
                cell(r["queue"]),
                cell(r["class"]),
                str(r["open"]),
                _age_when(r["oldest"]),
                _age_when(r["newest"]),
            )
        parts.append(table)
    sql_open: dict[str, int] = {}
    for r in rows:
        sql_open[r["queue"]] = sql_open.get(r["queue"], 0) + int(r["open"])
    lines = [Text("Redis (for alerting)", style="bold")]
    if isinstance(counters, str):
        lines.append(Text(f"  counters not read: {line(counters)}", style="dim"))
    for queue, c in sorted(counters.items()) if not isinstance(counters, str) else ():
        text = Text.assemble(
            f"  {line(c.key)} = ",
            (str(c.open), "bold"),
            f" · stream {line(c.stream)} XLEN {c.stream_length}",
        )
        if c.open != sql_open.get(queue, 0):
            text.append(
                f" · counter differs from the {sql_open.get(queue, 0)} open in SQL", "yellow"
            )
        lines.append(text)
    parts.append(Group(*lines))
    return Group(*parts)


# --- audit -------------------------------------------------------------------------------


def audit_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": _iso(row["at"]),
        "actor": row["actor"],
        "action": row["action"],
        "filter": row["filter"],
        "count": row["count"],
        "ids": row["ids"],
        "detail": row["detail"],
    }


def audit_table(rows: list[dict[str, Any]]) -> Table:
    """The time, action and count stay whole; actor, filter and detail wrap in a narrow
    terminal (Rich narrows wrapping columns before anything else)."""
    table = Table(show_edge=False)
    for name in ("at", "actor", "action", "count", "filter", "detail"):
        if name == "count":
            render.number_column(table, name)
        else:
            table.add_column(name, no_wrap=name in ("at", "action"))
    for r in rows:
        table.add_row(
            when(r["at"]),
            cell(r["actor"]),
            cell(r["action"]),
            str(r["count"]),
            cell(_filter_text(r["filter"])),
            cell(_detail_text(r["detail"])),
        )
    return table


def _filter_text(f: dict[str, Any] | None) -> str:
    if not f:
        return "-"
    parts = []
    for key, value in f.items():
        if key == "ids" and isinstance(value, list):
            shown = ",".join(str(v)[:8] for v in value[:3])
            parts.append(f"ids={shown}{'…' if len(value) > 3 else ''} ({len(value)})")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _detail_text(detail: dict[str, Any] | None) -> str:
    if not detail:
        return "-"
    parts = []
    skipped = detail.get("skipped")
    if isinstance(skipped, dict):
        parts.append(f"skipped {len(skipped)}")
    for key, value in detail.items():
        if key != "skipped":
            parts.append(f"{key}={render.compact(value, 40)}")
    return " · ".join(parts)


# --- entries -----------------------------------------------------------------------------


def entry_json(entry: dict[str, Any], full: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": entry["id"],
        "status": entry["status"],
        "class": entry["dl_class"],
        "queue": entry["queue"],
        "tenantId": entry["tenant_id"],
        "route": entry["route"],
        "runId": entry["run_id"],
        "step": entry["step_no"],
        "errorType": entry["error_type"],
        "error": entry["error_message"],
        "attemptCount": entry["attempt_count"],
        "firstFailedAt": _iso(entry["first_failed_at"]),
        "lastFailedAt": _iso(entry["last_failed_at"]),
        "retryCount": entry["retry_count"],
        "resolvedAt": _iso(entry["resolved_at"]),
        "resolvedBy": entry["resolved_by"],
    }
    if full:
        data.update(
            {
                "taskName": entry["task_name"],
                "taskId": entry["task_id"],
                "traceId": entry["trace_id"],
                "versionSet": entry["version_set"],
                "message": entry["message"],
                "traceback": entry["traceback"],
                "attempts": entry["attempts"] or [],
                "createdAt": _iso(entry["created_at"]),
            }
        )
    return data


_COLUMNS = (
    "id",
    "class",
    "queue",
    "tenant",
    "route",
    "run",
    "step",
    "error type",
    "attempts",
    "last failure",
)

_DL_STYLE = {
    "exhausted": "red",
    "poison": "magenta",
    "worker_lost": "yellow",
    "timeout": "yellow",
    "compensation": "cyan",
}


def _cells(e: dict[str, Any], with_status: bool) -> list[str]:
    """The row of one entry, every value on one line and sanitized."""
    cells = [
        line(e["id"]),
        line(e["dl_class"]),
        line(e["queue"]),
        line(e["tenant_id"] or "-"),
        line(e["route"] or "-"),
        line(e["run_id"] or "-"),
        "-" if e["step_no"] is None else str(e["step_no"]),
        line(e["error_type"]),
        str(e["attempt_count"]),
        f"{render.age(e['last_failed_at'])} ago",
    ]
    return [*cells, line(e["status"])] if with_status else cells


def entries_view(entries: list[dict[str, Any]], width: int, with_status: bool) -> RenderableType:
    """A table when it fits the terminal, else two lines per entry: ids are never cut."""
    headers = [*_COLUMNS, "status"] if with_status else list(_COLUMNS)
    rows = [_cells(e, with_status) for e in entries]
    widest = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    if sum(widest) + 3 * len(headers) <= width:
        table = Table(show_edge=False, pad_edge=False)
        for name in headers:
            numeric = name in ("step", "attempts")
            table.add_column(name, no_wrap=True, justify="right" if numeric else "left")
        for cells in rows:
            styled = [Text(c) for c in cells]
            styled[1].stylize(_DL_STYLE.get(cells[1], ""))
            table.add_row(*styled)
        return table
    lines: list[RenderableType] = []
    for e, cells in zip(entries, rows, strict=True):
        status = f"  {cells[10]}" if with_status else ""
        lines.append(
            Text.assemble(
                (cells[0], "bold"),
                "  ",
                (cells[1], _DL_STYLE.get(e["dl_class"], "")),
                f"  {cells[7]}{status}",
            )
        )
        run = f"run {cells[5]} step {cells[6]}" if e["run_id"] else "no run"
        lines.append(
            Text(
                f"    {cells[2]} · {cells[3]} / {cells[4]} · {run} · "
                f"{cells[8]} attempt{'' if cells[8] == '1' else 's'} · last failure {cells[9]}",
                style="dim",
            )
        )
    return Group(*lines)


def entry_details(entry: dict[str, Any], run: dict[str, Any] | None) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    status = Text(line(entry["status"]), style="bold red" if entry["status"] == "open" else "green")
    if entry["resolved_at"] is not None:
        status.append(f" by {line(entry['resolved_by'])} at {when(entry['resolved_at'])}", "")
    if entry["retry_count"]:
        status.append(f" · retried {entry['retry_count']}x", "")
    vs = entry["version_set"] or {}
    rows: list[tuple[str, str | Text]] = [
        ("dead letter", line(entry["id"])),
        ("status", status),
        ("class", Text(line(entry["dl_class"]), style=_DL_STYLE.get(entry["dl_class"], ""))),
        ("queue", line(entry["queue"])),
        ("task", line(f"{entry['task_name'] or '-'} · id {entry['task_id'] or '-'}")),
        ("run", _run_text(entry, run)),
        ("tenant / route", line(f"{entry['tenant_id'] or '-'} / {entry['route'] or '-'}")),
        ("step", "-" if entry["step_no"] is None else str(entry["step_no"])),
        ("trace", line(entry["trace_id"] or "-")),
        ("versions", line(_versions_text(vs))),
        # an exception's message may have lines of its own
        (
            "error",
            Text.assemble((line(entry["error_type"]), "bold red"), f" {block(_error(entry))}"),
        ),
        ("attempts", str(entry["attempt_count"])),
        ("first failure", _when_age(entry["first_failed_at"])),
        ("last failure", _when_age(entry["last_failed_at"])),
    ]
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(value))
    parts: list[RenderableType] = [grid]
    if entry["attempts"]:
        parts.append(_attempts_table(entry["attempts"]))
    parts.append(Text("original message", style="bold"))
    message = entry["message"]
    parts.append(Text(_dump(message) if message is not None else "-"))
    parts.append(Text("traceback", style="bold"))
    parts.append(Text(block(entry["traceback"] or "-"), style="dim"))
    if entry["status"] == "open":
        resumable = entry["dl_class"] == "compensation" or (
            entry["run_id"] is not None and entry["step_no"] is not None
        )
        hint = f"retry: agentrt dlq retry {entry['id']} · " if resumable else ""
        parts.append(Text(f"{hint}purge: agentrt dlq purge {entry['id']}", style="dim"))
    return Group(*parts)


def _error(entry: dict[str, Any]) -> str:
    return str(entry["error_message"] or "")


def _dump(message: Any) -> str:
    """A stored message as indented JSON (control characters escaped by ``json.dumps``);
    one nested past what JSON printing handles is shown cut instead of failing."""
    try:
        return json.dumps(message, indent=2, default=str)
    except (ValueError, RecursionError):
        return render.compact(message, 2000)


def _when_age(value: datetime) -> str:
    return f"{when(value)} ({render.age(value)} ago)"


def _age_when(value: datetime) -> str:
    """The age first: in a narrow table the time is what gets cut."""
    return f"{render.age(value)} ago · {when(value)}"


def _run_text(entry: dict[str, Any], run: dict[str, Any] | None) -> str | Text:
    if run is None:
        return "-"
    if not run["exists"]:
        return Text(f"{line(run['runId'])} (no longer exists)", style="yellow")
    text = Text(f"{line(run['runId'])} · now ")
    text.append_text(render.status_text(run["status"]))
    text.append(f" · {line(run['stopReason'] or '-')} · next step {run['nextStep']}")
    return text


def _versions_text(vs: dict[str, Any]) -> str:
    if not vs:
        return "-"
    return " · ".join(f"{k} {v}" for k, v in vs.items() if v is not None)


def _attempts_table(attempts: list[dict[str, Any]]) -> Table:
    """Numbers and times stay whole; the text columns wrap in a narrow terminal."""
    table = Table(title="attempt history", title_justify="left", show_edge=False)
    for name in ("#", "at", "step", "kind", "error type", "error", "worker"):
        if name in ("#", "step"):
            render.number_column(table, name)
        else:
            table.add_column(name, no_wrap=name == "at")
    for n, a in enumerate(attempts, 1):
        table.add_row(
            str(n),
            cell(when(a.get("at"))),
            cell(a.get("step_no", "-")),
            cell(a.get("kind") or "-"),
            cell(a.get("error_type") or "-"),
            cell(render.compact(a.get("error") or "", 120)),
            cell(a.get("worker") or "-"),
        )
    return table


# --- times -------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: Any) -> Any:
    return _aware(value).isoformat() if isinstance(value, datetime) else value


def when(value: Any) -> str:
    """``2025-01-31 12:00:05Z``; an attempt's time is stored as text and parsed here."""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if not isinstance(value, datetime):
        return "-"
    return _aware(value).strftime("%Y-%m-%d %H:%M:%SZ")
