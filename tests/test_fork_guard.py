"""A process that forks while a thread holds a SQLite transaction must not hand its child
a locked database (runtime.store.fork_guard): the fork waits for the transaction."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import text

from runtime.store import fork_guard
from runtime.store.db import make_engine
from tests.support import wait_for


def test_a_fork_waits_for_a_threads_sqlite_transaction(tmp_path: Path) -> None:
    db = tmp_path / "fork.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:  # the worker's pump thread, inside a write transaction
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(120)

    forked = threading.Event()
    child_status: list[int] = []

    def fork() -> None:  # the pool forking a replacement child
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # a fresh connection, as a new pool process opens; a child given the
                # parent's lock bookkeeping waits here for the whole timeout, then fails
                child = sqlite3.connect(db, timeout=20)
                child.execute("INSERT INTO t VALUES (2)")
                child.commit()
                code = 0
            finally:
                os._exit(code)
        forked.set()
        child_status.append(os.waitpid(pid, 0)[1])

    writing = threading.Thread(target=writer)
    writing.start()
    assert holding.wait(60)
    forking = threading.Thread(target=fork)
    forking.start()
    # the fork must be held back while the transaction is open; without the guard it
    # happens at once, inside the transaction
    wait_for(
        lambda: fork_guard.GUARD.waiting > 0 or forked.is_set(),
        timeout=60,
        message="the fork waiting for the transaction (or forking)",
    )
    assert not forked.is_set(), "forked inside another thread's SQLite transaction"
    release.set()
    writing.join(60)
    forking.join(120)
    assert child_status and os.WIFEXITED(child_status[0]) and os.WEXITSTATUS(child_status[0]) == 0
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT x FROM t")).scalars()) == [1, 2]
    engine.dispose()
