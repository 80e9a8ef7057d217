"""``agentrt``: submit and inspect runs, start workers and Flower, check config, run the demo.

Rich output for people, ``--json`` for scripts. Exit codes: 0 ok; 1 error (bad config,
unknown run, unreachable Redis/database, demo failure); 2 refused at admission or bad
arguments (e.g. ``--input`` that is not a JSON object); 3 ``--wait`` timed out.
Settings come from ``AGENTRT_*`` variables, as for workers and web apps.

Every error is one line on stderr. ``main`` is the last resort: an exception nobody
expected becomes ``error: internal error (<type>): <message>`` with the traceback in
``<AGENTRT_HOME>/cli-errors.log`` (``AGENTRT_DEBUG=1`` prints it).

Read-only commands (``runs list/show``, ``trace``, ``dlq list/show/stats/audit``) read SQL
only (``runtime.cli.reads``); what ``runs list/show`` and ``trace`` show people is read on
the DB-API driver, without SQLAlchemy, pydantic or the settings class. What only other
commands need - the service with its Redis, the scheduler, Celery, model clients, the
settings - is imported when such a command runs: this module and what it imports at its top
stay light (a test checks which modules ``runs list`` loads).
"""

from __future__ import annotations

import enum
import os
import re
import signal
import sys
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from runtime import locations, stop_reasons
from runtime.bounds import BoundsError, parse_json
from runtime.cli import config_views, params, render, run_controls
from runtime.cli.approvals import app as approvals_app
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    JsonOpt,
    build_service,
    cwd_on_path,
    default_actor,
    emit_json,
    err,
    errors,
    fail,
    interactive,
    load_config,
    load_registry,
    load_settings,
    min_visibility_timeout,
    out,
    people_reader,
    reader,
    redis_url,
    service,
)
from runtime.cli.db import app as db_app
from runtime.cli.dlq import app as dlq_app
from runtime.cli.docs import app as docs_app
from runtime.cli.evals import app as evals_app
from runtime.cli.evals import policy_app
from runtime.cli.keys import app as keys_app
from runtime.cli.memory import app as memory_app
from runtime.cli.ops import app as ops_app
from runtime.cli.releases import app as releases_app
from runtime.cli.schedules import app as schedules_app
from runtime.cli.schedules import beat
from runtime.cli.slo import app as slo_app
from runtime.cli.slo import evidence
from runtime.errors import ConfigError
from runtime.proposers.probe import DEFAULT_PROBE_TIMEOUT_S, probe_models
from runtime.statuses import RunStatus

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig
    from runtime.contract import RunView
    from runtime.service import RuntimeService
    from runtime.settings import Settings

app = typer.Typer(
    name="agentrt",
    help="agentrt: a runtime for AI-agent runs. The model proposes, the runtime decides.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    # a traceback's locals may hold inputs and URLs with credentials
    pretty_exceptions_show_locals=False,
)
runs_app = typer.Typer(help="List, inspect, cancel, pause and resume runs.", no_args_is_help=True)
config_app = typer.Typer(help="Work with the deployment file.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(config_app, name="config")
app.add_typer(dlq_app, name="dlq")
app.add_typer(db_app, name="db")
app.add_typer(approvals_app, name="approvals")
app.add_typer(keys_app, name="keys")
app.add_typer(memory_app, name="memory")
app.add_typer(schedules_app, name="schedules")
app.add_typer(evals_app, name="evals")
app.add_typer(policy_app, name="policy")
app.add_typer(releases_app, name="releases")
app.add_typer(ops_app, name="ops")
app.add_typer(docs_app, name="docs")
app.command("beat")(beat)
app.add_typer(slo_app, name="slo")
app.command("evidence")(evidence)

#: ``AGENTRT_DEBUG=1``: an internal error prints its traceback
DEBUG_ENV = "AGENTRT_DEBUG"
#: the largest ``--input`` read (admission then applies the route's ``max_input_bytes``)
MAX_INPUT_BYTES = 16 * 1024 * 1024

WaitSecondsOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        parser=params.seconds(0, params.MAX_WAIT_S),
        metavar="SECONDS",
        help=f"Seconds --wait waits (0 to {params.MAX_WAIT_S}).",
    ),
]
TenantScope = Annotated[
    str | None, typer.Option("--tenant", help="Only find the run within this tenant.")
]


