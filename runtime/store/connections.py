"""How the store talks to its database: one connection per read or write, autocommit
where one statement is the whole transaction (PostgreSQL), and tolerant reads of cells a
hand edit may have corrupted (SQLite). The row classes of the store share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, Engine, Table, Text, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable, Select
from sqlmodel.sql.sqltypes import UTCDateTime

from runtime.store.cells import decode
from runtime.store.prepared import PreparedStatements
from runtime.store.tables import runs_t


class StoreConnections:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # the step's hot statements (load, start, checkpoint) as driver SQL built once
        self._sql = PreparedStatements(engine.dialect)
        # SQLite begins every transaction itself (runtime.store.db), autocommit or not
        self._autocommit_reads = engine.dialect.name == "postgresql"
        # PostgreSQL: a write of the step (start, read-tool decisions, checkpoint) is one
        # statement (data-modifying CTEs where it spans tables), in autocommit
        self._one_statement_writes = engine.dialect.name == "postgresql"

    @contextmanager
    def _read_one(self) -> Iterator[Connection]:
        """A connection for one statement. On PostgreSQL it runs in autocommit: one
        statement is atomic and consistent on its own, and a transaction around it would
        cost two more round trips (BEGIN, and COMMIT or the rollback on return)."""
        conn = self.engine.connect()
        if self._autocommit_reads:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:
            yield conn

    @contextmanager
    def _write_one(self) -> Iterator[Connection]:
        """A connection for a write of ONE statement. On PostgreSQL it runs in autocommit:
        the statement is its own transaction (all or nothing, durable when it returns),
        without the BEGIN and COMMIT round trips; elsewhere a write transaction as usual."""
        if not self._one_statement_writes:
            with self._write() as conn:
                yield conn
            return
        with self.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT", write=True
        ) as conn:
            yield conn
            # the statement committed itself: this sends nothing, and lets the engine's
            # events (the bench's census) see the write commit
            conn.commit()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    def _tolerant_select(self, table: Table = runs_t) -> Select[Any]:
        if self.engine.dialect.name != "sqlite":
            return select(table)  # PostgreSQL enforces its column types on write
        return select(
            *[
                type_coerce(c, Text).label(c.name) if isinstance(c.type, JSON | UTCDateTime) else c
                for c in table.c
            ]
        )

    def _read(self, query: Executable, table: Table = runs_t) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        if self.engine.dialect.name == "sqlite":
            for row in rows:
                for c in table.c:
                    if isinstance(c.type, JSON | UTCDateTime):
                        row[c.name] = decode(row[c.name], json_column=isinstance(c.type, JSON))
        return rows
