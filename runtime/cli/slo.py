"""``agentrt slo report`` and ``agentrt evidence``: the runtime SLOs and the seed's
launch-evidence map, read from the deployment's applied config (the file before any was
applied) and SQL only - no Redis. Both show every tenant: the operator's view.

Exit codes: ``slo report`` 0 when no SLO is missed, 1 when one is (so cron or CI can run
it) or on an error, 2 on bad input (a ``--since`` that is no time, an unknown route).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runtime.cli import params, slo_views
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_REFUSED,
    JsonOpt,
    cwd_on_path,
    emit_json,
    errors,
    fail,
    load_registry,
    load_settings,
    out,
    reader,
)

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig

app = typer.Typer(
    help="Runtime SLOs (the deployment file's slos:): measured from the store.",
    no_args_is_help=True,
)

#: the runbook's levers and recovery commands, as users type them (the evidence map lists
#: those this CLI has, with their help)
RUNBOOK = (
    "runs cancel",
    "runs pause",
    "runs resume",
    "approvals approve",
    "approvals deny",
    "dlq list",
    "dlq retry",
    "dlq purge",
    "recover",
    "config apply",
    "queues",
)

RouteOpt = Annotated[
    str | None, typer.Option("--route", help="Only this route (a key of routes: in the config).")
]


def _check_route(config: RuntimeConfig, route: str | None, source: str) -> None:
    if route is not None and route not in config.routes:
        fail(f"unknown route {params.shown(route)} (not in {source})", EXIT_REFUSED)


@app.command("report")
def report(
    since: Annotated[
        datetime,
        typer.Option(
            "--since",
            parser=params.parse_when,
            metavar="WHEN",
            help="Runs created since WHEN: a duration back from now (24h, 7d, 1h30m) or an "
            "ISO-8601 time.",
        ),
    ] = "24h",  # type: ignore[assignment]
    route: RouteOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Each SLO: target, measured, status (met, missed, no data), owner, and for a miss
    the runs that prove it. Exits 1 when any SLO is missed."""
    from runtime.wiring import build_slo_reporter, deployment_config

    settings = load_settings()
    with reader() as reads:
        config, source = deployment_config(settings, reads.store.engine)
        _check_route(config, route, source)
        result = build_slo_reporter(config, reads.store.engine).report(since=since, route=route)
    if json_out:
        emit_json(result.as_dict())
    else:
        for renderable in slo_views.slo_views(result):
            out.print(renderable, soft_wrap=True)
    if result.missed:
        raise typer.Exit(EXIT_ERROR)


def _runbook(root: Any) -> list[dict[str, str]]:
    """The runbook's commands this CLI has, each with the first line of its help."""
    found: dict[str, str] = {}

    def walk(command: Any, prefix: str) -> None:
        # a click group (typer ships its own click): its sub-commands by name
        subs = getattr(command, "commands", None)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                walk(sub, f"{prefix}{name} ")
            return
        lines = (command.help or "").strip().splitlines()
        found[prefix.strip()] = lines[0] if lines else ""

    walk(root, "")
    return [{"command": f"agentrt {c}", "help": found[c]} for c in RUNBOOK if c in found]


def evidence(ctx: typer.Context, route: RouteOpt = None, json_out: JsonOpt = False) -> None:
    """The seed's launch-evidence map for this deployment: route table, run-state schema,
    policy decision matrix and reason codes, budget policies and exhaustion behaviour,
    tool manifest, trace contract, blocking evals, runbook."""
    from runtime.evidence import evidence_map
    from runtime.store.deployment import DeploymentStore
    from runtime.store.slo_reads import SloReads
    from runtime.wiring import deployment_config

    settings = load_settings()
    with reader() as reads:
        engine = reads.store.engine
        config, source = deployment_config(settings, engine)
        _check_route(config, route, source)
        with errors(), cwd_on_path():  # tool modules of the project, as config check
            registry = load_registry(config, source)
        applied = DeploymentStore(engine, settings.namespace).applied()
        shown: dict[str, Any] | None = None
        if applied is not None:
            shown = {
                "version": applied.version,
                "digest": applied.digest,
                "source": applied.source,
                "applied_at": str(applied.applied_at),
            }
        data = evidence_map(
            config=config,
            registry=registry,
            reads=SloReads(engine),
            runbook=_runbook(ctx.find_root().command),
            evals_dir=_evals_dir(config),
            applied=shown,
            route=route,
        )
    if json_out:
        emit_json(data)
    else:
        for renderable in slo_views.evidence_views(data):
            out.print(renderable)


def _evals_dir(config: RuntimeConfig) -> Path | None:
    """Where ``agentrt evals`` keeps the fixtures: the file's ``evals.dir``, else
    ``evals/`` (relative to the working directory, as ``agentrt evals run`` reads it)."""
    from runtime.evals.gate import evals_dir

    directory = evals_dir(config)
    return directory if directory.is_dir() else None