class Priority(enum.StrEnum):
    critical = "critical"
    high = "high"
    normal = "normal"
    low = "low"


class Mode(enum.StrEnum):
    durable_workflow = "durable_workflow"
    async_job = "async_job"
    sync = "sync"
    event_triggered = "event_triggered"


class Pool(enum.StrEnum):
    # no threads, gevent or eventlet: a tool call that outlives its timeout cannot be
    # stopped on them (the worker refuses them too, whoever starts it)
    prefork = "prefork"
    solo = "solo"


# --- input ---------------------------------------------------------------------------------


def parse_input(raw: str | None) -> dict[str, Any]:
    """``--input``: a JSON object given inline, as ``@path``, or ``@-`` for stdin.

    Bounded like any input that crosses the boundary (``runtime.bounds``): size, nesting
    depth, no NaN; a problem is one line naming where it is, exit 2."""
    if raw is None:
        return {}
    flag, data = "--input", raw.encode("utf-8", "surrogateescape")
    if raw.startswith("@"):
        path = raw[1:]
        flag = f"--input {raw}"
        try:
            if path == "-":
                data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
            else:
                with open(path, "rb") as f:
                    data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            fail(f"--input: cannot read {path}: {exc.strerror}", EXIT_REFUSED)
    if len(data) > MAX_INPUT_BYTES:  # before decoding: the cut may split a character
        fail(
            f"{flag} is over {MAX_INPUT_BYTES} bytes; at most {MAX_INPUT_BYTES} accepted",
            EXIT_REFUSED,
        )
    try:
        text = data.decode("utf-8")
        value = parse_json(text, label="input", max_bytes=MAX_INPUT_BYTES)
    except UnicodeDecodeError as exc:
        fail(f"{flag} is not UTF-8 text (byte {exc.start})", EXIT_REFUSED)
    except BoundsError as exc:
        fail(_bounds_message(flag, exc), EXIT_REFUSED)
    if not isinstance(value, dict):
        fail(f"{flag} must be a JSON object, got {type(value).__name__}", EXIT_REFUSED)
    return value


def _bounds_message(flag: str, exc: BoundsError) -> str:
    """``--input is nested deeper than 32 levels``, ``--input: input.a[3]: integer outside
    64 bits``: one line, the path cut short (it can be as deep as the limit)."""
    whole = exc.path in ("", "input")
    if exc.code in ("too_deep", "too_large") or (whole and exc.detail.startswith("not valid")):
        return f"{flag} is {exc.detail}"
    where = exc.path if len(exc.path) <= 60 else exc.path[:57] + "..."
    return f"{flag}: {exc.detail}" if whole else f"{flag}: {where}: {exc.detail}"


# --- submit ----------------------------------------------------------------------------


