"""``agentrt releases``: list, show, diff, canary, promote, rollback, compare.

Every change is audited (who: ``--actor``, default ``$AGENTRT_ACTOR`` or ``cli:$USER``;
why: ``--reason``) and reaches every worker at admission and at the next step of runs on
``next_step`` routes, without a restart. Exit codes: 1 an error, 2 a refused change (an
unknown route or release, no canary to promote, a failed gate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.cli import params, release_views, render
from runtime.cli.common import EXIT_REFUSED, JsonOpt, default_actor, emit_json, errors, fail, out
from runtime.cli.common import service as runtime_service
from runtime.errors import ReleaseError

if TYPE_CHECKING:
    from runtime.release_sets import LiveRelease
    from runtime.releases.api import Releases

app = typer.Typer(
    help=(
        "Releases: named version sets (model, prompt, policy, tool schema, retriever, "
        "harness, budget policy) routes run under; canaries, promote, rollback."
    ),
    no_args_is_help=True,
)

RouteArg = Annotated[str, typer.Argument(help="The route (a key of routes: with a release).")]
ReleaseArg = Annotated[str, typer.Argument(help="A release (a key of releases:).")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Why (kept in the audit log, at most 1000 chars).")
]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who acts (default $AGENTRT_ACTOR or cli:$USER).")
]


@contextmanager
def _releases() -> Iterator[Releases]:
    with runtime_service() as svc, errors():
        if svc.releases is None:
            fail("this runtime was built without releases")
        try:
            yield svc.releases
        except ReleaseError as exc:
            fail(str(exc), EXIT_REFUSED)


def _tenants(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names or len(names) > 1000:
        raise typer.BadParameter(
            "give 1 to 1000 tenant names, comma separated", param_hint="--tenants"
        )
    return names


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Every release (its version set, where it runs) and every route's live release state."""
    with _releases() as rel:
        releases, routes = rel.list(), rel.routes()
    if json_out:
        emit_json({"releases": releases, "routes": routes})
        return
    out.print(release_views.releases_table(releases))
    out.print(release_views.routes_table(routes))


@app.command("show")
def show(release: ReleaseArg, json_out: JsonOpt = False) -> None:
    """A release: its version set, the routes it runs on, its gate results and its audit."""
    with _releases() as rel:
        shown = rel.show(release)
    if json_out:
        emit_json(shown)
        return
    out.print(release_views.version_set_table(release, shown["version_set"]))
    out.print(f"runs on: {', '.join(shown['routes']) or '-'}")
    if shown["gates"]:
        out.print(release_views.gates_table(shown["gates"]))
    else:
        out.print("[dim]no gate results[/]")
    if shown["audit"]:
        out.print(release_views.audit_table(shown["audit"]))


@app.command("diff")
def diff(a: ReleaseArg, b: ReleaseArg, json_out: JsonOpt = False) -> None:
    """What changes between two releases' version sets."""
    with _releases() as rel:
        changes = rel.diff(a, b)
    if json_out:
        emit_json([{"field": f, a: x, b: y} for f, x, y in changes])
    elif not changes:
        out.print(f"{a} and {b} have the same version set")
    else:
        out.print(release_views.diff_table(a, b, changes))


@app.command("canary")
def canary(
    route: RouteArg,
    release: ReleaseArg,
    percent: Annotated[
        float | None,
        typer.Option(
            "--percent",
            help="Share of the route's runs (above 0, at most 100), by a stable hash.",
            parser=params.percent,
        ),
    ] = None,
    tenants: Annotated[
        str | None, typer.Option("--tenants", help="Tenants whose runs get it: a,b,c.")
    ] = None,
    reason: ReasonOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Give RELEASE to a share of ROUTE's new runs (--percent) or to tenants (--tenants)."""
    names = _tenants(tenants)
    if (percent is None) == (names is None):
        raise typer.BadParameter("give exactly one of --percent or --tenants")
    with _releases() as rel:
        state = rel.canary(
            route, release, percent=percent, tenants=names, actor=actor or default_actor(),
            reason=reason,
        )  # fmt: skip
    _changed(f"{route}: canary {release}", state, json_out)


@app.command("promote")
def promote(
    route: RouteArg, reason: ReasonOpt = None, actor: ActorOpt = None, json_out: JsonOpt = False
) -> None:
    """Make ROUTE's canary its active release, if the release gate passes (its result is
    stored with the release either way; a failed gate changes nothing and exits 2)."""
    with runtime_service() as svc, errors():
        if svc.releases is None:
            fail("this runtime was built without releases")
        from runtime.evals.gate import eval_gate  # the replay engine: only when promoting

        # the blocking eval fixtures of the route, replayed under the candidate release
        gate = eval_gate(svc.config, svc.settings)
        try:
            state = svc.releases.promote(
                route, actor=actor or default_actor(), reason=reason, gate=gate
            )
        except ReleaseError as exc:
            fail(str(exc), EXIT_REFUSED)
    _changed(f"{route}: promoted {state.active}", state, json_out)


@app.command("rollback")
def rollback(
    route: RouteArg,
    to: Annotated[
        str | None, typer.Option("--to", help="Make this release active (default: see above).")
    ] = None,
    reason: ReasonOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """End ROUTE's canary; with none, go back to the release active before the last
    promotion; with --to, make that release active."""
    with _releases() as rel:
        state = rel.rollback(route, to=to, actor=actor or default_actor(), reason=reason)
    _changed(f"{route}: active {state.active}", state, json_out)


@app.command("compare")
def compare(
    route: RouteArg,
    since: Annotated[
        str, typer.Option("--since", help="The window back from now (e.g. 30m, 24h, 7d; <= 90d).")
    ] = "24h",
    json_out: JsonOpt = False,
) -> None:
    """Active and canary release side by side over the same window: runs, stop reasons,
    policy denials, cost per completed run, tool errors, p95 step latency."""
    window: timedelta = params.parse_duration(since)
    with _releases() as rel:
        result = rel.compare(route, window)
    if json_out:
        emit_json(result)
    else:
        out.print(release_views.compare_table(result))


def _changed(what: str, state: LiveRelease, json_out: bool) -> None:
    if json_out:
        emit_json(asdict(state))
    else:
        out.print(f"{render.markup(what)} (generation {state.generation})")
