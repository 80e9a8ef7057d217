"""``agentrt dlq``: dead letters for an operator - list, show, retry, purge, stats, audit.

A thin layer over :class:`runtime.dead_letters.DeadLetters` (``svc.dead_letters``): it
parses filters, refuses bulk operations nobody asked for (no id and no filter needs
``--all``), asks before purging, and renders entries for people (Rich) or scripts
(``--json``). Exit codes as for the rest of ``agentrt``: 1 error (unknown id, unreachable
Redis/database), 2 bad arguments or a refused operation.

The plumbing (service construction, error rendering, JSON output) is ``runtime.cli.common``.
``list``, ``show``, ``stats`` and ``audit`` read SQL only (``runtime.cli.reads``); ``retry``
and ``purge`` build the whole service.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.cli import common, params, render
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_REFUSED,
    JsonOpt,
    default_actor,
    emit_json,
    err,
    fail,
    out,
    reader,
    service,
)
from runtime.cli.params import parse_rate, parse_when
from runtime.cli.reads import STEP_QUEUE, Counter
from runtime.cli.render import block, cell, line
from runtime.errors import AgentRuntimeError

if TYPE_CHECKING:
    from runtime.service import RuntimeService
    from runtime.store.dead_letters import DeadLetterFilter
    from runtime.store.runs import RunStore

__all__ = ["STEP_QUEUE", "app", "parse_rate", "parse_when"]

#: entries listed by name under a retry/purge report; the rest are counted
SHOWN = 50
#: a confirmed purge is pinned to the ids it showed up to this many (else to the time)
PIN_IDS_MAX = 1000

app = typer.Typer(
    help=(
        "Dead letters: steps and messages that cannot go on by themselves.\n\n"
        "Classes: exhausted, poison, worker_lost, timeout, compensation. "
        "Retry resumes the failed step; purge marks entries purged (audited)."
    ),
    no_args_is_help=True,
)


class DlClass(enum.StrEnum):
    exhausted = "exhausted"
    poison = "poison"
    worker_lost = "worker_lost"
    timeout = "timeout"
    compensation = "compensation"


class Status(enum.StrEnum):
    open = "open"
    retried = "retried"
    purged = "purged"
    all = "all"


# --- shared options ----------------------------------------------------------------------

QueueOpt = Annotated[
    str | None, typer.Option("--queue", help=f"Only this queue (e.g. {STEP_QUEUE}).")
]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run's entries.")]
RouteOpt = Annotated[str | None, typer.Option("--route", help="Only this route.")]
ClassOpt = Annotated[DlClass | None, typer.Option("--class", help="Only this dead-letter class.")]
ErrorTypeOpt = Annotated[
    str | None,
    typer.Option("--error-type", help="Only this error type (e.g. backend_unavailable)."),
]
SinceOpt = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        parser=parse_when,
        metavar="WHEN",
        help="Last failure at or after WHEN: ISO-8601 (UTC if no offset; 1970 to 9999) or "
        "30m, 2h, 7d ago (at most 3650d).",
    ),
]
UntilOpt = Annotated[
    datetime | None,
    typer.Option(
        "--until",
        parser=parse_when,
        metavar="WHEN",
        help="Last failure before WHEN (same forms as --since).",
    ),
]
IdsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[ID]...", help="Entry ids (from `agentrt dlq list`).", show_default=False
    ),
]
AllOpt = Annotated[
    bool,
    typer.Option("--all", help="Allow acting on every open entry when no id or filter is given."),
]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who acts, for the audit log (default cli:$USER).")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
]
BulkLimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        max=params.MAX_BULK,
        help="At most this many entries, newest first (default all).",
    ),
]
ListLimitOpt = Annotated[
    int, typer.Option("--limit", min=1, max=params.MAX_LIST, help="At most this many.")
]


@dataclasses.dataclass(frozen=True)
class _Selection:
    """What a command was asked to act on."""

    ids: tuple[str, ...]
    queue: str | None
    tenant: str | None
    route: str | None
    dl_class: DlClass | None
    error_type: str | None
    since: datetime | None
    until: datetime | None
    run_id: str | None = None

    @property
    def narrowed(self) -> bool:
        return bool(self.ids) or any(
            v is not None
            for v in (
                self.queue,
                self.tenant,
                self.route,
                self.dl_class,
                self.error_type,
                self.since,
                self.until,
                self.run_id,
            )
        )

    def to_filter(self, status: str | None) -> DeadLetterFilter:
        from runtime.store.dead_letters import DeadLetterFilter

        if self.since is not None and self.until is not None and self.since >= self.until:
            fail(
                f"--since ({_when(self.since)}) must be before --until ({_when(self.until)})",
                EXIT_REFUSED,
            )
        return DeadLetterFilter(
            ids=self.ids,
            run_id=self.run_id,
            queue=self.queue,
            tenant=self.tenant,
            route=self.route,
            dl_class=self.dl_class.value if self.dl_class else None,
            error_type=self.error_type,
            since=self.since,
            until=self.until,
            status=status,
        )


def _selection(
    ids: list[str] | None,
    queue: str | None,
    tenant: str | None,
    route: str | None,
    dl_class: DlClass | None,
    error_type: str | None,
    since: datetime | None,
    until: datetime | None,
    run_id: str | None = None,
) -> _Selection:
    unique = tuple(dict.fromkeys(i.strip() for i in ids or () if i.strip()))
    return _Selection(unique, queue, tenant, route, dl_class, error_type, since, until, run_id)


def _require_scope(sel: _Selection, all_: bool, verb: str) -> None:
    """No id and no filter means every open entry: only with --all."""
    if not sel.narrowed and not all_:
        fail(
            f"refusing to {verb} every open dead letter: name entry ids, narrow with "
            "--queue/--tenant/--run/--route/--class/--error-type/--since/--until, or pass --all",
            EXIT_REFUSED,
        )


def _check_ids(svc: RuntimeService, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The named entries (any status); an unknown id fails before anything changes."""
    from runtime.store.dead_letters import DeadLetterFilter

    if not ids:
        return {}
    found = {
        e["id"]: e
        for e in svc.dead_letters.find(DeadLetterFilter(ids=tuple(ids), status=None), None)
    }
    missing = [i for i in ids if i not in found]
    if missing:
        fail(f"no dead letter with id {', '.join(repr(i) for i in missing)}; nothing changed")
    return found