@app.command()
def submit(
    tenant: Annotated[str, typer.Option(help="Tenant id, e.g. acme.")],
    route: Annotated[str, typer.Option(help="Route name, e.g. support.triage.")],
    goal: Annotated[str, typer.Option(help="What the run should achieve.")],
    input: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Run input: a JSON object, @file, or @- for stdin."),
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Who asks (default cli:$USER).")] = None,
    request_id: Annotated[
        str | None, typer.Option(help="A repeated request id returns the same run.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="A repeated key returns the same run.")
    ] = None,
    priority: Annotated[
        Priority | None, typer.Option(help="Override the route's priority.")
    ] = None,
    execution_mode: Annotated[
        Mode | None,
        typer.Option(
            "--execution-mode",
            help="Ask for one of the route's execution_modes_allowed instead of its "
            "execution_mode (refused: execution_mode_not_allowed). A sync run's steps run "
            "in this command, up to the route's sync_timeout_s; the rest on workers.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the run ends or waits for a human.")
    ] = False,
    timeout: WaitSecondsOpt = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Submit a run (optionally wait for its outcome).

    Exit 2 if admission refuses it (the reason code is printed), 3 if --wait times out.
    A run that fails or is denied later still exits 0: read its status and stop reason."""
    run_input = parse_input(input)
    with service() as svc:
        view = svc.submit(
            tenant,
            route,
            goal,
            run_input,
            actor=actor or default_actor(),
            request_id=request_id,
            idempotency_key=idempotency_key,
            priority=priority.value if priority else None,
            execution_mode=execution_mode.value if execution_mode else None,
        )
        if _refused_at_admission(view):
            _report_refusal(view, json_out)
        if not json_out:
            out.print(render.submitted_line(view), soft_wrap=True)
        if wait:
            view = _wait(svc, view, timeout, json_out)
        if json_out:
            emit_json(render.run_json(view))
        elif wait:
            for text in render.outcome_lines(view):
                out.print(text)


def _refused_at_admission(view: RunView) -> bool:
    return stop_reasons.kind_of(view.stop_reason or "") == "refused"


def _report_refusal(view: RunView, json_out: bool) -> NoReturn:
    if json_out:
        emit_json(render.run_json(view))
    err.print(render.refused_line(view), soft_wrap=True)
    raise typer.Exit(EXIT_REFUSED)


def _wait(svc: RuntimeService, view: RunView, timeout: float, json_out: bool) -> RunView:
    from runtime.errors import WaitTimeout

    try:
        if json_out:
            return svc.wait(view.run_id, timeout)
        with err.status(f"waiting for run {view.run_id} (up to {timeout:g}s)"):
            return svc.wait(view.run_id, timeout)
    except WaitTimeout as exc:
        if json_out:
            emit_json(render.run_json(svc.get(view.run_id)))
        err.print(render.wait_timeout_line(exc), soft_wrap=True)
        raise typer.Exit(EXIT_TIMEOUT) from None


# --- runs ------------------------------------------------------------------------------


@runs_app.command("list")
def runs_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    status: Annotated[RunStatus | None, typer.Option(help="Only runs in this status.")] = None,
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many, newest first.", min=1, max=params.MAX_LIST)
    ] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List runs, newest first (reads SQL only)."""
    wanted = status.value if status else None
    if json_out:
        with reader() as reads:
            views = reads.runs(tenant, wanted, route, limit, with_input=True)
        emit_json([render.run_json(v) for v in views])
        return
    with people_reader() as people:
        runs = people.runs(tenant, wanted, route, limit)
    if not runs:
        out.print("[dim]no runs match[/]")
    else:
        out.print(render.runs_view(runs, out.width))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    tenant: TenantScope = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a run: contract, steps, decisions, side effects, spend.

    The whole RuntimeRun contract (camelCase with --json), a summary of every step, the
    stored policy decisions and side-effect records, and the settled spend."""
    if json_out:
        with reader() as reads:
            shown = reads.details(run_id, tenant, with_input=True)
        emit_json(
            render.details_json(shown.run, shown.steps, shown.spend, shown.effects, shown.decisions)
        )
        return
    with people_reader() as people:
        details = people.details(run_id, tenant)
    out.print(
        render.run_details(
            details.run, details.steps, details.spend, details.effects, details.decisions
        )
    )


runs_app.command("cancel")(run_controls.runs_cancel)
runs_app.command("pause")(run_controls.runs_pause)
runs_app.command("resume")(run_controls.runs_resume)


@app.command()
def trace(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    tenant: TenantScope = None,
    json_out: JsonOpt = False,
) -> None:
    """A run's timeline, event by event.

    Admission, proposals, validation, policy decisions, budget reserve/settle, locks,
    tool calls, checkpoints and the stop, each with the time since the first event."""
    if json_out:
        with reader() as reads:
            emit_json(render.trace_json(reads.trace(run_id, tenant)))
        return
    with people_reader() as people:
        view = people.run(run_id, tenant)
        events = people.trace(run_id, tenant)
    out.print(render.trace_head(view), soft_wrap=True)
    for line in render.trace_lines(events):
        out.print(line, soft_wrap=True)


# --- queues --------------------------------------------------------------------------


@app.command()
def queues(
    tenant: Annotated[
        str | None,
        typer.Option(help="Only this tenant's queues and leases (routes and limits are shared)."),
    ] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many leases listed.", min=0, max=params.MAX_LIST)
    ] = 20,
    json_out: JsonOpt = False,
) -> None:
    """The scheduler, as the dispatcher sees it.

    Live worker capacity; queued steps per tenant and priority (ready and delayed);
    in-flight steps per route against its concurrency limit and per tenant against its
    cap; parked tenants; slot leases (soonest expiry first); tool bulkheads; and every
    rate limiter (how far its schedule runs ahead, whether it throttles). Read-only: only
    Redis is read, in two round trips."""
    import redis

    from runtime.cli import queues as queues_render
    from runtime.keys import Keys
    from runtime.scheduling import view as scheduler_view

    settings = load_settings()
    with errors():
        config = load_config(settings.config)
        client = redis.Redis.from_url(redis_url(settings))
    try:
        with errors():
            view = scheduler_view.read(client, Keys(settings.namespace), config, tenant, limit)
    finally:
        client.close()
    if tenant is not None and tenant not in config.tenants:
        row = view.tenants[0]
        if not (row.queued or row.in_flight or row.parked):  # a typo, not a retired tenant
            fail(f"unknown tenant {params.shown(tenant)} (not in {settings.config})", EXIT_REFUSED)
    if json_out:
        emit_json(queues_render.queues_json(view))
    else:
        out.print(queues_render.queues_view(view))


# --- processes -------------------------------------------------------------------------


@app.command()
def recover(
    inflight_wait: Annotated[
        float | None,
        typer.Option(
            "--inflight-wait",
            parser=params.seconds(0, params.MAX_LONG_WAIT_S),
            metavar="SECONDS",
            help="Seconds to wait for steps in flight when Redis lost its data, 0 to "
            f"{params.MAX_LONG_WAIT_S} (default: the longest step's hard time limit).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the runs that would be queued again.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    actor: Annotated[str | None, typer.Option(help="Who runs it (audit log).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild Redis state from SQL after Redis lost its data.

    Pauses dispatching, re-publishes the scheduling config and the broker queue, waits for
    steps that were in flight, rebuilds every ledger balance from the SQL spend records,
    queues the current step of every queued or running run again, resumes dispatching and
    writes an audit record. Safe to run twice: nothing runs twice (idempotency records)."""
    who = actor or default_actor()
    with service() as svc:
        if not dry_run and not yes:
            if not interactive():
                fail("recover pauses dispatching and rewrites the ledger: pass --yes", EXIT_REFUSED)
            typer.confirm("Rebuild the runtime's Redis state from SQL now?", abort=True)
        report = svc.recovery.recover(who, inflight_wait_s=inflight_wait, dry_run=dry_run)
        workers = 0 if dry_run else svc.scheduler.capacity()
    if not dry_run and workers == 0:
        err.print(
            "[yellow bold]warning:[/] no worker is alive to take the runs queued again: "
            "start one (agentrt worker); nothing runs until a worker does"
        )
    if json_out:
        emit_json({**report.as_dict(), "runs": report.runs, "live_worker_processes": workers})
        return
    verb = "would queue again" if dry_run else "queued again"
    out.print(f"runs {verb}: {report.runs_requeued}")
    if not dry_run:
        out.print(
            f"ledger scopes rebuilt: {report.ledger_scopes} (open holds kept: "
            f"{report.open_holds}; waited {report.waited_s:.0f}s for steps in flight)"
        )


def _preflight(settings: Settings) -> RuntimeConfig:
    """Fail here, in one clean message, on what would make Celery print a traceback."""
    with errors():
        config = load_config(settings.config)
        load_registry(config, str(settings.config))
        needed = min_visibility_timeout(config)
    if settings.visibility_timeout_s <= needed:
        fail(
            f"AGENTRT_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} must exceed "
            f"{needed:g}s (the longest step plus margins) for {settings.config}"
        )
    return config


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Become the process: signals (Ctrl-C, SIGTERM from a supervisor) reach Celery itself.
    Its command line is ``argv``: nothing secret goes there (``env`` is for that)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, os.environ if env is None else env)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=params.MAX_CONCURRENCY,
            help="Pool processes (default: CPUs).",
        ),
    ] = None,
    pool: Annotated[Pool, typer.Option("--pool", "-P", help="Worker pool.")] = Pool.prefork,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Node name (default <ns>-<pid>@%h).")
    ] = None,
    apply_config: Annotated[
        bool,
        typer.Option(
            "--apply-config",
            help="Make this worker's deployment file the one the whole deployment enforces "
            "(as agentrt config apply does). Without it, a worker whose file differs from "
            "the applied config refuses to start.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus metrics at http://<metrics-host>:N/metrics from the "
            "worker's main process (off by default; AGENTRT_METRICS_PORT).",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host",
            help="Address the metrics port listens on (default 127.0.0.1; AGENTRT_METRICS_HOST).",
        ),
    ] = None,
    nice: Annotated[
        int,
        typer.Option(
            "--nice",
            min=0,
            max=19,
            help="Lower the worker's CPU priority by N (as nice(1); its pool processes "
            "inherit it). On a host the API server shares, 10 keeps submits fast under load: "
            "the worker still takes every cycle the API leaves idle.",
        ),
    ] = 0,
) -> None:
    """Run a Celery worker for the step queue.

    Execs `celery -A tasks.app worker` in these settings, so signals reach Celery
    directly; arguments after `--` go to Celery. The first worker of a deployment applies
    its file; later workers must have the same config (or --apply-config)."""
    if metrics_host is not None and not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]{1,255}", metrics_host):
        raise typer.BadParameter(
            "an IP address or host name (letters, digits, '.', ':', '-')",
            param_hint="--metrics-host",
        )
    from runtime.demo.workload import worker_argv
    from tasks.app import APPLY_CONFIG_ENV

    settings = load_settings()
    _preflight(settings)
    # the pid survives exec, so node names stay unique across workers on one host
    node = hostname or f"{settings.namespace}-{os.getpid()}@%h"
    argv = [*worker_argv(concurrency, pool.value, loglevel, node), *ctx.args]
    err.print(f"[dim]namespace {settings.namespace} · {' '.join(argv[1:])}[/]")
    env = {k: v for k, v in os.environ.items() if k != APPLY_CONFIG_ENV}
    if apply_config:
        env[APPLY_CONFIG_ENV] = "1"
    # the exec'd worker reads its settings from the environment (tasks.metrics)
    if metrics_port is not None:
        env["AGENTRT_METRICS_PORT"] = str(metrics_port)
    if metrics_host is not None:
        env["AGENTRT_METRICS_HOST"] = metrics_host
    if nice:
        os.nice(nice)  # survives the exec, and Celery's pool processes inherit it
    _exec(argv, env)


