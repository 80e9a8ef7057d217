"""The step's hot SQL as driver statements, built once per shape and reused.

A step reads its run and checkpoints it: a handful of statements whose text never changes
between steps. Built as SQLAlchemy constructs on every call, most of their cost was
SQLAlchemy's own Python (building the construct, its cache key, the compiled-cache
lookup), not the database. Here each statement's text is rendered once per shape (table
and column set) in the driver's parameter style and run with ``exec_driver_sql``, so a
step pays only the driver call. Values go through the same type processors SQLAlchemy
applies (``TypeEngine._cached_bind_processor`` / ``_cached_result_processor``), so what
is stored and what is read back is exactly what the Core statements stored and read, and
the transaction, error wrapping (``IntegrityError``), ``hide_parameters`` and the
engine's events (which the bench's census counts) are SQLAlchemy's as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

_Processor = Callable[[Any], Any] | None


#: a CTE that turns ``synchronous_commit`` off for the statement's own transaction only
_NOSYNC = "nosync AS (SELECT set_config('synchronous_commit', 'off', true))"


@dataclass(frozen=True)
class _Insert:
    sql: str
    #: (column, bind processor, default for a row that lacks the column)
    columns: tuple[tuple[str, _Processor, Any], ...]


_NO_DEFAULT = object()
#: a status rendered into SQL text: the runtime's own constants only
_STATUS_LITERAL = re.compile(r"^[a-z_]+$")


def _python_default(column: Any) -> Any:
    """The value SQLAlchemy would insert for an absent column (a scalar default), or
    ``_NO_DEFAULT`` when it would leave the column out (server default / NULL)."""
    default = column.default
    if default is None or not getattr(default, "is_scalar", False):
        return _NO_DEFAULT
    return default.arg


class PreparedStatements:
    """Driver SQL for one dialect: inserts by column set, the run row's read and update."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._named = dialect.paramstyle in ("named", "qmark", "numeric")
        self._quote = dialect.identifier_preparer.quote
        self._inserts: dict[tuple[str, frozenset[str], bool], _Insert] = {}
        self._updates: dict[tuple[str, frozenset[str], str, tuple[str, ...]], str] = {}
        self._selects: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self._results: dict[str, tuple[tuple[str, _Processor], ...]] = {}
        self._binds: dict[tuple[str, str], _Processor] = {}
        self._casts: dict[str, dict[str, str]] = {}

    # --- parameters and values -------------------------------------------------------
    def param(self, name: str) -> str:
        # sqlite3 takes :name with a dict whatever its declared paramstyle; psycopg %(name)s
        return f":{name}" if self._named else f"%({name})s"

    def _bind(self, table: Table, name: str) -> _Processor:
        key = (table.name, name)
        if key not in self._binds:
            self._binds[key] = table.c[name].type._cached_bind_processor(self.dialect)
        return self._binds[key]

    def _result_columns(self, table: Table) -> tuple[tuple[str, _Processor], ...]:
        cols = self._results.get(table.name)
        if cols is None:
            cols = tuple(
                (c.name, c.type._cached_result_processor(self.dialect, None)) for c in table.c
            )
            self._results[table.name] = cols
        return cols

    def _row(self, table: Table, values: Any) -> dict[str, Any]:
        """A fetched row (in ``table.c`` order) as the Core select returned it."""
        out = {}
        for (name, proc), value in zip(self._result_columns(table), values, strict=True):
            out[name] = proc(value) if proc is not None else value
        return out

    # --- INSERT --------------------------------------------------------------------
    def _insert_for(self, table: Table, keys: frozenset[str], ignore: bool = False) -> _Insert:
        key = (table.name, keys, ignore)
        stmt = self._inserts.get(key)
        if stmt is None:
            columns = []
            for c in table.c:
                default = _python_default(c)
                if c.name in keys or default is not _NO_DEFAULT:
                    columns.append((c.name, self._bind(table, c.name), default))
            sql = "INSERT INTO {} ({}) VALUES ({})".format(
                self._quote(table.name),
                ", ".join(self._quote(name) for name, _, _ in columns),
                ", ".join(self.param(name) for name, _, _ in columns),
            )
            if ignore:  # SQLite and PostgreSQL both: a row whose unique key exists is skipped
                sql += " ON CONFLICT DO NOTHING"
            stmt = self._inserts[key] = _Insert(sql, tuple(columns))
        return stmt

    def insert(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        *,
        ignore_conflicts: bool = False,
    ) -> None:
        """``conn.execute(insert(table), rows)``: one executemany per column set.
        ``ignore_conflicts``: rows whose unique key is already stored are skipped."""
        shapes: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            shapes.setdefault(frozenset(row), []).append(row)
        for keys, group in shapes.items():
            stmt = self._insert_for(table, keys, ignore_conflicts)
            params = [self._values(stmt.columns, row) for row in group]
            conn.exec_driver_sql(stmt.sql, params[0] if len(params) == 1 else params)

    @staticmethod
    def _values(
        columns: Iterable[tuple[str, _Processor, Any]], row: dict[str, Any]
    ) -> dict[str, Any]:
        out = {}
        for name, proc, default in columns:
            value = row.get(name, default)
            if value is _NO_DEFAULT:  # rows of several shapes in one statement: NULL
                value = None
            out[name] = proc(value) if proc is not None else value
        return out

    # --- the run row ---------------------------------------------------------------
    def select_by(
        self, conn: Connection, table: Table, where: dict[str, Any]
    ) -> dict[str, Any] | None:
        """``select(table).where(col == value, ...)``: the first row, or None."""
        key = (table.name, "select", tuple(where))
        sql = self._selects.get(key)
        if sql is None:
            sql = self._selects[key] = "SELECT {} FROM {} WHERE {}".format(
                ", ".join(self._quote(c.name) for c in table.c),
                self._quote(table.name),
                " AND ".join(f"{self._quote(k)} = {self.param('w_' + k)}" for k in where),
            )
        params = {f"w_{k}": self._bind_value(table, k, v) for k, v in where.items()}
        fetched = conn.exec_driver_sql(sql, params).first()
        return None if fetched is None else self._row(table, fetched)

    def update(
        self,
        conn: Connection,
        table: Table,
        values: dict[str, Any],
        where: dict[str, Any],
        status_in: Sequence[str] = (),
        *,
        returning: bool = False,
        synchronous: bool = True,
    ) -> tuple[int, dict[str, Any] | None]:
        """``UPDATE table SET values, version = version + 1 WHERE col = value AND ...
        [AND status IN status_in]``: (rows matched, the updated row if ``returning``).
        ``synchronous=False`` on PostgreSQL, for a statement run in autocommit: its commit
        does not wait for the disk (see ``insert_all``)."""
        statuses = tuple(status_in)
        nosync = not synchronous and self.dialect.name == "postgresql"
        key = (
            table.name,
            frozenset(values) | frozenset(f"w:{k}" for k in where),
            repr((returning, nosync)),
            statuses,
        )
        sql = self._updates.get(key)
        if sql is None:
            sql = self._update_text(table, values, where, statuses)
            if nosync:
                head, _, conds = sql.partition(" WHERE ")
                sql = f"WITH {_NOSYNC} {head} FROM nosync WHERE {conds}"
            if returning:
                sql += " RETURNING " + ", ".join(self._quote(c.name) for c in table.c)
            self._updates[key] = sql
        params = {k: self._bind_value(table, k, v) for k, v in values.items()}
        params.update({f"w_{k}": self._bind_value(table, k, v) for k, v in where.items()})
        result = conn.exec_driver_sql(sql, params)
        if not returning:
            return result.rowcount, None
        fetched = result.first()
        return (0, None) if fetched is None else (1, self._row(table, fetched))

    def _bind_value(self, table: Table, name: str, value: Any) -> Any:
        proc = self._bind(table, name)
        return proc(value) if proc is not None else value

    # --- PostgreSQL: a guarded update and its inserts in one statement -------------
    def update_then_insert(
        self,
        conn: Connection,
        table: Table,
        values: dict[str, Any],
        where: dict[str, Any],
        status_in: Sequence[str],
        inserts: Sequence[tuple[Table, Sequence[dict[str, Any]]]],
    ) -> int:
        """PostgreSQL only: ``update`` (version bumped) and, only if it matched, every
        ``(table, rows)`` insert, as ONE statement (data-modifying CTEs, each insert
        selecting from the update's RETURNING). In autocommit that is one round trip and
        one transaction: all of it commits, or none of it (a unique violation fails the
        whole statement). Returns the rows the update matched (0: nothing was written)."""
        params: dict[str, Any] = {}
        update_sql = self._update_text(table, values, where, status_in) + " RETURNING 1 AS ok"
        params.update({k: self._bind_value(table, k, v) for k, v in values.items()})
        params.update({f"w_{k}": self._bind_value(table, k, v) for k, v in where.items()})
        ctes = [f"u AS ({update_sql})"]
        for n, (target, rows) in enumerate(inserts):
            if not rows:
                continue
            ctes.append(f"i{n} AS ({self._insert_select(target, rows, f'i{n}_', params)})")
        sql = "WITH " + ", ".join(ctes) + " SELECT count(*) FROM u"
        return int(conn.exec_driver_sql(sql, params).scalar_one())

    def _update_text(
        self, table: Table, values: dict[str, Any], where: dict[str, Any], statuses: Sequence[str]
    ) -> str:
        sets = [f"{self._quote(k)} = {self.param(k)}" for k in values]
        sets.append(f"{self._quote('version')} = {self._quote('version')} + 1")
        conds = [f"{self._quote(k)} = {self.param('w_' + k)}" for k in where]
        if statuses:
            if not all(_STATUS_LITERAL.match(s) for s in statuses):
                raise ValueError(f"not a status: {statuses!r}")
            listed = ", ".join(f"'{s}'" for s in statuses)
            conds.append(f"{self._quote('status')} IN ({listed})")
        return "UPDATE {} SET {} WHERE {}".format(
            self._quote(table.name), ", ".join(sets), " AND ".join(conds)
        )

    def insert_all(
        self,
        conn: Connection,
        inserts: Sequence[tuple[Table, Sequence[dict[str, Any]]]],
        *,
        synchronous: bool = True,
    ) -> None:
        """PostgreSQL only: every ``(table, rows)`` insert as ONE statement (data-modifying
        CTEs): in autocommit, one round trip and one transaction - a unique violation in
        any of them fails all of them, as it fails a transaction holding them.

        ``synchronous=False``: the statement's transaction commits without waiting for its
        WAL to reach the disk (``synchronous_commit`` off for it alone, set inside the same
        statement). It is visible and survives any client dying at once; only a crash of
        the PostgreSQL server within a few hundred ms could lose it, and the next
        synchronous commit (the step's checkpoint) flushes it with its own."""
        params: dict[str, Any] = {}
        guard = "nosync, " if not synchronous else ""
        parts = [
            self._insert_select(target, rows, f"i{n}_", params, guard=guard)
            for n, (target, rows) in enumerate(inserts)
            if rows
        ]
        if not parts:
            return
        ctes = [f"i{n} AS ({sql})" for n, sql in enumerate(parts[:-1])]
        if not synchronous:
            ctes.insert(0, _NOSYNC)
        sql = ("WITH " + ", ".join(ctes) + " " if ctes else "") + parts[-1]
        conn.exec_driver_sql(sql, params)

    def _insert_select(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]],
        prefix: str,
        params: dict[str, Any],
        guard: str = "u, ",
    ) -> str:
        """``INSERT INTO table (cols) SELECT cols FROM u, (VALUES ...) ORDER BY ord``: rows
        typed by explicit casts (a VALUES list has no target types of its own), inserted in
        their given order (serial ids, e.g. trace events', follow it). ``guard``: the
        update CTE the rows depend on (``""``: none)."""
        keys = frozenset(k for row in rows for k in row)
        stmt = self._insert_for(table, keys)
        names = [name for name, _, _ in stmt.columns]
        casts = self._casts.get(table.name)
        if casts is None:  # compiling a column's type is SQLAlchemy work: once per table
            casts = {c.name: c.type.compile(dialect=self.dialect) for c in table.c}
            self._casts[table.name] = casts
        tuples = []
        for i, row in enumerate(rows):
            processed = self._values(stmt.columns, row)
            cells = [str(i)]
            for j, name in enumerate(names):
                key = f"{prefix}{i}_{j}"
                params[key] = processed[name]
                cells.append(f"CAST({self.param(key)} AS {casts[name]})")
            tuples.append("(" + ", ".join(cells) + ")")
        quoted = [self._quote(n) for n in names]
        return (
            "INSERT INTO {} ({}) SELECT {} FROM {}(VALUES {}) AS v(ord, {}) ORDER BY v.ord".format(
                self._quote(table.name),
                ", ".join(quoted),
                ", ".join(f"v.{q}" for q in quoted),
                guard,
                ", ".join(tuples),
                ", ".join(quoted),
            )
        )
