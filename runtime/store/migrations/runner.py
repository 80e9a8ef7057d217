"""Run the migrations: where a database stands, upgrade it, stamp it, list the revisions.

Every write holds the schema lock for its whole transaction - ``BEGIN IMMEDIATE`` on
SQLite, a transaction-scoped advisory lock on PostgreSQL (per schema) - so processes
starting together against one database create or upgrade it once, and a failed upgrade
leaves it as it was (DDL is transactional on both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import runtime.store.models  # noqa: F401  (the tables, into SQLModel.metadata)
from runtime.errors import SchemaOutOfDate, SettingsError
from runtime.store.migrations import HEAD, UPGRADE_COMMAND, known

VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the scripts shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent))
    config.attributes["connection"] = connection
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@dataclass(frozen=True)
class Revision:
    revision: str
    description: str
    is_head: bool


def history() -> list[Revision]:
    """Every revision, oldest first."""
    found = reversed(list(scripts().walk_revisions()))
    return [Revision(s.revision, " ".join(s.doc.split()), s.is_head) for s in found]


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against the code's ``head``."""

    head: str
    #: the recorded revision (None: no version table)
    revision: str | None
    #: no agentrt table and no version: start-up creates the schema
    empty: bool = False
    #: unversioned tables: the revision they match (None: older than the baseline)
    recognised: str | None = None
    #: what unversioned tables lack of the baseline
    missing: list[str] = field(default_factory=list)
    #: the recorded revision is one of this code's
    known: bool = True

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    def refusal(self) -> SettingsError | None:
        """Why this code must not run against the database, or None."""
        if self.at_head or self.empty:
            return None
        if self.revision is not None and not self.known:
            return SettingsError(
                f"the database schema is at revision {self.revision}, which this agentrt "
                f"(head {self.head}) does not know: a newer agentrt upgraded it; run that "
                "version against it"
            )
        if self.revision is not None:
            return SchemaOutOfDate(
                self.revision,
                self.head,
                f"the database schema is at revision {self.revision}, older than this "
                f"agentrt's {self.head}: run `{UPGRADE_COMMAND}`",
            )
        if self.recognised is not None:
            return SchemaOutOfDate(
                None,
                self.head,
                "the database has no schema version (an older agentrt created it) and "
                f"matches revision {self.recognised}, older than this agentrt's {self.head}: "
                f"run `{UPGRADE_COMMAND}`",
            )
        more = len(self.missing) - 4
        shown = "; ".join(self.missing[:4]) + (f"; and {more} more" if more > 0 else "")
        return SchemaOutOfDate(
            None,
            self.head,
            f"the database's tables predate the baseline schema ({shown}): "
            f"`{UPGRADE_COMMAND}` cannot adopt them; migrate them by hand to the baseline "
            "(commit 98a37a2) or start from an empty database",
        )


def _agentrt_tables(names: set[str]) -> set[str]:
    return names & (set(SQLModel.metadata.tables) | {"runs"})


def read_version(conn: Connection) -> str | None:
    """The recorded revision, or None without a version table."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = [
        str(v) for v in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    ]
    if len(rows) > 1:
        raise SettingsError(f"the database records several schema revisions: {rows}")
    return rows[0] if rows else None


def state(conn: Connection, script: ScriptDirectory | None = None) -> SchemaState:
    script = script or scripts()
    revision = read_version(conn)
    if revision is not None:
        return SchemaState(HEAD, revision, known=_known(script, revision))
    inspector = inspect(conn)
    if not _agentrt_tables(set(inspector.get_table_names())):
        return SchemaState(HEAD, None, empty=True)
    found = known.recognise(inspector, script)
    return SchemaState(HEAD, None, recognised=found.revision, missing=found.missing)


def _known(script: ScriptDirectory, revision: str) -> bool:
    return revision in {s.revision for s in script.walk_revisions()}


def read_state(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        return state(conn)


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """One write transaction holding the schema lock (see the module's docstring)."""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "SELECT pg_advisory_xact_lock(hashtext('agentrt.schema:' || current_schema()))"
                )
            )
        yield conn


def _stamp(conn: Connection, revision: str) -> None:
    command.stamp(alembic_config(conn), revision)


def _create(conn: Connection) -> None:
    """A new database: the models' tables, recorded at head (what the migrations would make,
    which a test holds them to)."""
    SQLModel.metadata.create_all(conn)
    _stamp(conn, HEAD)


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """Bring the database to head: create it when empty, adopt tables an older agentrt made
    (stamp the revision they match, then upgrade), or apply the missing revisions.
    Returns the state before and after; nothing is dropped."""
    script = scripts()
    with schema_lock(engine) as conn:
        before = state(conn, script)
        if before.empty:
            _create(conn)
        elif not before.known:
            raise before.refusal() or AssertionError(before)
        elif before.revision is None:
            if before.recognised is None:
                raise before.refusal() or AssertionError(before)
            _stamp(conn, before.recognised)
            command.upgrade(alembic_config(conn), "head")
        elif not before.at_head:
            command.upgrade(alembic_config(conn), "head")
        after = state(conn, script)
    return before, after


def prepare(engine: Engine) -> None:
    """Start-up on a database not (yet) at head: create the schema in an empty one, stamp
    unversioned tables that already match head; refuse anything older."""
    script = scripts()
    with schema_lock(engine) as conn:
        found = state(conn, script)
        if found.empty:
            _create(conn)
            return
        if found.revision is None and found.recognised == HEAD:
            _stamp(conn, HEAD)
            return
        refusal = found.refusal()
        if refusal is not None:
            raise refusal