#: Flower reads its options from FLOWER_<OPTION> variables: this one keeps the password
#: out of every command line (``ps`` shows those to every user)
FLOWER_AUTH_ENV = "FLOWER_BASIC_AUTH"


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes on the port (each with its own runtime); one uses at "
            "most one core, as Python runs one thread at a time.",
            min=1,
            max=64,
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (FastAPI on uvicorn): runs, events (SSE), approvals, dead letters.

    Authenticate with an API key (agentrt keys create); OpenAPI at /openapi.json; the
    operating dashboard at /dashboard (log in with a key)."""
    from runtime.api.app import serve, serve_processes

    with service() as svc:
        if workers == 1:
            serve(svc, host, port)
        else:
            serve_processes(svc.settings, host, port, workers)


@app.command()
def flower(
    port: Annotated[
        int,
        typer.Option(help="Port Flower listens on.", min=params.MIN_PORT, max=params.MAX_PORT),
    ] = 5555,
    address: Annotated[str, typer.Option(help="Address Flower binds.")] = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(
            "--basic-auth",
            metavar="USER:PASS[,USER2:PASS2]",
            show_default=False,
            help="HTTP basic auth for Flower's UI and API (its /api/* answers 401 without "
            "it). Handed to Flower in its environment, never on its command line; set "
            f"{FLOWER_AUTH_ENV} instead to keep it off this command line too.",
        ),
    ] = None,
) -> None:
    """Start Flower on this deployment's broker.

    Same broker and transport options (the namespace's key prefix) as the workers, which
    send task events unless AGENTRT_TASK_EVENTS is false."""
    from runtime.demo.workload import flower_argv

    env = dict(os.environ)
    if basic_auth is not None:
        env[FLOWER_AUTH_ENV] = basic_auth
    users = _basic_auth_users(env.get(FLOWER_AUTH_ENV))
    settings = load_settings()
    _preflight(settings)
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address
    out.print(f"Flower: [bold]http://{host}:{port}[/] · namespace {settings.namespace}")
    if users:
        out.print(f"basic auth: {render.markup(', '.join(users))}")
    else:
        err.print("[dim]no --basic-auth: Flower's /api/* answers 401 (the web UI is open)[/]")
    if not settings.task_events:
        err.print("[yellow]AGENTRT_TASK_EVENTS is false: workers send no task events[/]")
    _exec(flower_argv(port, address), env)


def _basic_auth_users(value: str | None) -> list[str]:
    """The user names of ``user:pass[,user2:pass2]``; a malformed value exits 2, and the
    message never repeats it (it holds passwords)."""
    if value is None:
        return []
    users = []
    entries = value.split(",")
    for n, entry in enumerate(entries, 1):
        user, colon, password = entry.partition(":")
        if not (colon and user.strip() and password):
            which = f"entry {n} of {len(entries)}" if len(entries) > 1 else "the value"
            fail(
                f"--basic-auth (or {FLOWER_AUTH_ENV}): {which} is not USER:PASS (a user and "
                "a password, both non-empty; entries separated by commas)",
                EXIT_REFUSED,
            )
        users.append(user)
    return users


# --- config ----------------------------------------------------------------------------


@config_app.command("check")
def config_check(
    path: Annotated[
        Path | None,
        typer.Argument(help="The file (default: AGENTRT_CONFIG or config/runtime.yaml)."),
    ] = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also ask each model of kind openai whether its endpoint answers "
            "(GET {base_url}/models); exit 1 if one does not.",
        ),
    ] = False,
    probe_timeout: Annotated[
        float,
        typer.Option(help="Seconds each --probe waits for an answer.", min=0.1, max=60),
    ] = DEFAULT_PROBE_TIMEOUT_S,
    json_out: JsonOpt = False,
) -> None:
    """Validate a deployment file: every check start-up makes.

    Parses the file (no duplicate keys, no aliases, every number bounded), imports its
    tool_modules, checks the tool manifest and every policy rule against the tools they
    register, and the longest step against AGENTRT_VISIBILITY_TIMEOUT_S. Prints every
    problem (each names its key or line) and exits 1 if there is any. With --probe, also
    checks that each OpenAI-compatible model endpoint answers."""
    path = path or Path(locations.setting(os.environ, "config") or locations.DEFAULT_CONFIG)
    try:
        # what Runtime.from_settings and the workers run at start-up
        config = load_config(path)
        with cwd_on_path():
            load_registry(config, str(path))
        if problems := _visibility_problems(config):
            raise ConfigError(str(path), problems)
    except ConfigError as exc:
        if json_out:
            emit_json({"ok": False, "path": str(path), "problems": exc.problems})
        err.print(f"[red bold]invalid config[/] {escape(str(path))}:", soft_wrap=True)
        for problem in exc.problems:
            err.print(f"  - {escape(problem)}", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    probes = probe_models(config, probe_timeout) if probe else None
    answered = probes is None or all(p.ok for p in probes)
    if json_out:
        summary = {"ok": answered, "path": str(path), **config_views.config_summary(config)}
        if probes is not None:
            summary["probes"] = [asdict(p) for p in probes]
        emit_json(summary)
    else:
        out.print(f"[green bold]ok[/] {escape(str(path))}", soft_wrap=True)
        out.print(config_views.config_table(config))
        if probes is not None:
            if not probes:
                out.print(config_views.no_probes_line())
            for p in probes:
                out.print(config_views.probe_line(p), soft_wrap=True)
    if not answered:
        failed = sum(not p.ok for p in probes or ())
        err.print(f"[red bold]{failed} model endpoint(s) did not answer[/]")
        raise typer.Exit(EXIT_ERROR)


@config_app.command("apply")
def config_apply(
    path: Annotated[
        Path | None,
        typer.Argument(help="The file (default: AGENTRT_CONFIG or config/runtime.yaml)."),
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Who applies it (audit).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a deployment file the one every process enforces.

    Runs every check `config check` runs, records the file in SQL (with its version and
    digest) and publishes its limits to Redis. Running workers switch to it at their next
    step; a worker started later with another file refuses to start (unless
    --apply-config); web apps and CLI commands with another file warn and enforce this one.
    Only this command and `agentrt worker --apply-config` publish the limits."""
    settings = load_settings()
    if path is not None:
        settings = settings.model_copy(update={"config": path})
    who = actor or default_actor()
    with errors():
        config = load_config(settings.config)
        if problems := _visibility_problems(config):
            raise ConfigError(str(settings.config), problems)
        with cwd_on_path():
            svc = build_service(settings, enforce_applied=False)
    try:
        with errors():
            change = svc.apply_config(who)
    finally:
        svc.close()
    if json_out:
        emit_json(config_views.applied_json(change))
    else:
        out.print(config_views.applied_line(change))


def _visibility_problems(config: RuntimeConfig) -> list[str]:
    """Workers refuse a file whose longest step outlives the broker's visibility timeout
    (a running step would be handed to a second worker): say so here too."""
    from pydantic import ValidationError

    from runtime.settings import Settings

    try:
        settings = Settings()
    except ValidationError:
        return []  # unusable settings are reported by the commands that use them
    needed = min_visibility_timeout(config)
    if settings.visibility_timeout_s > needed or not config.routes:
        return []
    name, route = max(config.routes.items(), key=lambda item: item[1].step_timeout_s)
    return [
        f"routes.{name}.step_timeout_s: workers refuse to start: {route.step_timeout_s:g}s "
        f"plus the hard-limit grace, chain window, lease margin and deferral need "
        f"AGENTRT_VISIBILITY_TIMEOUT_S above {needed:g} (it is {settings.visibility_timeout_s})"
    ]


# --- demo ------------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # unwinds through the demo's finally blocks: workers and embedded Redis get stopped
    raise SystemExit(128 + signum)


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Worker processes to start.", min=1, max=8)] = 2,
    concurrency: Annotated[
        int, typer.Option(help="Pool size of each worker.", min=1, max=params.MAX_DEMO_POOL)
    ] = 2,
    timeout: Annotated[
        float,
        typer.Option(
            parser=params.seconds(1, params.MAX_LONG_WAIT_S),
            metavar="SECONDS",
            help=f"Seconds to wait for the runs (1 to {params.MAX_LONG_WAIT_S}).",
        ),
    ] = 120.0,
    flower_on: Annotated[
        bool,
        typer.Option(
            "--flower", help="Also start Flower; keep it and the workers up until Ctrl-C."
        ),
    ] = False,
    port: Annotated[
        int,
        typer.Option(help="Flower's port with --flower.", min=params.MIN_PORT, max=params.MAX_PORT),
    ] = 5555,
    json_out: JsonOpt = False,
) -> None:
    """Run the demo workload on real workers and print a summary (make demo).

    3 tenants x 3 routes exercising completion, policy denial, budget exhaustion, lock
    contention, invalid model arguments and a failing tool. Needs nothing configured:
    embedded Redis and SQLite under ./.agentrt/; a fresh namespace per invocation."""
    from runtime.demo.workload import DemoOptions, DemoReport, print_summary, run_demo

    settings = load_settings()
    options = DemoOptions(workers, concurrency, timeout, port if flower_on else None)

    def show(report: DemoReport) -> None:
        if json_out:
            emit_json(report.to_json())
        else:
            print_summary(report, out)

    # progress and process notes go to stderr, so --json output stays parseable
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with errors():
            run_demo(settings, options, err, on_report=show)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``agentrt`` entry point: every way out is an exit code and at most one line.

    Usage errors (a bad option value, an unknown command) print ``error: ...`` and exit 2;
    anything nobody expected prints ``error: internal error (<type>): <message>`` and exits
    1, with the traceback in the CLI's error log (or on stderr with ``AGENTRT_DEBUG=1``)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="agentrt", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors, Typer's own
        sys.exit(_usage_error(exc))
    except typer.Abort:  # e.g. a confirmation answered no
        err.print("aborted")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        sys.exit(_internal_error(exc, args))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: typer.TyperException) -> int:
    code = int(getattr(exc, "exit_code", EXIT_REFUSED))
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: that is the answer
        return code
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    err.print(f"[red bold]error:[/] {render.markup(message)}{escape(hint)}", soft_wrap=True)
    return code


