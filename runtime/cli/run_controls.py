"""``agentrt runs cancel|pause|resume``: an operator stops, pauses or resumes runs.

``cancel`` takes one run id, or a filter (``--tenant``, ``--route``, ``--status``,
``--older-than``) for many: ``--dry-run`` prints how many match and changes nothing;
otherwise it asks for confirmation unless ``--yes`` (required without a terminal).
The service is imported when a command runs: ``runs list`` stays light.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

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
    service,
)
from runtime.errors import InvalidTransition

if TYPE_CHECKING:
    from runtime.cancellation import BulkCancel


class Mode(enum.StrEnum):
    immediate = "immediate"
    drain = "drain"


class BulkStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    waiting = "waiting"
    cancel_requested = "cancel_requested"


ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who acts (default $AGENTRT_ACTOR or cli:$USER).")
]
TenantOpt = Annotated[
    str | None,
    typer.Option(
        "--tenant", help="With RUN_ID: find the run within this tenant only; else a filter."
    ),
]


def _past(value: str) -> datetime:
    """``--older-than``: a duration back from now, or a time that is not in the future
    (one in the future would match every run)."""
    when = params.parse_when(value)
    if when > datetime.now(UTC):
        raise typer.BadParameter(f"{params.shown(value)} is in the future")
    return when


def runs_cancel(
    run_id: Annotated[
        str | None, typer.Argument(help="The run id (leave out to cancel by filter).")
    ] = None,
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode",
            help="immediate: the step in flight stops at its next boundary and no side "
            "effect commits after the cancel; drain: it finishes, nothing new starts.",
        ),
    ] = Mode.immediate,
    compensate: Annotated[
        bool,
        typer.Option("--compensate", help="Undo the run's succeeded side effects, newest first."),
    ] = False,
    actor: ActorOpt = None,
    tenant: TenantOpt = None,
    route: Annotated[str | None, typer.Option("--route", help="Filter: this route.")] = None,
    status: Annotated[
        BulkStatus | None,
        typer.Option(
            "--status", help="Filter: runs in this status (default queued, running, waiting)."
        ),
    ] = None,
    older_than: Annotated[
        datetime | None,
        typer.Option(
            "--older-than",
            parser=_past,
            metavar="AGE",
            help="Filter: created before AGE ago (30m, 2h, 7d) or before an ISO-8601 time.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Filter: count what matches; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    limit: Annotated[
        int,
        typer.Option("--limit", min=1, max=params.MAX_BULK, help="Filter: at most this many."),
    ] = 1000,
    json_out: JsonOpt = False,
) -> None:
    """Cancel a run, or every unfinished run a filter matches.

    A waiting run, or one with no step in flight, ends cancelled at once; otherwise it is
    cancel_requested until its step in flight ends it (immediate: at the step's next
    boundary, no side effect committing after the cancel; drain: once it finished)."""
    who = actor or default_actor()
    filtering = route is not None or status is not None or older_than is not None
    if run_id is not None:
        if filtering or dry_run:
            fail(
                "--route, --status, --older-than and --dry-run select runs; not with RUN_ID",
                EXIT_REFUSED,
            )
        _cancel_one(run_id, who, mode, compensate, tenant, json_out)
        return
    if not filtering and tenant is None:
        fail("give a RUN_ID, or a filter (--tenant, --route, --status, --older-than)", EXIT_REFUSED)
    _cancel_many(
        who, mode, compensate, tenant, route, status, older_than, dry_run, yes, limit, json_out
    )


def _cancel_one(
    run_id: str, actor: str, mode: Mode, compensate: bool, tenant: str | None, json_out: bool
) -> None:
    with service() as svc:
        try:
            view = svc.cancel(run_id, actor, tenant, mode=mode.value, compensate=compensate)
        except InvalidTransition as exc:
            fail(f"run {run_id} is {exc.from_status}; only unfinished runs can be cancelled")
    if json_out:
        emit_json(render.run_json(view))
    else:
        out.print(render.cancelled_line(view))


def _cancel_many(
    actor: str,
    mode: Mode,
    compensate: bool,
    tenant: str | None,
    route: str | None,
    status: BulkStatus | None,
    older_than: datetime | None,
    dry_run: bool,
    yes: bool,
    limit: int,
    json_out: bool,
) -> None:
    from runtime.cancellation import CancelFilter

    age = None
    if older_than is not None:
        age = max((datetime.now(UTC) - older_than).total_seconds(), 0.0)
    chosen = CancelFilter(tenant, route, status.value if status else None, age)
    with service() as svc:
        preview = svc.cancel_many(
            chosen, actor, mode=mode.value, compensate=compensate, dry_run=True, limit=limit
        )
        if dry_run or not preview.cancelled:
            _report(preview, json_out)
            return
        n = len(preview.cancelled)
        if not yes:
            if not common.interactive():
                fail(
                    f"refusing to cancel {n} run{'s' if n != 1 else ''} without confirmation: "
                    "stdin is not a terminal; pass --yes (or --dry-run to count)",
                    EXIT_REFUSED,
                )
            if not typer.confirm(
                f"Cancel {n} run{'s' if n != 1 else ''} ({mode.value})?", default=False, err=True
            ):
                err.print("nothing cancelled")
                raise typer.Exit(EXIT_ERROR)
        report = svc.cancel_many(chosen, actor, mode=mode.value, compensate=compensate, limit=limit)
    _report(report, json_out)


def _report(report: BulkCancel, json_out: bool) -> None:
    if json_out:
        emit_json(report.as_dict())
        return
    verb = "would cancel" if report.dry_run else "cancelled"
    line = f"{report.matched} run{'s' if report.matched != 1 else ''} match; {verb} "
    line += f"{len(report.cancelled)}"
    if report.skipped:
        line += f"; {len(report.skipped)} finished meanwhile"
    out.print(render.markup(line))
    for run_id in report.cancelled[:20]:
        out.print(f"  {render.markup(run_id)}")
    if len(report.cancelled) > 20:
        out.print(f"  [dim]... and {len(report.cancelled) - 20} more (--json lists all)[/]")


def runs_pause(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    actor: ActorOpt = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only find the run within this tenant.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Pause a queued or running run: its current step finishes, then it waits holding no
    slot until `agentrt runs resume`."""
    with service() as svc:
        try:
            view = svc.pause(run_id, actor or default_actor(), tenant)
        except InvalidTransition as exc:
            fail(f"run {run_id} is {exc.from_status}; only queued or running runs can be paused")
    _show(view, json_out)


def runs_resume(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    actor: ActorOpt = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only find the run within this tenant.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Resume a paused run: its next step goes back into its tenant's queue."""
    with service() as svc:
        try:
            view = svc.resume(run_id, actor or default_actor(), tenant)
        except InvalidTransition as exc:
            fail(f"run {run_id} is {exc.from_status}; only a paused run can be resumed")
    _show(view, json_out)


def _show(view: Any, json_out: bool) -> None:
    if json_out:
        emit_json(render.run_json(view))
    else:
        out.print(render.control_line(view))
