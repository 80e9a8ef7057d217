"""A fork waits until no SQLite connection of this process is in use.

SQLite keeps its file-lock bookkeeping in process memory. A process that forks while one of
its threads holds a SQLite transaction (a worker's main process: the pump and the
reconciler write from threads while the prefork pool forks replacement children) hands
the child a record that the database is locked, without the lock: the child's first
statement then waits in C for the whole ``busy_timeout``, deaf to the soft time limit, and
is killed by the hard one (``bench/sqlite_fork_hazard.py`` reproduces it). So SQL work on
a SQLite engine holds a share from checkout to checkin, and ``os.fork`` waits - at most
``WAIT_S``, then forks anyway, never a deadlock - until no share is held.
"""

from __future__ import annotations

import os
import threading

#: the longest a fork waits for SQL work in flight (a stuck share must not stop forking)
WAIT_S = 10.0


class ForkGuard:
    def __init__(self, wait_s: float = WAIT_S) -> None:
        self.wait_s = wait_s
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._forking = False
        #: forks waiting for SQL work to finish now (tests look at it)
        self.waiting = 0

    def enter(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._forking)
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active = max(self._active - 1, 0)
            self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        self.waiting += 1
        self._cond.wait_for(lambda: self._active == 0, timeout=self.wait_s)
        self.waiting -= 1

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        # the child has none of the parent's threads, so none of their shares
        self._reset()


GUARD = ForkGuard()
os.register_at_fork(
    before=GUARD.before_fork,
    after_in_parent=GUARD.after_fork_in_parent,
    after_in_child=GUARD.after_fork_in_child,
)
