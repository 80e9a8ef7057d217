"""Read-only reads of the run tables on the DB-API driver, without SQLAlchemy.

The CLI's views for people (``agentrt runs list``, ``runs show``, ``trace``) read a few
rows and print them; importing SQLAlchemy and SQLModel to do so would cost several times
the read itself. ``PlainReads`` runs the same queries as ``RunStore`` (same filters, same
order, same limit) on ``sqlite3`` or ``psycopg`` and decodes each cell as the store does
(``runtime.store.cells``), so it returns the same rows; a test holds the two to that on
SQLite and PostgreSQL, and holds ``TABLES`` to the SQLModel tables.

It never writes: a database that does not exist yet, or has none of the tables, reads as
empty (nothing is created). ``PlainReads.open`` returns None when it cannot stand in for
the store - a URL form it does not translate exactly as SQLAlchemy does, or a database not
at the code's schema revision (the store then stamps it or names ``agentrt db upgrade``) -
and the caller reads through the store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from runtime.errors import RunNotFound
from runtime.statuses import KNOWN_STATUSES, RunStatus
from runtime.store.cells import decode, in_utc
from runtime.store.migrations import HEAD

#: Alembic's record of the schema revision (``runtime.store.migrations``)
VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class Table:
    """A table as the store reads it: its columns, and those decoded on reading."""

    name: str
    columns: tuple[str, ...]
    json: frozenset[str] = field(default_factory=frozenset)
    times: frozenset[str] = field(default_factory=frozenset)
    #: booleans (SQLite stores 0/1)
    flags: frozenset[str] = field(default_factory=frozenset)


RUNS = Table(
    "runs",
    (
        "run_id", "trace_id", "request_id", "actor_id", "tenant_id", "route", "goal",
        "autonomy_level", "risk_class", "execution_mode", "status", "version_set",
        "budget_policy_version", "policy_version", "workflow_step", "allowed_tools",
        "idempotency_key", "approval_id", "checkpoint_ref", "stop_reason", "priority",
        "input", "output", "next_step", "turns", "invalid_proposals", "tool_errors",
        "lock_waits", "attempt", "pending_proposal", "budget_extension", "version", "admitted",
        "request_digest", "created_at", "updated_at", "started_at", "finished_at", "deadline_at",
        "release", "plan", "parent_run_id", "parent_step", "depth", "delegated_budget",
    ),
    json=frozenset(
        {
            "allowed_tools", "input", "output", "pending_proposal", "budget_extension",
            "request_digest", "version_set", "plan", "delegated_budget",
        }
    ),
    times=frozenset({"created_at", "updated_at", "started_at", "finished_at", "deadline_at"}),
    flags=frozenset({"admitted"}),
)  # fmt: skip
STEPS = Table(
    "steps",
    (
        "id", "run_id", "tenant_id", "step_no", "kind", "proposal", "outcome", "observation",
        "input_tokens", "output_tokens", "model_version", "started_at", "finished_at",
        "duration_ms",
    ),
    json=frozenset({"proposal", "observation"}),
    times=frozenset({"started_at", "finished_at"}),
)  # fmt: skip
TRACE_EVENTS = Table(
    "trace_events",
    ("id", "run_id", "tenant_id", "trace_id", "step_no", "at", "kind", "data"),
    json=frozenset({"data"}),
    times=frozenset({"at"}),
)
POLICY_DECISIONS = Table(
    "policy_decisions",
    (
        "id", "run_id", "tenant_id", "step_no", "call_index", "tool", "decision", "rule_id",
        "reason_codes", "policy_version", "args_digest", "at",
    ),
    json=frozenset({"reason_codes"}),
    times=frozenset({"at"}),
)  # fmt: skip
SIDE_EFFECTS = Table(
    "side_effects",
    (
        "id", "idempotency_key", "run_id", "tenant_id", "step_no", "tool", "side_effect_class",
        "status", "args_digest", "args", "result", "error", "fencing_token", "attempts",
        "started_at", "finished_at", "compensation_started_at",
    ),
    json=frozenset({"args", "result"}),
    times=frozenset({"started_at", "finished_at", "compensation_started_at"}),
)  # fmt: skip
SPEND_RECORDS = Table(
    "spend_records",
    (
        "id", "run_id", "tenant_id", "route", "step_no", "day", "tokens", "input_tokens",
        "output_tokens", "model_calls", "tool_calls", "retries", "wall_clock_ms",
        "cost_micro_usd", "delegations", "at",
    ),
    times=frozenset({"at"}),
)  # fmt: skip
TABLES = (RUNS, STEPS, TRACE_EVENTS, POLICY_DECISIONS, SIDE_EFFECTS, SPEND_RECORDS)

#: the dimensions ``RunStore.spend`` sums, in its order
SPEND_DIMENSIONS = (
    "tokens",
    "input_tokens",
    "output_tokens",
    "model_calls",
    "tool_calls",
    "retries",
    "wall_clock_ms",
    "cost_micro_usd",
    "delegations",
)

# --- database URLs, read as SQLAlchemy reads them ---------------------------------------------

#: SQLAlchemy's URL grammar (``sqlalchemy.engine.url._parse_url``)
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
_SQLITE = ("sqlite", "sqlite+pysqlite")
#: what ``runtime.store.db.make_engine`` runs on psycopg
_POSTGRES = ("postgresql", "postgres", "postgresql+psycopg")


@dataclass(frozen=True)
class Target:
    """Where a database URL points: a SQLite file, or psycopg's connection arguments."""

    dialect: str
    #: SQLite: the file (absolute)
    path: str = ""
    #: PostgreSQL: ``psycopg.connect`` keyword arguments, as SQLAlchemy passes them
    params: dict[str, Any] = field(default_factory=dict)


