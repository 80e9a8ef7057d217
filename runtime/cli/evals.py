"""``agentrt evals``: fixtures built from real runs - capture one, sweep the capture rules,
replay them all (a table, JUnit XML, the gate's exit code) - and ``agentrt policy diff``,
the dry run of a candidate policy over stored proposals.

The engine is ``runtime.evals``; this module parses options and prints what
``runtime.cli.eval_views`` builds. Exit codes: 0 ok; 1 a blocking case failed (or was
flaky), an error; 2 bad arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from runtime.cli import eval_views as views
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_REFUSED,
    JsonOpt,
    emit_json,
    err,
    errors,
    fail,
    out,
    service,
)
from runtime.cli.params import parse_duration

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig

app = typer.Typer(
    help="Evals built from real runs: capture a run as a fixture, replay fixtures, gate.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="Work with policies: dry-run a candidate.", no_args_is_help=True)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The fixture directory (default: the deployment file's evals.dir, else evals/).",
    ),
]
SinceOpt = Annotated[
    timedelta | None,
    typer.Option(
        "--since", parser=parse_duration, metavar="DURATION",
        help="How far back to look: 30m, 12h, 7d (at most 3650d; default 1d for sweep, "
        "7d for policy diff).",
    ),
]  # fmt: skip


@app.command("capture")
def capture(
    run_id: Annotated[str, typer.Argument(help="The ended run to capture.")],
    name: Annotated[
        str | None,
        typer.Option(help="The fixture's name and file name (default: route-stop reason-run)."),
    ] = None,
    directory: DirOpt = None,
    blocking: Annotated[
        bool,
        typer.Option("--blocking/--not-blocking", help="Does a failing replay fail the gate?"),
    ] = True,
    yaml_out: Annotated[bool, typer.Option("--yaml", help="Write YAML instead of JSON.")] = False,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only find the run within this tenant.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Turn an ended run (a dead letter, an incident, a policy near miss) into a fixture.

    Records its route, tenant, goal and input, the proposals it was given and each tool
    execution's result (secrets stay redacted), and its outcome: status, stop reason,
    policy decisions, tools executed and refused, spend (as upper bounds)."""
    from runtime.evals.capture import fixture_from_run, fixture_path, record_capture, write_new
    from runtime.evals.gate import evals_dir
    from runtime.store.evals import EvalStore

    with service() as svc:
        fixture = fixture_from_run(svc.store, run_id, tenant=tenant, name=name, blocking=blocking)
        path = fixture_path(evals_dir(svc.config, directory), fixture.name,
                            "yaml" if yaml_out else "json")  # fmt: skip
        write_new(fixture, path)
        record_capture(EvalStore(svc.store.engine), fixture, path)
    if json_out:
        emit_json({"name": fixture.name, "path": str(path), "run_id": run_id,
                   "expected": fixture.expected.model_dump(mode="json")})  # fmt: skip
        return
    expects = f"{fixture.expected.status} {fixture.expected.stop_reason or ''}".strip()
    out.print(
        f"captured run {escape(run_id)} as [bold]{escape(fixture.name)}[/] -> "
        f"{escape(str(path))} (expects {escape(expects)})",
        soft_wrap=True,
    )


