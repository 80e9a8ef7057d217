"""Whether the runtime's Redis state can be trusted: the state generation.

Each time Redis state is built from SQL (the first start, every recovery), a new generation
is recorded in SQL and written into Redis's state markers (``{sched}:state`` and
``{ledger}:state``). The scheduler and ledger scripts refuse to work when their marker is
missing (Redis lost its data) or older than the generation the caller knows from SQL (Redis
was restored from an old snapshot): the state is unknown, so nothing is reserved,
dispatched or executed until recovery has rebuilt it. Fail closed: an empty ledger or an
empty slot table means "unknown", never "unlimited".

Processes learn the generation from SQL and cache it for ``refresh_s`` (a cheap query at
most once a second per process, off the step's hot path); a marker newer than the cached
value triggers a refresh at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from runtime import scripts
from runtime.errors import StateUnknown  # noqa: F401  (re-exported: the state's one error)
from runtime.keys import Keys
from runtime.store.deployment import DeploymentStore

#: how long a process trusts its cached generation before reading SQL again
REFRESH_S = 1.0


class KnownGeneration:
    """The newest state generation recorded in SQL, as this process last read it."""

    def __init__(self, store: DeploymentStore, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._value = 0
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def value(self) -> int:
        if time.monotonic() - self._read_at > self.refresh_s:
            return self.refresh()
        return self._value

    def refresh(self) -> int:
        value = self.store.generation()
        with self._lock:
            self._value = max(self._value, value)
            self._read_at = time.monotonic()
            return self._value

    def saw(self, marker: int) -> None:
        """A marker newer than what this process knows: recovery ran elsewhere."""
        if marker > self._value:
            self.refresh()


class StateMarkers:
    """The two markers in Redis (scheduler and ledger): written together by recovery (or
    the first start) for the server run they are written on, read through a script that
    also checks that run (``lua/state_marker.lua``)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._check = scripts.register(
            client, scripts.lua("runtime.scheduling", "state_check.lua", state_guard=True)
        )
        self._mark = scripts.register(client, scripts.lua("runtime.scheduling", "state_mark.lua"))

    def check_in(self, pipe: Any) -> None:
        """Queue a read of the scheduler marker's generation (0: unknown) on a pipeline run
        by ``scripts.run_pipeline``."""
        scripts.queue(pipe, self._check, [self.keys.sched_state()], [])

    def read(self) -> tuple[int, int]:
        """(scheduler, ledger) marker generations; 0 where the state is unknown."""

        def build(pipe: Any) -> None:
            scripts.queue(pipe, self._check, [self.keys.sched_state()], [])
            scripts.queue(pipe, self._check, [self.keys.ledger_state()], [])

        sched, ledger = scripts.run_pipeline(self.redis, build)
        return int(sched or 0), int(ledger or 0)

    def known(self, generation: int) -> bool:
        """Both markers present, of this server run, and at least ``generation``."""
        lowest = min(self.read())
        return lowest > 0 and lowest >= generation

    def forget_ledger(self) -> None:
        """Make the ledger unknown (recovery, before it reads what it rebuilds): every
        reservation is refused until ``mark_ledger_in`` writes the marker again."""
        self.redis.delete(self.keys.ledger_state())

    def mark_ledger_in(self, pipe: Any, generation: int) -> None:
        """Queue the ledger marker on a (transactional) pipeline: recovery writes it in the
        transaction that rebuilt the ledger."""
        # EVAL with the source: a restarted server may not have the script loaded yet
        pipe.eval(self._mark.script, 1, self.keys.ledger_state(), generation)

    def mark(self, generation: int) -> None:
        def build(pipe: Any) -> None:
            scripts.queue(pipe, self._mark, [self.keys.ledger_state()], [generation])
            scripts.queue(pipe, self._mark, [self.keys.sched_state()], [generation])

        scripts.run_pipeline(self.redis, build)
