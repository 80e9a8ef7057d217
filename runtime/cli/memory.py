"""``agentrt memory``: what runs remembered - list, show, forget (SQL only; no Redis).

Every command names its tenant: a memory is never shown or forgotten across tenants.
``forget`` hides the memory (and every other version of its namespace/key) from every
later retrieval at once and writes an audit row (``operator_audit``, action
``memory.forget``); retention deletes the rows later."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from runtime.cli import common
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
)

app = typer.Typer(
    help="Memories runs wrote (per tenant): list, show, forget (audited).",
    no_args_is_help=True,
)

TenantOpt = Annotated[str, typer.Option("--tenant", help="The memories' tenant.")]
#: a preview of a memory's content in a listing
PREVIEW_CHARS = 60


def _memories(reads: Any) -> Any:
    from runtime.memory.store import MemoryStore

    return MemoryStore(reads.store.engine)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@app.command("list")
def list_(
    tenant: TenantOpt,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    forgotten: Annotated[
        bool, typer.Option("--forgotten", help="Also forgotten ones (not yet deleted).")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="Most memories shown, newest first.")
    ] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List the tenant's memories, newest first."""
    with reader() as reads:
        rows = [
            _shown(r)
            for r in _memories(reads).listed(
                tenant, namespace=namespace, include_forgotten=forgotten, limit=limit
            )
        ]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("[dim]no memories[/]")
        return
    for r in rows:
        content = str(r["content"]).replace("\n", " ")
        if len(content) > PREVIEW_CHARS:
            content = content[: PREVIEW_CHARS - 1] + "…"
        state = "forgotten" if r["forgotten_at"] else (r["expires_at"] or "no expiry")
        out.print(
            f"{r['memory_id']}  {r['namespace']}/{r['key']} v{r['version']}  "
            f"{r['retention']}  {state}  run={r['run_id']}  {content}",
            markup=False,
            highlight=False,
        )


@app.command("show")
def show(
    memory_id: Annotated[str, typer.Argument(help="The memory id (agentrt memory list).")],
    tenant: TenantOpt,
    json_out: JsonOpt = False,
) -> None:
    """Show one memory with its provenance (run, step, actor, evidence)."""
    with reader() as reads:
        row = _memories(reads).get(tenant, memory_id)
    if row is None:
        fail(f"no memory {memory_id!r} of tenant {tenant!r}")
    shown = _shown(row)
    if json_out:
        emit_json(shown)
        return
    for name, value in shown.items():
        out.print(f"{name:>13}  {value}", markup=False, highlight=False)


@app.command("forget")
def forget(
    memory_id: Annotated[str, typer.Argument(help="The memory id (agentrt memory list).")],
    tenant: TenantOpt,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit row).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who (default: cli:<user>).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Forget a memory (and the other versions of its key): no later retrieval shows it."""
    if not yes:
        if not common.interactive():
            fail("refusing to forget without confirmation: pass --yes", EXIT_REFUSED)
        if not typer.confirm(f"Forget memory {memory_id}?", default=False, err=True):
            err.print("nothing forgotten")
            raise typer.Exit(EXIT_ERROR)
    from runtime.store.db import utcnow

    with reader() as reads:
        store = _memories(reads)
        if store.get(tenant, memory_id) is None:
            fail(f"no memory {memory_id!r} of tenant {tenant!r}")
        ids = store.forget(
            tenant, memory_id, actor=actor or default_actor(), reason=reason, now=utcnow()
        )
    if json_out:
        emit_json({"memory_id": memory_id, "tenant": tenant, "forgotten": ids})
        return
    if not ids:
        out.print(f"memory {memory_id} was forgotten already", markup=False)
        return
    out.print(f"forgot {len(ids)} memory version(s): {', '.join(ids)}", markup=False)
