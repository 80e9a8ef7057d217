"""Leases with fencing tokens: tool locks (``ticket:{ticket_id}``) and a run's step lease.

A lease expires on its own (a crashed holder cannot block others forever) and every grant
gets a fencing token from a counter that only grows. A holder that stalled past its lease
may still act, so protected resources compare tokens and refuse older ones (see the demo
``tickets.update`` tool).

Owners are ``[<prefix>|]<instance>|<nonce>``: the instance id of the process
(``runtime.locks.identity``), never a host name and pid. A lease is taken over before its
ttl only from an owner **known dead** (its instance's heartbeat key is gone), e.g. a
SIGKILLed pool process whose step Celery re-sent at once (its parent declares it dead) or a
worker whose heartbeat expired.

The check and the takeover are two steps, because the heartbeat key (``{sched}`` slot) and
the lease (``{lock:<name>}`` / ``{run:<id>}`` slot) cannot be read by one script in Redis
Cluster: the heartbeat is checked here, then ``steal.lua`` replaces the lease only if it
still names the owner that was seen dead. Between the two the owner cannot come back
(heartbeats are refreshed with PEXPIRE, which never re-creates an expired key: a dead
instance stays dead), and if the lease changed hands meanwhile the steal does nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from runtime import scripts
from runtime.keys import Keys
from runtime.locks.identity import Liveness, owner_instance

#: heartbeat ttl when the caller gives none (``scheduling.worker_dead_after_s``)
DEFAULT_DEAD_AFTER_MS = 8000


@dataclass(frozen=True)
class Lease:
    key: str
    owner: str
    fencing_token: int
    #: taken over from an owner known dead (whatever it was doing did not finish)
    taken_over: bool = False


@dataclass(frozen=True)
class Busy:
    key: str
    holder: str
    retry_after_ms: int


class LeaseManager:
    def __init__(
        self, client: redis.Redis, keys: Keys, dead_after_ms: int = DEFAULT_DEAD_AFTER_MS
    ) -> None:
        self.redis = client
        self.keys = keys
        self.liveness = Liveness.shared(client, keys, dead_after_ms)
        self._acquire = scripts.register(client, scripts.lua("runtime.locks", "acquire.lua"))
        self._release = scripts.register(client, scripts.lua("runtime.locks", "release.lua"))
        self._steal = scripts.register(client, scripts.lua("runtime.locks", "steal.lua"))
        self._renew = scripts.register(client, scripts.lua("runtime.locks", "renew.lua"))

    def owner(self, prefix: str = "") -> str:
        """A new owner name for one acquisition by this process: ``[<prefix>|]<instance>|
        <nonce>``. The instance is registered (its heartbeat written) before it is used."""
        instance = self.liveness.instance()
        nonce = secrets.token_hex(6)
        return f"{prefix}|{instance}|{nonce}" if prefix else f"{instance}|{nonce}"

    def _take(self, key: str, fence_key: str, owner: str, ttl_ms: int) -> Lease | Busy:
        res = self._acquire(keys=[key, fence_key], args=[owner, ttl_ms])
        return self._interpret(res, key, fence_key, owner, ttl_ms)

    def _interpret(
        self, res: Any, key: str, fence_key: str, owner: str, ttl_ms: int
    ) -> Lease | Busy:
        if int(res[0]) == 1:
            return Lease(key, owner, int(res[1]))
        holder = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        if self.liveness.known_dead(owner_instance(holder)):
            stolen = self._steal(keys=[key, fence_key], args=[holder, owner, ttl_ms])
            if int(stolen[0]) == 1:
                return Lease(key, owner, int(stolen[1]), taken_over=True)
        return Busy(key, holder, max(int(res[2]), 1))

    def acquire_run_with(
        self, run_id: str, owner: str, ttl_ms: int, also: Callable[[Any], None]
    ) -> tuple[Lease | Busy, list[Any]]:
        """Take the run's lease and run ``also(pipe)``'s commands in the same round trip.
        Returns the lease outcome and the results of the extra commands."""
        key, fence = self.keys.run_lease(run_id), self.keys.run_lease_fence(run_id)

        def build(pipe: Any) -> None:
            scripts.queue(pipe, self._acquire, [key, fence], [owner, ttl_ms])
            also(pipe)

        # idempotent: the owner may take its lease again, and ``also`` must only renew or
        # read (a step's first round trip)
        results = scripts.run_pipeline(self.redis, build, idempotent=True)
        return self._interpret(results[0], key, fence, owner, ttl_ms), results[1:]

    def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> Lease | Busy:
        return self._take(self.keys.lock(name), self.keys.lock_fence(name), owner, ttl_ms)

    def acquire_run(self, run_id: str, owner: str, ttl_ms: int) -> Lease | Busy:
        return self._take(
            self.keys.run_lease(run_id), self.keys.run_lease_fence(run_id), owner, ttl_ms
        )

    def release(self, lease: Lease) -> bool:
        return bool(self._release(keys=[lease.key], args=[lease.owner]))

    def release_in(self, pipe: Any, lease: Lease) -> None:
        """Queue a release on a pipeline run by ``scripts.run_pipeline``."""
        scripts.queue(pipe, self._release, [lease.key], [lease.owner])

    def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[lease.key], args=[lease.owner, ttl_ms]))