# --- list --------------------------------------------------------------------------------


@app.command("list")
def dlq_list(
    queue: QueueOpt = None,
    tenant: TenantOpt = None,
    run: RunOpt = None,
    route: RouteOpt = None,
    dl_class: ClassOpt = None,
    error_type: ErrorTypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    status: Annotated[
        Status, typer.Option("--status", help="Entries in this status.")
    ] = Status.open,
    limit: ListLimitOpt = 50,
    json_out: JsonOpt = False,
) -> None:
    """List dead letters, most recent failure first."""
    sel = _selection(None, queue, tenant, route, dl_class, error_type, since, until, run)
    f = sel.to_filter(None if status is Status.all else status.value)
    with reader() as reads:
        entries = reads.dead_letters.find(f, limit)
    if json_out:
        emit_json([entry_json(e) for e in entries])
    elif not entries:
        which = "" if status is Status.all else f"{status.value} "
        out.print(f"[dim]no {which}dead letters match[/]")
    else:
        out.print(entries_view(entries, out.width, with_status=status is not Status.open))
        if len(entries) == limit:
            err.print(f"[dim]showing the {limit} most recent; --limit for more[/]")


# --- show --------------------------------------------------------------------------------


@app.command("show")
def dlq_show(
    entry_id: Annotated[str, typer.Argument(help="The entry id.")],
    json_out: JsonOpt = False,
) -> None:
    """Everything about one dead letter: run, step, versions, message, error, attempts."""
    with reader() as reads:
        entry = reads.dead_letter(entry_id.strip())
        run = _run_state(reads.store, entry.get("run_id"))
    if json_out:
        emit_json({**entry_json(entry, full=True), "run": run})
    else:
        out.print(entry_details(entry, run))


def _run_state(store: RunStore, run_id: str | None) -> dict[str, Any] | None:
    if not run_id:
        return None
    try:
        run = store.get_run(run_id)
    except AgentRuntimeError:
        return {"runId": run_id, "exists": False}
    return {
        "runId": run_id,
        "exists": True,
        "status": run["status"],
        "stopReason": run["stop_reason"],
        "nextStep": run["next_step"],
    }


# --- retry -------------------------------------------------------------------------------


