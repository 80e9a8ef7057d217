"""Leases with fencing tokens: tool locks (``ticket:{ticket_id}``) and a run's step lease.

A lease expires on its own (a crashed holder cannot block others forever) and every grant
gets a fencing token from a counter that only grows. A holder that stalled past its lease
may still act, so protected resources compare tokens and refuse older ones (see the demo
``tickets.update`` tool).

Owners are ``host|pid|nonce``: when the holder is a dead process on this same host (a
SIGKILLed pool child whose step Celery re-sent at once) the lease is taken over right away
instead of after its ttl.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from runtime import scripts
from runtime.keys import Keys

_HOST = socket.gethostname()


def new_owner() -> str:
    return f"{_HOST}|{os.getpid()}|{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """True only when we can prove it: same host, and no process with that pid.

    The owner ends in ``host|pid|nonce``; anything before is a caller's prefix (tool locks
    are held by ``<run>:<step>|host|pid|nonce``)."""
    parts = owner.split("|")
    if len(parts) < 3:
        return False
    host, pid_s = parts[-3], parts[-2]
    try:
        pid = int(pid_s)
    except ValueError:
        return False
    if host != _HOST or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Lease:
    key: str
    owner: str
    fencing_token: int


@dataclass(frozen=True)
class Busy:
    key: str
    holder: str
    retry_after_ms: int


class LeaseManager:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._acquire = scripts.register(client, scripts.lua("runtime.locks", "acquire.lua"))
        self._release = scripts.register(client, scripts.lua("runtime.locks", "release.lua"))
        self._steal = scripts.register(client, scripts.lua("runtime.locks", "steal.lua"))
        self._renew = scripts.register(client, scripts.lua("runtime.locks", "renew.lua"))

    def _take(self, key: str, fence_key: str, owner: str, ttl_ms: int) -> Lease | Busy:
        res = self._acquire(keys=[key, fence_key], args=[owner, ttl_ms])
        return self._interpret(res, key, fence_key, owner, ttl_ms)

    def _interpret(
        self, res: Any, key: str, fence_key: str, owner: str, ttl_ms: int
    ) -> Lease | Busy:
        if int(res[0]) == 1:
            return Lease(key, owner, int(res[1]))
        holder = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        if owner_is_dead(holder):
            stolen = self._steal(keys=[key, fence_key], args=[holder, owner, ttl_ms])
            if int(stolen[0]) == 1:
                return Lease(key, owner, int(stolen[1]))
        return Busy(key, holder, max(int(res[2]), 1))

    def acquire_run_with(
        self, run_id: str, owner: str, ttl_ms: int, also: Callable[[Any], None]
    ) -> tuple[Lease | Busy, list[Any]]:
        """Take the run's lease and run ``also(pipe)``'s commands in the same round trip.
        Returns the lease outcome and the results of the extra commands."""
        key = self.keys.run_lease(run_id)

        def build(pipe: Any) -> None:
            scripts.queue(pipe, self._acquire, [key, key + ":fence"], [owner, ttl_ms])
            also(pipe)

        results = scripts.run_pipeline(self.redis, build)
        return self._interpret(results[0], key, key + ":fence", owner, ttl_ms), results[1:]

    def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> Lease | Busy:
        return self._take(self.keys.lock(name), self.keys.lock_fence(name), owner, ttl_ms)

    def acquire_run(self, run_id: str, owner: str, ttl_ms: int) -> Lease | Busy:
        key = self.keys.run_lease(run_id)
        return self._take(key, key + ":fence", owner, ttl_ms)

    def release(self, lease: Lease) -> bool:
        return bool(self._release(keys=[lease.key], args=[lease.owner]))

    def release_in(self, pipe: Any, lease: Lease) -> None:
        """Queue a release on a pipeline run by ``scripts.run_pipeline``."""
        scripts.queue(pipe, self._release, [lease.key], [lease.owner])

    def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[lease.key], args=[lease.owner, ttl_ms]))
