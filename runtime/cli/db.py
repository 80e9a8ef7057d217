"""``agentrt db``: the database's schema revision - upgrade it, show it, list the revisions.

Alembic and SQLAlchemy are imported by the commands that use them, so registering this
group costs the CLI's light commands nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from runtime.cli import render
from runtime.cli.common import JsonOpt, emit_json, errors, load_settings, out

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from runtime.store.migrations.runner import SchemaState

app = typer.Typer(
    help=(
        "The database's schema: `upgrade` it to this version's revision, show the `current` "
        "one, list the `history`. Settings: AGENTRT_DATABASE_URL (default: SQLite under "
        "AGENTRT_HOME)."
    ),
    no_args_is_help=True,
)


def _database_url() -> str:
    from runtime.store.db import default_sqlite_url

    settings = load_settings()
    return settings.database_url or default_sqlite_url(settings.home)


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database that does not exist yet (opening it would create it)."""
    from runtime.store.plain import target

    where = target(url)
    if where is not None and where.dialect == "sqlite" and not os.path.exists(where.path):
        return where.path
    return None


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    from runtime.store.db import make_engine

    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _state_json(state: SchemaState) -> dict[str, Any]:
    return {
        "revision": state.revision,
        "head": state.head,
        "at_head": state.at_head,
        "versioned": state.revision is not None,
        "empty": state.empty,
        "recognised": state.recognised,
        "known": state.known,
        "missing": state.missing,
    }


def describe(state: SchemaState) -> str:
    """One line: where the database stands against this version's head."""
    if state.at_head:
        return f"revision {state.revision} (head): up to date"
    if state.empty:
        return (
            f"empty database: no schema yet (head is {state.head}; `agentrt db upgrade` or "
            "any start-up creates it)"
        )
    refusal = state.refusal()
    return str(refusal) if refusal is not None else f"revision {state.revision}"


@app.command()
def upgrade(json_out: JsonOpt = False) -> None:
    """Bring the database to this version's schema (head).

    An empty database gets the whole schema; one an older agentrt created without
    migrations is recognised by its tables, recorded at the revision it matches and
    upgraded from there; a recorded older revision is upgraded. It runs in one
    transaction under a lock (concurrent runs upgrade once) and drops no data. Stop the
    workers first: they refuse to start against an older schema, not to keep running."""
    from runtime.store.migrations import runner

    url = _database_url()
    with errors(), _engine(url) as engine:
        before, after = runner.upgrade(engine)
    if json_out:
        emit_json({"before": _state_json(before), "after": _state_json(after)})
        return
    if before.at_head:
        out.print(
            f"already at revision {render.markup(after.revision)} (head): nothing to do",
            soft_wrap=True,
        )
    elif before.empty:
        out.print(
            f"created the schema at revision {render.markup(after.revision)} (head)",
            soft_wrap=True,
        )
    elif before.revision is None:
        out.print(
            f"adopted the unversioned database at revision {render.markup(before.recognised)}, "
            f"upgraded to {render.markup(after.revision)} (head)",
            soft_wrap=True,
        )
    else:
        out.print(
            f"upgraded from revision {render.markup(before.revision)} to "
            f"{render.markup(after.revision)} (head)",
            soft_wrap=True,
        )


@app.command()
def current(json_out: JsonOpt = False) -> None:
    """Show the database's schema revision and whether it is this version's head.

    Reads only: a database that does not exist yet is not created."""
    url = _database_url()
    path = _missing_sqlite_file(url)
    if path is not None:
        from runtime.store.migrations import HEAD

        if json_out:
            emit_json({"revision": None, "head": HEAD, "at_head": False, "exists": False})
        else:
            out.print(
                f"no database yet at {render.markup(path)} (head is {HEAD}; "
                "`agentrt db upgrade` or any start-up creates it)",
                soft_wrap=True,
            )
        return
    from runtime.store.migrations import runner

    with errors(), _engine(url) as engine:
        state = runner.read_state(engine)
    if json_out:
        emit_json({**_state_json(state), "exists": True})
    else:
        out.print(render.markup(describe(state)), soft_wrap=True)


@app.command()
def history(json_out: JsonOpt = False) -> None:
    """List this version's schema revisions, oldest first (the last is head)."""
    from runtime.store.migrations import runner

    with errors():
        revisions = runner.history()
    if json_out:
        emit_json(
            [
                {"revision": r.revision, "head": r.is_head, "description": r.description}
                for r in revisions
            ]
        )
        return
    for r in revisions:
        mark = " (head)" if r.is_head else ""
        out.print(
            f"{render.markup(r.revision)}{mark}: {render.markup(r.description)}", soft_wrap=True
        )