def target(url: str) -> Target | None:
    """What SQLAlchemy would connect to for ``url``; None for a form not translated here
    (another driver, SQLite in memory or with options, several PostgreSQL hosts)."""
    m = _URL.match(url)
    if m is None:
        return None
    parts = m.groupdict()
    name, query = parts["name"], parts["query"]
    host = parts["ipv4host"] or parts["ipv6host"]
    database = unquote(parts["database"]) if parts["database"] is not None else None
    if name in _SQLITE:
        if query is not None or host or parts["username"] is not None or parts["port"]:
            return None
        if not database or database == ":memory:":
            return None
        return Target("sqlite", path=os.path.abspath(database))
    if name not in _POSTGRES:
        return None
    params: dict[str, Any] = {}
    for key, value in (
        ("user", parts["username"]),
        ("password", parts["password"]),
        ("host", host),
        ("dbname", database),
    ):
        if value is not None:
            params[key] = unquote(value) if key in ("user", "password") else value
    if parts["port"]:
        if not parts["port"].isdigit():
            return None
        params["port"] = int(parts["port"])
    if query is not None:
        pairs = parse_qsl(query)
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys) or "host" in keys or "port" in keys:
            return None  # several hosts: SQLAlchemy joins them its own way
        params.update(pairs)
    return Target("postgresql", params=params)


# --- the reads ----------------------------------------------------------------------------------