@app.command("retry")
def dlq_retry(
    ids: IdsArg = None,
    queue: QueueOpt = None,
    tenant: TenantOpt = None,
    run: RunOpt = None,
    route: RouteOpt = None,
    dl_class: ClassOpt = None,
    error_type: ErrorTypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            parser=parse_rate,
            metavar="N/s",
            help="Send bulk retries at most this fast, 1/h to 10000/s "
            "(default dead_letters.retry_rate_per_s).",
        ),
    ] = None,
    limit: BulkLimitOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Retry dead letters: each run resumes at the step it stopped at.

    Side effects the step already recorded are not repeated (idempotency records); budget
    and policy are checked again. Poison messages name no step and are skipped (purge
    them). Needs ids or a filter, or --all."""
    sel = _selection(ids, queue, tenant, route, dl_class, error_type, since, until, run)
    _require_scope(sel, all_, "retry")
    # named ids are matched in any status, so a retried or purged one is reported, not lost
    f = sel.to_filter(None if sel.ids else "open")
    with service() as svc:
        named = _check_ids(svc, sel.ids)
        entries = {e["id"]: e for e in svc.dead_letters.find(f, limit)} | named
        outcome = svc.dead_letters.retry(
            f, actor or default_actor(), dry_run=dry_run, rate_per_s=rate, limit=limit
        )
        used_rate = rate or svc.config.dead_letters.retry_rate_per_s
    if json_out:
        emit_json(
            {
                "matched": outcome.matched,
                "retried": outcome.retried,
                "skipped": outcome.skipped,
                "dryRun": outcome.dry_run,
                "ratePerS": used_rate,
            }
        )
        return
    if outcome.matched == 0:
        out.print("[dim]no open dead letters match; nothing retried[/]")
        return
    n = len(outcome.retried)
    if dry_run:
        head = f"dry run, nothing changed: would retry {n} of {outcome.matched} matching"
    else:
        head = f"retried {n} of {outcome.matched} matching"
    head += f" dead letter{'' if outcome.matched == 1 else 's'}"
    if n > 1:
        head += f", at most {used_rate:g}/s (about {(n - 1) / used_rate:.1f}s in all)"
    out.print(Text(head, style="bold"))
    verb = "would resume" if dry_run else "resumes"
    for text in _listed(outcome.retried, lambda i: _retried_line(entries.get(i), i, verb)):
        out.print(text, soft_wrap=True)
    if outcome.skipped:
        out.print(Text(f"skipped {len(outcome.skipped)}:", style="bold yellow"))
        for text in _listed(
            list(outcome.skipped),
            lambda i: _reason_line(entries.get(i), i, outcome.skipped[i]),
        ):
            out.print(text, soft_wrap=True)


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


# --- purge -------------------------------------------------------------------------------


@app.command("purge")
def dlq_purge(
    ids: IdsArg = None,
    queue: QueueOpt = None,
    tenant: TenantOpt = None,
    run: RunOpt = None,
    route: RouteOpt = None,
    dl_class: ClassOpt = None,
    error_type: ErrorTypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    limit: BulkLimitOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Purge dead letters: mark open entries purged, in the audit log.

    Purged entries are kept until dead_letters.retention_days, then deleted. Asks for
    confirmation unless --yes; without a terminal, --yes is required. Needs ids or a
    filter, or --all."""
    sel = _selection(ids, queue, tenant, route, dl_class, error_type, since, until, run)
    _require_scope(sel, all_, "purge")
    f = sel.to_filter(None if sel.ids else "open")
    who = actor or default_actor()
    with service() as svc:
        named = _check_ids(svc, sel.ids)
        started = datetime.now(UTC)
        preview = svc.dead_letters.purge(f, who, dry_run=True, limit=limit)
        not_open = {i: f"entry is {e['status']}" for i, e in named.items() if e["status"] != "open"}
        entries = {e["id"]: e for e in svc.dead_letters.find(f, limit)} | named
        if dry_run or not preview.purged:
            _purge_report(preview.purged, preview.matched, not_open, entries, dry_run, json_out)
            return
        n = len(preview.purged)
        if not yes:
            if not common.interactive():
                fail(
                    f"refusing to purge {n} dead letter{'s' if n != 1 else ''} without "
                    "confirmation: stdin is not a terminal; pass --yes (or --dry-run to look)",
                    EXIT_REFUSED,
                )
            for text in _listed(preview.purged, lambda i: _entry_line(entries.get(i), i)):
                err.print(text, soft_wrap=True)
            if not typer.confirm(
                f"Purge {n} open dead letter{'s' if n != 1 else ''}?", default=False, err=True
            ):
                err.print("nothing purged")
                raise typer.Exit(EXIT_ERROR)
        # purge what was counted (and shown), not what matches by now
        pinned, pinned_limit = _pinned(f, preview.purged, started)
        outcome = svc.dead_letters.purge(pinned, who, limit=pinned_limit)
    if len(outcome.purged) != n and not json_out:
        err.print(
            f"[yellow]{n - len(outcome.purged)} of the {n} entries were resolved meanwhile[/]"
        )
    _purge_report(outcome.purged, preview.matched, not_open, entries, False, json_out)


