"""``agentrt ops``: operator levers that act within one step on every worker, without a
redeploy, each recorded in SQL and audited (``runtime.levers``; the runbook is in the
README). Every change takes ``--dry-run`` (count and table of the runs not ended that it
applies to; nothing changes, the attempt is audited), ``--reason`` and ``--actor``.
Unknown tools, routes, tenants and models are refused with the known names (exit 2).

Reverting a prompt (setting a route's active release) is ``agentrt releases rollback``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runtime.cli import ops_views as views
from runtime.cli import params
from runtime.cli.common import EXIT_REFUSED, JsonOpt, default_actor, emit_json, fail, out, service

if TYPE_CHECKING:
    from runtime.levers import LeverChange, Levers

app = typer.Typer(
    help=(
        "Operator levers: disable a tool, pin a model, force approval, stop or drain a "
        "route, drain or pause a tenant, change a route's concurrency live. Each acts at "
        "the next step on every worker, is kept in SQL (restored by agentrt recover) and "
        "audited (ops log). To revert a prompt, set the active release: agentrt releases "
        "rollback."
    ),
    no_args_is_help=True,
)

ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Why, for the audit log (ops log).")
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Show which runs it applies to (count and table); change nothing."
    ),
]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who acts, for the audit log (default cli:$USER).")
]
ToolArg = Annotated[str, typer.Argument(help="A tool declared under 'tools' in the config.")]
RouteArg = Annotated[str, typer.Argument(help="A route of the config.")]
TenantArg = Annotated[str, typer.Argument(help="A tenant of the config.")]
RouteOpt = Annotated[str | None, typer.Option("--route", help="A route of the config.")]
ToolOpt = Annotated[str | None, typer.Option("--tool", help="A tool of the config.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="A tenant of the config.")]


class StopMode(enum.StrEnum):
    stop = "stop"
    drain = "drain"


def _pull(act: Callable[[Levers], LeverChange], json_out: bool) -> None:
    with service() as svc:
        change = act(svc.levers)
    if json_out:
        emit_json(change.as_dict())
    else:
        out.print(views.change_view(change))


def _kw(actor: str | None, reason: str | None, dry_run: bool) -> dict[str, Any]:
    return {"actor": actor or default_actor(), "reason": reason, "dry_run": dry_run}


def _one_of(first: tuple[str, str | None], second: tuple[str, str | None]) -> None:
    if (first[1] is None) == (second[1] is None):
        fail(f"name exactly one of {first[0]} or {second[0]}", EXIT_REFUSED)


@app.command("disable-tool")
def disable_tool(
    tool: ToolArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Disable a tool: its calls are refused policy_denied:tool_disabled, or go to its
    manifest fallback. Calls already executing finish."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.disable_tool(tool, **kw), json_out)


@app.command("enable-tool")
def enable_tool(
    tool: ToolArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enable a tool disabled with disable-tool (the config's own 'enabled' still holds)."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.enable_tool(tool, **kw), json_out)


@app.command("pin-model")
def pin_model(
    route: RouteArg,
    model: Annotated[str, typer.Argument(help="A model of the config's 'models'.")],
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pin a route's model: every next step asks MODEL (no fallbacks), shown in the trace
    as model_pinned."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.pin_model(route, model, **kw), json_out)


@app.command("unpin-model")
def unpin_model(
    route: RouteArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Unpin a route's model: its steps ask the route's proposer again."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.unpin_model(route, **kw), json_out)


@app.command("force-approval")
def force_approval(
    route: RouteOpt = None,
    tool: ToolOpt = None,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Force approval for every tool call on a route (--route) or of a tool (--tool): an
    allowed call waits for a human (rule operator_forced_approval); stricter decisions
    stand."""
    _one_of(("--route", route), ("--tool", tool))
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.force_approval(route=route, tool=tool, **kw), json_out)


