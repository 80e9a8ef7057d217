"""``agentrt keys``: the HTTP API's keys - create, list, revoke (SQL only; no Redis).

A key's secret is printed once, by ``create``, and stored nowhere (only its SHA-256):
keep it then or revoke the key and make another. ``list`` never shows secrets or hashes.
A key belongs to one tenant; tenant ``*`` (every tenant) is allowed only with the
``ops:admin`` scope.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, Any

import typer

from runtime.cli import common, params
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
    help=(
        "API keys of the HTTP API (agentrt api): per tenant, scoped, shown once.\n\n"
        "Scopes: runs:submit, runs:read, runs:cancel, approvals:decide, dlq:operate, "
        "ops:admin (every scope; with --tenant '*' every tenant)."
    ),
    no_args_is_help=True,
)


class Scope(enum.StrEnum):
    runs_submit = "runs:submit"
    runs_read = "runs:read"
    runs_cancel = "runs:cancel"
    approvals_decide = "approvals:decide"
    dlq_operate = "dlq:operate"
    ops_admin = "ops:admin"


def _keys(reads: Any) -> Any:
    from runtime.api_keys import ApiKeys
    from runtime.store.api_keys import ApiKeyStore

    return ApiKeys(store=ApiKeyStore(reads.store.engine))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if hasattr(v, "isoformat") else v)
        for k, v in row.items()
        if k != "secret_hash"
    }


@app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="The key's tenant ('*': every tenant, ops:admin).")],
    scope: Annotated[list[Scope], typer.Option("--scope", help="A scope (repeat for more).")],
    expires_in: Annotated[
        timedelta | None,
        typer.Option(
            "--expires-in",
            parser=params.parse_duration,
            metavar="DURATION",
            help="Expire after this long (e.g. 12h, 30d); default never.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="A label for people (e.g. web-frontend).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    with reader() as reads:
        known = None
        if tenant != "*":
            known = set(common.load_config(reads.settings.config).tenants)
        issued = _keys(reads).create(
            tenant,
            [s.value for s in scope],
            actor=default_actor(),
            name=name,
            expires_in=expires_in,
            known_tenants=known,
        )
    if json_out:
        emit_json({**_shown(issued.record), "key": issued.secret})
        return
    out.print(f"created key [bold]{issued.key_id}[/] for tenant {issued.record['tenant_id']}")
    out.print("the key (shown once; only its hash is stored):")
    out.print(issued.secret, markup=False, highlight=False, soft_wrap=True)


@app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List keys (never their secrets or hashes), newest first."""
    with reader() as reads:
        rows = [_shown(r) for r in _keys(reads).list(tenant)]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("[dim]no keys[/]")
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        expires = r["expires_at"] or "never"
        out.print(
            f"{r['key_id']}  agrt_{r['prefix']}_…  tenant={r['tenant_id']}  "
            f"scopes={','.join(r['scopes'] or [])}  {state}  expires={expires}  {r['name']}",
            markup=False,
            highlight=False,
        )


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (agentrt keys list).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a key: its next request fails (401)."""
    if not yes:
        if not common.interactive():
            fail("refusing to revoke without confirmation: pass --yes", EXIT_REFUSED)
        if not typer.confirm(f"Revoke key {key_id}?", default=False, err=True):
            err.print("nothing revoked")
            raise typer.Exit(EXIT_ERROR)
    with reader() as reads:
        row = _keys(reads).revoke(key_id, default_actor())
    if json_out:
        emit_json(_shown(row))
    else:
        out.print(f"revoked key {row['key_id']} (tenant {row['tenant_id']})", markup=False)
