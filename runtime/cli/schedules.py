"""``agentrt schedules`` (list, fire) and ``agentrt beat``: the deployment's scheduled runs.

``list`` reads the deployment file and SQL only (the run of each schedule's latest due
time is one unique-index lookup); ``fire`` builds the whole runtime and submits as beat
does, with the same request id, so a time beat fired already returns beat's run. ``beat``
execs ``celery -A tasks.app beat`` (``tasks.schedules``). Exit codes as for the rest of
``agentrt``: 1 an error (bad config), 2 a refused request (an unknown or disabled
schedule, a time still to come).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from runtime.cli import render
from runtime.cli.common import (
    EXIT_REFUSED,
    JsonOpt,
    emit_json,
    err,
    errors,
    fail,
    load_config,
    load_registry,
    load_settings,
    out,
    reader,
    service,
)

if TYPE_CHECKING:
    from runtime.schedules import Firing, ScheduleStatus

app = typer.Typer(
    help=(
        "Scheduled runs (the deployment file's schedules:, fired by agentrt beat).\n\n"
        "Each firing submits one run with request id schedule:<name>@<time>: firing the "
        "same time again, from any process, returns that run."
    ),
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The schedule's name (agentrt schedules list).")]


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Every schedule: cron, next fire time, the run of its latest due time."""
    from runtime.schedules import statuses

    settings = load_settings()
    with errors():
        config = load_config(settings.config)
    with reader() as reads:

        def find(tenant: str, request_id: str) -> dict[str, object] | None:
            held = reads.store.find_admitted(tenant, request_id, None)
            return held[0] if held else None

        found = statuses(config.schedules, find, datetime.now(UTC))
    if json_out:
        emit_json([s.as_dict() for s in found])
    elif not found:
        out.print("[dim]no schedules in the deployment file[/]")
    else:
        out.print(_table(found))


def _table(found: list[ScheduleStatus]) -> render.FitTable:
    table = render.FitTable(show_edge=False, pad_edge=False)
    for header in ("name", "cron", "tenant / route", "next fire", "last fire", "last run"):
        render.text_column(table, header)
    for s in found:
        last = "-" if s.last_run_id is None else f"{s.last_run_id} ({s.last_status})"
        table.add_row(
            render.markup(s.name) + ("" if s.enabled else " [dim](disabled)[/]"),
            render.markup(f"{s.cron} {s.timezone}"),
            render.markup(f"{s.tenant} / {s.route}"),
            _when(s.next_fire) if s.enabled else "-",
            _when(s.last_fire),
            render.markup(last),
        )
    return table


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--at {value!r} is not an ISO 8601 time (e.g. 2026-01-01T09:00:00Z)", EXIT_REFUSED)
    if at.tzinfo is None:
        fail(f"--at {value!r} needs a time zone (e.g. 2026-01-01T09:00:00Z)", EXIT_REFUSED)
    return at


@app.command("fire")
def fire(
    name: NameArg,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="ISO",
            help="Fire the latest time of the schedule not after this one (default: now), "
            "e.g. 2026-01-01T09:00:00Z. A time beat fired already returns its run.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fire a schedule now, as beat would (same request id: never a second run)."""
    from runtime.schedules import ScheduleFirer

    when = _parse_at(at)
    with service() as svc:
        firing = ScheduleFirer(schedules=svc.config.schedules, submit=svc.submit).fire_at(
            name, when
        )
    _report(firing, json_out)


def _report(firing: Firing, json_out: bool) -> None:
    if json_out:
        emit_json(firing.as_dict())
        return
    out.print(
        f"schedule {render.markup(firing.schedule)} @ {_when(firing.fire_time)}: run "
        f"{render.markup(firing.run_id)} ({render.markup(firing.status)}), request id "
        f"{render.markup(firing.request_id)}"
    )


def beat_argv(loglevel: str) -> list[str]:
    """``celery beat`` for the deployment's schedules, run by this Python."""
    return [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "-l", loglevel]


def beat(
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
) -> None:
    """Run Celery beat for the deployment file's schedules.

    Execs `celery -A tasks.app beat`: one entry per enabled schedule, sending
    agentrt.fire_schedule at each cron time; workers fire it (one run per schedule and
    time, however many beats send it). At start it fires the latest time missed while no
    beat ran, if within the schedule's misfire_grace_s. Restart it after a config change."""
    settings = load_settings()
    with errors():
        config = load_config(settings.config)
        load_registry(config, str(settings.config))
    enabled = sorted(n for n, s in config.schedules.items() if s.enabled)
    err.print(f"[dim]namespace {settings.namespace} · schedules: {', '.join(enabled) or 'none'}[/]")
    _exec(beat_argv(loglevel))


def _exec(argv: list[str]) -> NoReturn:
    # signals (Ctrl-C, a supervisor's SIGTERM) reach beat itself
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
