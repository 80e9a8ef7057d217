"""``agentrt dlq``: dead letters for an operator - list, show, retry, purge, stats, audit.

A thin layer over :class:`runtime.dead_letters.DeadLetters` (``svc.dead_letters``): it
parses filters, refuses bulk operations nobody asked for (no id and no filter needs
``--all``), asks before purging, and prints what ``runtime.cli.dlq_views`` builds for
people (Rich) or scripts (``--json``). Exit codes as for the rest of ``agentrt``: 1 error
(unknown id, unreachable Redis/database), 2 bad arguments or a refused operation.

The plumbing (service construction, error rendering, JSON output, the default actor) is
``runtime.cli.common``; option values are parsed by ``runtime.cli.params``.
``list``, ``show``, ``stats`` and ``audit`` read SQL only (``runtime.cli.reads``); ``retry``
and ``purge`` build the whole service.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runtime.cli import common, params
from runtime.cli import dlq_views as views
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
from runtime.errors import AgentRuntimeError
from tasks.messages import STEP_QUEUE

if TYPE_CHECKING:
    from runtime.service import RuntimeService
    from runtime.store.dead_letters import DeadLetterFilter
    from runtime.store.runs import RunStore

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
                f"--since ({views.when(self.since)}) must be before "
                f"--until ({views.when(self.until)})",
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
        emit_json([views.entry_json(e) for e in entries])
    elif not entries:
        which = "" if status is Status.all else f"{status.value} "
        out.print(f"[dim]no {which}dead letters match[/]")
    else:
        out.print(views.entries_view(entries, out.width, with_status=status is not Status.open))
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
        emit_json({**views.entry_json(entry, full=True), "run": run})
    else:
        out.print(views.entry_details(entry, run))


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
        emit_json(views.retry_json(outcome, used_rate))
    elif outcome.matched == 0:
        out.print("[dim]no open dead letters match; nothing retried[/]")
    else:
        _print(views.retry_report(outcome, entries, used_rate))


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
            for text in views.entry_lines(preview.purged, entries):
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
    if json_out:
        emit_json(views.stats_json(rows, counters))
    else:
        out.print(views.stats_view(rows, counters))


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
        emit_json([views.audit_json(r) for r in rows])
    elif not rows:
        out.print("[dim]the audit log is empty[/]")
    else:
        out.print(views.audit_table(rows))


# --- rendering entries -------------------------------------------------------------------


# --- times -------------------------------------------------------------------------------


def _purge_report(
    purged: list[str],
    matched: int,
    not_open: dict[str, str],
    entries: dict[str, dict[str, Any]],
    dry_run: bool,
    json_out: bool,
) -> None:
    if json_out:
        emit_json(views.purge_json(purged, matched, not_open, dry_run))
    elif not purged and not not_open:
        out.print("[dim]no open dead letters match; nothing purged[/]")
    else:
        _print(views.purge_report(purged, matched, not_open, entries, dry_run))


def _print(lines: views.Lines) -> None:
    for text, soft_wrap in lines:
        out.print(text, soft_wrap=soft_wrap)
