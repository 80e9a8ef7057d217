"""``agentrt approvals``: the calls waiting for a human - list, show, approve, deny, stats.

A thin layer over ``rt.approvals`` (``runtime.approvals``). ``list``, ``show`` and
``stats`` read SQL only (``runtime.cli.reads``); ``approve`` and ``deny`` build the whole
runtime (an approval queues the run's next step through the scheduler). Exit codes as for
the rest of ``agentrt``: 1 an error (an unknown approval - or another tenant's -, one
decided already, expired, or one the actor may not decide), 2 bad arguments (a denial
without ``--reason``).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.cli import approval_views as views
from runtime.cli.common import (
    EXIT_REFUSED,
    JsonOpt,
    default_actor,
    emit_json,
    fail,
    out,
    reader,
    service,
)

if TYPE_CHECKING:
    from runtime.approvals import ApprovalView

app = typer.Typer(
    help=(
        "Calls waiting for a human (a policy rule's require_approval or escalate).\n\n"
        "An approval is bound to the exact call its run keeps, single-use, and expires "
        "(the route's approval_ttl_s)."
    ),
    no_args_is_help=True,
)


class Status(enum.StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    consumed = "consumed"
    all = "all"


IdArg = Annotated[str, typer.Argument(help="The approval id (agentrt approvals list).")]
TenantOpt = Annotated[
    str | None, typer.Option("--tenant", help="Only within this tenant (another's is not found).")
]
ActorOpt = Annotated[
    str | None,
    typer.Option("--actor", help="Who decides (default: $AGENTRT_ACTOR, else cli:$USER)."),
]


@app.command("list")
def list_(
    tenant: TenantOpt = None,
    status: Annotated[Status, typer.Option(help="Only approvals in this status.")] = Status.pending,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Only escalations to this owner group.")
    ] = None,
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many, oldest request first.", min=1, max=1000)
    ] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List approvals, the one waiting longest first (reads SQL only)."""
    wanted = None if status == Status.all else status.value
    with reader() as reads:
        found = reads.approvals.list(tenant, wanted, owner, route, limit)
    if json_out:
        emit_json([a.model_dump(mode="json") for a in found])
    elif not found:
        out.print("[dim]no approvals match[/]")
    else:
        out.print(views.approvals_table(found))


@app.command("show")
def show(approval_id: IdArg, tenant: TenantOpt = None, json_out: JsonOpt = False) -> None:
    """Show an approval: the exact call (arguments as they will run), who may decide it."""
    with reader() as reads:
        found = reads.approvals.get(approval_id, tenant)
    if json_out:
        emit_json(found.model_dump(mode="json"))
    else:
        out.print(views.approval_details(found))


@app.command("approve")
def approve(
    approval_id: IdArg,
    actor: ActorOpt = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept with the decision).")] = None,
    tenant: TenantOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve: the run resumes and runs exactly the approved call, once."""
    with service() as svc:
        decided = svc.approvals.approve(approval_id, actor or default_actor(), reason, tenant)
    _decided(decided, json_out)


@app.command("deny")
def deny(
    approval_id: IdArg,
    reason: Annotated[
        str | None, typer.Option(help="Why (required; the run or the model is told).")
    ] = None,
    actor: ActorOpt = None,
    tenant: TenantOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deny: the run stops approval_denied:<actor> (or the model is told, per route)."""
    if reason is None or not reason.strip():
        fail("a denial needs --reason", EXIT_REFUSED)
    with service() as svc:
        decided = svc.approvals.deny(approval_id, actor or default_actor(), reason, tenant)
    _decided(decided, json_out)


@app.command("stats")
def stats(tenant: TenantOpt = None, json_out: JsonOpt = False) -> None:
    """Approval latency (request to decision) p50/p95 per route, pending count, oldest age."""
    with reader() as reads:
        found = reads.approvals.stats(tenant)
    if json_out:
        emit_json(found)
    else:
        out.print(views.stats_table(found))


def _decided(decided: ApprovalView, json_out: bool) -> None:
    if json_out:
        emit_json(decided.model_dump(mode="json"))
    else:
        out.print(views.decided_line(decided))