class PlainReads:
    """``RunStore``'s reads for views, read-only, on the DB-API driver.

    Every method returns what the ``RunStore`` method of the same name returns for the
    same arguments (``columns`` narrows the row to what a view shows)."""

    def __init__(self, conn: Any, dialect: str, tables: dict[str, set[str]]) -> None:
        self._conn = conn
        self.dialect = dialect
        #: the tables that exist, with their columns
        self.tables = tables

    @classmethod
    def open(cls, url: str) -> PlainReads | None:
        """A reader for the database at ``url``, or None when the store must read it."""
        where = target(url)
        if where is None:
            return None
        if where.dialect == "sqlite":
            if not os.path.exists(where.path):
                return cls(None, "sqlite", {})  # not created yet: no runs, and none made
            import sqlite3

            # mode=rw never creates the file (and opens a write-protected one read-only)
            conn: Any = sqlite3.connect(
                f"file:{quote(where.path)}?mode=rw",
                uri=True,
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            import psycopg

            conn = psycopg.connect(**where.params, autocommit=True)
        reads = cls(conn, where.dialect, {})
        try:
            reads.tables = reads._existing_tables()
        except BaseException:
            reads.close()
            raise
        if reads.tables and reads._version() != HEAD:
            # not at the code's schema revision (older, unversioned, unknown): the store
            # decides - it stamps tables that match, or refuses naming agentrt db upgrade
            reads.close()
            return None
        return reads

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _version(self) -> str | None:
        """The schema revision the database records (None: no version table)."""
        if VERSION_TABLE not in self.tables:
            return None
        rows = self._execute(f"SELECT version_num FROM {VERSION_TABLE}", ())
        return str(rows[0][0]) if len(rows) == 1 else None

    def _existing_tables(self) -> dict[str, set[str]]:
        names = [t.name for t in TABLES] + [VERSION_TABLE]
        if self.dialect == "sqlite":
            marks = ", ".join("?" for _ in names)
            sql = (
                "SELECT m.name, p.name FROM sqlite_master AS m "
                "JOIN pragma_table_info(m.name) AS p "
                f"WHERE m.type = 'table' AND m.name IN ({marks})"
            )
            params: Sequence[Any] = names
        else:
            # the tables the search path finds first, as an unqualified name resolves
            sql = (
                "SELECT c.relname, a.attname FROM pg_catalog.pg_class AS c "
                "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid "
                "WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p') "
                "AND pg_catalog.pg_table_is_visible(c.oid) "
                "AND a.attnum > 0 AND NOT a.attisdropped"
            )
            params = [names]
        tables: dict[str, set[str]] = {}
        for table, column in self._execute(sql, params):
            tables.setdefault(str(table), set()).add(str(column))
        return tables

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _rows(
        self,
        table: Table,
        where: Sequence[tuple[str, Sequence[Any]]] = (),
        order: str = "",
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """``SELECT columns FROM table WHERE ... ORDER BY ... LIMIT ...``, decoded. Each
        condition is SQL with ``?`` for its parameters."""
        if self._conn is None or table.name not in self.tables:
            return []
        names = tuple(columns or table.columns)
        sql = f"SELECT {', '.join(_quoted(n) for n in names)} FROM {table.name}"
        params: list[Any] = []
        if where:
            sql += " WHERE " + " AND ".join(condition for condition, _ in where)
            for _, values in where:
                params.extend(values)
        if order:
            sql += f" ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if self.dialect != "sqlite":
            sql = sql.replace("?", "%s")  # no literal ? in these statements
        return [
            self._decoded(table, dict(zip(names, r, strict=True)))
            for r in self._execute(sql, params)
        ]

    def _decoded(self, table: Table, row: dict[str, Any]) -> dict[str, Any]:
        for name in row.keys() & (table.json | table.times | table.flags):
            value = row[name]
            if name in table.flags:
                row[name] = None if value is None else bool(value)
            elif self.dialect == "sqlite":
                row[name] = decode(value, json_column=name in table.json)
            elif name in table.times:
                row[name] = in_utc(value)
        return row

    # --- RunStore's reads -------------------------------------------------------------------
    def list_runs(
        self,
        tenant_id: str | None = None,
        status: str | None = None,
        route: str | None = None,
        limit: int = 50,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``status="unknown"``: runs whose status this version does not know."""
        where: list[tuple[str, Sequence[Any]]] = []
        if tenant_id:
            where.append(("tenant_id = ?", [tenant_id]))
        if status == RunStatus.UNKNOWN.value:
            marks = ", ".join("?" for _ in KNOWN_STATUSES)
            where.append((f"status NOT IN ({marks})", KNOWN_STATUSES))
        elif status:
            where.append(("status = ?", [status]))
        if route:
            where.append(("route = ?", [route]))
        return self._rows(RUNS, where, "created_at DESC", limit, columns)

    def read_run(
        self, run_id: str, tenant_id: str | None = None, columns: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The run (within ``tenant_id`` if given); ``RunNotFound`` if there is none."""
        where = _run_scope(run_id, tenant_id)
        rows = self._rows(RUNS, where, columns=columns)
        if not rows:
            raise RunNotFound(run_id)
        return rows[0]

    def steps(self, run_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        return self._rows(STEPS, _run_scope(run_id, tenant_id), "step_no")

    def trace(self, run_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        return self._rows(TRACE_EVENTS, _run_scope(run_id, tenant_id), "id")

    def policy_decisions(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows(POLICY_DECISIONS, [("run_id = ?", [run_id])], "id")

    def side_effects(self, run_id: str) -> list[dict[str, Any]]:
        where = [("run_id = ?", [run_id])] if run_id else []
        return self._rows(SIDE_EFFECTS, where, "id")

    def spend(self, run_id: str) -> dict[str, int]:
        """Sum of the run's spend records, per dimension."""
        if self._conn is None or SPEND_RECORDS.name not in self.tables:
            return dict.fromkeys(SPEND_DIMENSIONS, 0)
        sums = ", ".join(f"COALESCE(SUM({_quoted(d)}), 0)" for d in SPEND_DIMENSIONS)
        sql = f"SELECT {sums} FROM {SPEND_RECORDS.name}"
        params: list[Any] = []
        if run_id:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        if self.dialect != "sqlite":
            sql = sql.replace("?", "%s")
        row = self._execute(sql, params)[0]
        return {d: int(v) for d, v in zip(SPEND_DIMENSIONS, row, strict=True)}


def _run_scope(run_id: str, tenant_id: str | None) -> list[tuple[str, Sequence[Any]]]:
    where: list[tuple[str, Sequence[Any]]] = [("run_id = ?", [run_id])]
    if tenant_id is not None:
        where.append(("tenant_id = ?", [tenant_id]))
    return where


def _quoted(name: str) -> str:
    return f'"{name}"'