def _pinned(
    f: DeadLetterFilter, ids: list[str], started: datetime
) -> tuple[DeadLetterFilter, int | None]:
    """The filter (and limit) for exactly the entries a purge preview counted: their ids,
    or for a long list (an IN clause of that size is not portable) the same filter up to
    the preview's time. Entries land with ``last_failed_at`` = now and never change, so
    that set can only shrink; the limit keeps it to the preview's count."""
    if len(ids) <= PIN_IDS_MAX:
        return dataclasses.replace(f, ids=tuple(ids), status="open"), None
    until = started if f.until is None else min(f.until, started)
    return dataclasses.replace(f, until=until, status="open"), len(ids)


def _purge_report(
    purged: list[str],
    matched: int,
    not_open: dict[str, str],
    entries: dict[str, dict[str, Any]],
    dry_run: bool,
    json_out: bool,
) -> None:
    if json_out:
        emit_json({"matched": matched, "purged": purged, "skipped": not_open, "dryRun": dry_run})
        return
    if not purged and not not_open:
        out.print("[dim]no open dead letters match; nothing purged[/]")
        return
    n = len(purged)
    head = (
        f"dry run, nothing changed: would purge {n} of {matched} matching"
        if dry_run
        else f"purged {n} of {matched} matching"
    ) + f" dead letter{'' if matched == 1 else 's'}"
    out.print(Text(head, style="bold"))
    for text in _listed(purged, lambda i: _entry_line(entries.get(i), i)):
        out.print(text, soft_wrap=True)
    if not_open:
        out.print(Text(f"skipped {len(not_open)}:", style="bold yellow"))
        for text in _listed(list(not_open), lambda i: _reason_line(entries.get(i), i, not_open[i])):
            out.print(text, soft_wrap=True)


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


@app.command("stats")
def dlq_stats(json_out: JsonOpt = False) -> None:
    """Open dead letters per queue and class, and the Redis counters for alerting.

    Flower cannot show a queue no worker consumes: this (or the counter
    `<namespace>:dlq:<queue>:open`, or XLEN of the stream `<namespace>:dlq:<queue>`) is
    the dead-letter depth. The counts come from SQL; the counters are read when a Redis
    is running (this never starts one)."""
    with reader() as reads:
        rows = sorted(reads.dead_letters.stats(), key=lambda r: (r["queue"], r["class"]))
        queues = sorted({r["queue"] for r in rows} | {STEP_QUEUE})
        counters = reads.counters(queues)
    total = sum(int(r["open"]) for r in rows)
    if json_out:
        emit_json(
            {
                "open": total,
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
        )
        return
    out.print(stats_view(rows, counters))


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


@app.command("audit")
def dlq_audit(
    limit: ListLimitOpt = 50,
    json_out: JsonOpt = False,
) -> None:
    """The operator audit log, newest first: who did what, when, to how many."""
    with reader() as reads:
        rows = reads.dead_letters.audit_log(limit)
    if json_out:
        emit_json([audit_json(r) for r in rows])
    elif not rows:
        out.print("[dim]the audit log is empty[/]")
    else:
        out.print(audit_table(rows))


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
            _when(r["at"]),
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


# --- rendering entries -------------------------------------------------------------------


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
        status.append(f" by {line(entry['resolved_by'])} at {_when(entry['resolved_at'])}", "")
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
    return f"{_when(value)} ({render.age(value)} ago)"


def _age_when(value: datetime) -> str:
    """The age first: in a narrow table the time is what gets cut."""
    return f"{render.age(value)} ago · {_when(value)}"


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
            cell(_when(a.get("at"))),
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


def _when(value: Any) -> str:
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