@app.command("unforce-approval")
def unforce_approval(
    route: RouteOpt = None,
    tool: ToolOpt = None,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Undo force-approval for a route (--route) or a tool (--tool)."""
    _one_of(("--route", route), ("--tool", tool))
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.unforce_approval(route=route, tool=tool, **kw), json_out)


@app.command("stop-route")
def stop_route(
    route: RouteArg,
    mode: Annotated[
        StopMode,
        typer.Option(
            "--mode",
            help="stop: running runs end at their next step (cancelled:route_stopped); "
            "drain: they finish. Either way admission refuses refused:route_stopped.",
        ),
    ],
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop a route: admission refuses new runs; running runs stop or drain (--mode)."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.stop_route(route, mode.value, **kw), json_out)


@app.command("start-route")
def start_route(
    route: RouteArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a route stopped with stop-route: admission accepts runs again."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.start_route(route, **kw), json_out)


@app.command("drain")
def drain(
    route: RouteOpt = None,
    tenant: TenantOpt = None,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Drain a route's (--route) or a tenant's (--tenant) queue: nothing new is
    dispatched from it; steps in flight finish; admission still queues. Undo: undrain."""
    _one_of(("--route", route), ("--tenant", tenant))
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.drain(route=route, tenant=tenant, **kw), json_out)


@app.command("undrain")
def undrain(
    route: RouteOpt = None,
    tenant: TenantOpt = None,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Dispatch from a drained route's (--route) or tenant's (--tenant) queue again."""
    _one_of(("--route", route), ("--tenant", tenant))
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.undrain(route=route, tenant=tenant, **kw), json_out)


@app.command("pause-tenant")
def pause_tenant(
    tenant: TenantArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pause a tenant: its runs are still admitted and queued, but none of its steps is
    dispatched until resume-tenant; steps in flight finish."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.pause_tenant(tenant, **kw), json_out)


@app.command("resume-tenant")
def resume_tenant(
    tenant: TenantArg,
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Resume a paused tenant: its queued steps are dispatched again, fairly."""
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.resume_tenant(tenant, **kw), json_out)


#: what ``ops concurrency ROUTE config`` takes: back to the config's concurrency_limit
CONFIG_LIMIT = "config"


def parse_limit(value: str) -> int | None:
    """N of ``ops concurrency``: a whole number 0..MAX_CONCURRENCY, or ``config`` (None)."""
    from runtime.config import MAX_CONCURRENCY

    if value == CONFIG_LIMIT:
        return None
    if not value.isdigit() or int(value) > MAX_CONCURRENCY:
        fail(
            f"N: {params.shown(value)} is not a concurrency limit: a whole number from 0 to "
            f"{MAX_CONCURRENCY}, or '{CONFIG_LIMIT}' for the config's",
            EXIT_REFUSED,
        )
    return int(value)


@app.command("concurrency")
def concurrency(
    route: RouteArg,
    limit: Annotated[
        str,
        typer.Argument(
            metavar="N",
            help="Steps of the route running at once, 0..1000000 (0: none start), or "
            "'config' to go back to the config's concurrency_limit.",
        ),
    ],
    reason: ReasonOpt = None,
    dry_run: DryRunOpt = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set a route's concurrency limit live (the dispatcher's): steps in flight above a
    lowered limit finish; no new one starts until the route is below it."""
    n = parse_limit(limit)
    kw = _kw(actor, reason, dry_run)
    _pull(lambda lv: lv.set_concurrency(route, n, **kw), json_out)


@app.command("status")
def status(json_out: JsonOpt = False) -> None:
    """The levers on now (from SQL, the record): lever, target, setting, since, by, why."""
    with service() as svc:
        rows = svc.levers.status()
    if json_out:
        emit_json(views.rows_json(rows))
    else:
        out.print(views.status_table(rows))


@app.command("log")
def log(
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="Most entries shown, newest first.")
    ] = 50,
    lever: Annotated[
        str | None, typer.Option("--lever", help="Only this lever (e.g. tool_disabled).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The audit of lever changes and dry runs: who, when, lever, target, old -> new, why."""
    with service() as svc:
        rows = svc.levers.log(limit=limit, lever=lever)
    if json_out:
        emit_json(views.rows_json(rows))
    else:
        out.print(views.log_table(rows))