@app.command("sweep")
def sweep(
    since: SinceOpt = None,
    limit: Annotated[
        int, typer.Option(help="Ended runs examined at most.", min=1, max=10_000)
    ] = 500,
    directory: DirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Apply the deployment file's evals.capture_rules to runs that ended within --since.

    Each matching run is captured once (recorded in SQL; a later sweep skips it), with the
    rule's blocking flag. Run it periodically (cron, a schedule): it is off the step path."""
    from runtime.evals.capture import CaptureSweep
    from runtime.evals.gate import evals_dir
    from runtime.store.evals import EvalStore

    with service() as svc:
        if svc.config.evals is None or not svc.config.evals.capture_rules:
            fail("the deployment file has no evals.capture_rules: nothing to sweep", EXIT_REFUSED)
        result = CaptureSweep(
            runs=svc.store, evals=EvalStore(svc.store.engine), config=svc.config.evals,
            directory=evals_dir(svc.config, directory),
        ).sweep(since or timedelta(days=1), limit)  # fmt: skip
    if json_out:
        emit_json({"examined": result.examined,
                   "captured": [{"run_id": r, "path": str(p)} for r, p in result.captured],
                   "skipped": result.skipped})  # fmt: skip
        return
    for run_id, path in result.captured:
        out.print(f"captured {escape(run_id)} -> {escape(str(path))}", soft_wrap=True)
    for run_id, why in result.skipped.items():
        err.print(f"[yellow]skipped[/] {escape(run_id)}: {escape(why)}", soft_wrap=True)
    out.print(f"{len(result.captured)} captured of {result.examined} ended run(s) examined")


def release_transform(
    config: RuntimeConfig, release: str
) -> Callable[[RuntimeConfig, str], RuntimeConfig]:
    """The candidate release's config per route (``runtime.releases.config_for``); an
    unknown release exits 2 naming the defined ones."""
    from runtime.releases import config_for

    if release not in config.releases:
        known = ", ".join(sorted(config.releases)) or "none"
        fail(f"--release {release}: unknown release (defined: {known})", EXIT_REFUSED)

    def transform(cfg: RuntimeConfig, route: str) -> RuntimeConfig:
        return config_for(cfg, route, release)

    return transform


@app.command("run")
def run(
    release: Annotated[
        str | None, typer.Option("--release", help="Replay under this candidate release.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Replay under this candidate policy (a policy: section, or a whole "
            "deployment file).",
        ),
    ] = None,
    gate: Annotated[
        bool,
        typer.Option(
            "--gate", help="Replay only the blocking cases (3 times each unless --repeat)."
        ),
    ] = False,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML to this file.")
    ] = None,
    repeat: Annotated[
        int | None,
        typer.Option(
            "--repeat",
            min=1,
            max=100,
            help="Replays per case (default 1; 3 with --gate). A case that passes and "
            "fails across them is flaky, and a flaky blocking case fails.",
        ),
    ] = None,
    directory: DirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay every fixture through the real step code and compare its outcome.

    Each replay runs in this process on the deployment's Redis and SQL server, in its own
    namespace and scratch database, with the recorded proposals and tool results (no tool
    performs its side effect). Prints a table; exits 1 when a blocking case fails."""
    from runtime.evals import fixture as fx
    from runtime.evals.candidate import with_policy
    from runtime.evals.gate import GATE_REPEAT, evals_dir
    from runtime.evals.replay import ReplayEngine
    from runtime.evals.report import report_of, write_junit

    times = repeat if repeat is not None else (GATE_REPEAT if gate else 1)
    with service() as svc:
        config = svc.config
        transform = release_transform(config, release) if release else None
        if policy is not None:
            config = with_policy(config, policy)
        fixtures = fx.load_dir(evals_dir(svc.config, directory))
        if gate:
            fixtures = [f for f in fixtures if f.blocking]
        engine = ReplayEngine(
            settings=svc.settings, endpoints=svc.endpoints, config=config,
            registry=svc.registry, config_transform=transform,
        )  # fmt: skip
        report = report_of(engine.run(fixtures, times))
    if junit is not None:
        with errors():
            write_junit(report, junit)
    if json_out:
        emit_json(views.eval_json(report))
    else:
        if report.cases:
            out.print(views.eval_table(report))
        for case in report.cases:
            for reason in case.reasons if case.verdict != "pass" else ():
                out.print(f"  {escape(case.name)}: {escape(reason)}", soft_wrap=True)
        out.print(("[green bold]" if report.passed else "[red bold]") + escape(report.summary())
                  + "[/]", soft_wrap=True)  # fmt: skip
    if not report.passed:
        raise typer.Exit(EXIT_ERROR)


@policy_app.command("diff")
def policy_diff(
    candidate: Annotated[
        Path,
        typer.Option(
            "--candidate",
            help="The candidate: a policy: section (version, default, rules) or a whole "
            "deployment file.",
        ),
    ],
    since: SinceOpt = None,
    route: Annotated[str | None, typer.Option("--route", help="Only this route's calls.")] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's calls.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Stored decisions read at most.", min=1, max=10_000)
    ] = 10_000,
    json_out: JsonOpt = False,
) -> None:
    """What a candidate policy would decide differently over stored proposals.

    Re-decides every tool call decided within --since with the real policy engine and
    lists the changes (allow -> deny, allow -> require_approval, deny -> allow, ...) per
    transition and per candidate rule, with example run ids. Writes nothing."""
    from runtime.evals.candidate import candidate_of
    from runtime.evals.policy_diff import policy_diff as dry_run
    from runtime.store.db import utcnow
    from runtime.store.evals import EvalStore

    with service() as svc:
        if route is not None and route not in svc.config.routes:
            fail(f"--route {route!r}: no such route", EXIT_REFUSED)
        policy = candidate_of(svc.config, candidate)
        result = dry_run(
            store=EvalStore(svc.store.engine), registry=svc.registry, candidate=policy,
            since=utcnow() - (since or timedelta(days=7)), route=route, tenant=tenant, limit=limit,
        )  # fmt: skip
    if json_out:
        emit_json(views.diff_json(result))
        return
    out.print(
        f"{result.changed} of {result.examined} stored call decision(s) would change under "
        f"{escape(str(candidate))} (policy {escape(policy.version)})",
        soft_wrap=True,
    )
    if result.truncated:
        err.print(f"[yellow]read the first {limit} decisions only: narrow --since or --route[/]")
    if result.changed:
        for table in views.diff_tables(result):
            out.print(table)
