"""Engines for SQLite (WAL, the embedded default) and PostgreSQL.

SQLite: WAL so readers never block the writer, ``busy_timeout`` so contending writers wait
instead of failing, and ``BEGIN IMMEDIATE`` for write transactions, because a deferred read
transaction that later writes can fail at once with SQLITE_BUSY whatever the timeout.
Engines are created lazily in each process (after a prefork worker forks).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

from runtime.locations import sqlite_url
from runtime.store import fork_guard


def utcnow() -> datetime:
    """Aware UTC; the columns are ``timestamp with time zone`` (SQLModel's UTCDateTime)."""
    return datetime.now(UTC)


def default_sqlite_url(home: Path) -> str:
    """``runtime.locations.sqlite_url``, with its directory made (for a writer)."""
    home.mkdir(parents=True, exist_ok=True)
    return sqlite_url(home)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    # a statement's parameters (arguments, inputs, secrets kept for a pending call) never
    # appear in an error message, and so never in a log line or a dead-letter entry
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kwargs,
        )
        _tune_sqlite(engine)
        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # no pre-ping: it would add a SELECT 1 to every checkout (three per step); a dropped
    # connection surfaces as OperationalError, which the step task retries
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


#: how long a new connection retries switching a database to WAL while another holds it
WAL_SWITCH_WAIT_S = 30.0


def _journal_mode_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``. On a new database that other processes open at the same
    moment, SQLite answers "database is locked" at once, without the busy handler (the
    switch needs an exclusive lock): retry, bounded like ``busy_timeout``."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # hand transaction control to SQLAlchemy's "begin" event below
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _journal_mode_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    # a fork waits while a connection is in use (runtime.store.fork_guard says why)
    event.listen(engine, "checkout", lambda *_: fork_guard.GUARD.enter())
    event.listen(engine, "checkin", lambda *_: fork_guard.GUARD.leave())

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
