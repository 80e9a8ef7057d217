"""Why a freshly forked pool process can hang in its first SQLite statement until the hard
time limit, deaf to the soft one (seen once in the worker-lost test: a copy ran 24 s without
reaching its tool, past its 22 s soft limit).

A worker's main process uses SQLite from other threads (the pump dead-letters, the
reconciler) while Celery's pool forks replacement children from the main thread. A fork
made while one of those threads is inside a SQLite transaction copies libsqlite3's
in-process lock bookkeeping (the inode's and WAL index's lock masks) into the child, but
not the file locks themselves, nor the connection that would release them. The child's own
new connection then finds the database "locked by this process" for good, and
``sqlite3BtreeBeginTrans`` spins in the busy handler (``usleep`` in C) for the whole
``busy_timeout`` (30 s in ``runtime.store.db``). Python signal handlers, and so Celery's
SoftTimeLimitExceeded, run only when that C call returns: the hard limit (24 s) comes first.

Run: ``python -m bench.sqlite_fork_hazard [forks]``. It prints how many forked children
hung with and without a guard: SQL in the parent holds a share of a condition, and an
``os.register_at_fork`` ``before`` hook waits (bounded) until no share is held. Measured
on a shared 2-core machine with tests running beside it, a child counted as hung when it
had not finished within 3 s: unguarded 43/100, 43/60, 46/60; guarded 0/100, 1/60, 4/60
(and 0/150 with a 10 s alarm, so the guarded ones were slow, not stuck). gdb on a stuck
child: usleep <- sqlite3InvokeBusyHandler <- sqlite3BtreeBeginTrans <- sqlite3_step.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path


class ForkGuard:
    """SQL work holds a share; a fork waits until none is held (at most ``wait_s``)."""

    def __init__(self, wait_s: float = 5.0) -> None:
        self.wait_s = wait_s
        self._reset()
        os.register_at_fork(
            before=self._before, after_in_parent=self._after_parent, after_in_child=self._reset
        )

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._forking = False

    def enter(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._forking)
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _before(self) -> None:
        self._cond.acquire()
        self._forking = True
        self._cond.wait_for(lambda: self._active == 0, timeout=self.wait_s)

    def _after_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()


def _hung_children(db: Path, forks: int, guard: ForkGuard | None) -> int:
    with sqlite3.connect(db) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE IF NOT EXISTS t (x)")
    stop = threading.Event()

    def writer() -> None:  # the main process's pump thread, writing
        conn = sqlite3.connect(db, check_same_thread=False)
        while not stop.is_set():
            if guard:
                guard.enter()
            try:
                conn.execute("INSERT INTO t VALUES (1)")
                conn.commit()
            finally:
                if guard:
                    guard.leave()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.2)
    hung = 0
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:  # a new pool process: its own connection, one write
            signal.alarm(3)  # stands in for the hard time limit
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("INSERT INTO t VALUES (2)")
            conn.commit()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        hung += int(os.WIFSIGNALED(status))
    stop.set()
    thread.join()
    return hung


def main() -> None:
    forks = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as home:
        print(f"unguarded: {_hung_children(Path(home, 'a.db'), forks, None)}/{forks} hung")
        print(f"guarded:   {_hung_children(Path(home, 'b.db'), forks, ForkGuard())}/{forks} hung")


if __name__ == "__main__":
    main()