def _internal_error(exc: BaseException, args: list[str]) -> int:
    """One line for a bug (ours or a library's); the traceback goes to a log file."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        traceback.print_exception(exc)
        where = "traceback above"
    else:
        log = _log_traceback(exc, args)
        where = f"details in {log}" if log else f"rerun with {DEBUG_ENV}=1 for the traceback"
    message = render.line(str(exc)) or "-"
    if len(message) > 300:
        message = message[:299] + "…"
    err.print(
        f"[red bold]error:[/] internal error ({escape(type(exc).__name__)}): "
        f"{escape(message)}; {escape(where)}",
        soft_wrap=True,
    )
    return EXIT_ERROR


#: the error log is started afresh beyond this size
ERROR_LOG_MAX_BYTES = 1024 * 1024


def _log_traceback(exc: BaseException, args: list[str]) -> Path | None:
    """Append the traceback to ``<AGENTRT_HOME>/cli-errors.log``; None if that fails.

    Only the command's name is logged, not its arguments (they may hold an input or a
    password); the traceback shows code, not local values."""
    home = locations.home(os.environ)
    log = home / "cli-errors.log"
    words = []
    for arg in args[:2]:
        if arg.startswith("-"):
            break
        words.append(render.line(arg)[:40])
    command = " ".join(words)
    try:
        home.mkdir(parents=True, exist_ok=True)
        mode = "w" if log.exists() and log.stat().st_size > ERROR_LOG_MAX_BYTES else "a"
        with log.open(mode, encoding="utf-8") as f:
            f.write(f"--- {datetime.now(UTC).isoformat()} pid {os.getpid()} agentrt {command}\n")
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return log


if __name__ == "__main__":
    main()
