"""What a tool gets besides its arguments: identity, idempotency key, fencing token, journal,
and whether its run was cancelled."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis import Redis

from runtime.errors import ToolCancelled
from runtime.keys import Keys

log = logging.getLogger("agentrt.tools")

#: how long journal markers of Redis-resident side effects are kept
JOURNAL_TTL_S = 30 * 86400


@dataclass
class ToolContext:
    run_id: str
    tenant_id: str
    route: str
    step: int
    call_index: int
    #: ``run:step:call``; pass it to external systems that deduplicate (payment APIs do)
    idempotency_key: str
    #: token of the lock this call holds (None without a lock); send it with every write
    fencing_token: int | None
    redis: redis.Redis
    keys: Keys
    #: the runtime's coordination Redis, where an immediate cancel sets the run's switch
    #: (None: the call cannot be cancelled, e.g. a compensation, which runs after a cancel)
    control_redis: Redis | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled immediately while this call runs: one GET, cheap
        enough to poll in a loop. A tool that sees it should stop and commit nothing (raise
        ``ToolCancelled``); ``redis_effect`` refuses to commit once it is set anyway. A
        drain cancel lets the call finish: this stays False."""
        if self.control_redis is None:
            return False
        try:
            return bool(self.control_redis.exists(self.keys.run_cancelled(self.run_id)))
        except redis.RedisError:
            # the runtime's Redis is away (a restart, a failover): the switch cannot be read.
            # The call runs on: the cancel fence in SQL (the claim before it, the checkpoint
            # after it) is what keeps a cancelled run from committing, and a tool must not
            # fail because the coordination store blinked
            log.warning("run %s: cancel switch unreadable; the call goes on", self.run_id)
            return False

    def redis_effect(self, apply: Callable[[Any], None]) -> list[Any]:
        """Run Redis writes exactly once per idempotency key.

        ``apply(pipe)`` queues commands on a MULTI/EXEC pipeline; the runtime adds its
        journal marker to the same transaction, so the writes and the record that they
        happened commit together. On a redelivered step the marker is found and the writes
        are skipped; the first execution's results are returned when they were saved.

        Once the run is cancelled immediately nothing commits (``ToolCancelled``): when the
        switch lives on this same Redis it is watched with the marker, so a cancel that
        lands before the EXEC aborts it.
        """
        marker = self.keys.effect(self.idempotency_key)
        result_key = self.keys.effect_result(self.idempotency_key)
        fence = self.control_redis is self.redis and self.control_redis is not None
        watched = [marker, self.keys.run_cancelled(self.run_id)] if fence else [marker]
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]  # a racing writer aborts our EXEC
                if pipe.exists(marker):
                    return self._saved(result_key)
                if self.cancelled:
                    raise ToolCancelled()
                pipe.multi()
                apply(pipe)
                pipe.set(marker, "1", ex=JOURNAL_TTL_S)
                results = pipe.execute()[:-1]
            except redis.WatchError:
                if self.cancelled:
                    raise ToolCancelled() from None
                return self._saved(result_key)
        plain = [r.decode() if isinstance(r, bytes) else r for r in results]
        self.redis.set(result_key, json.dumps(plain, default=str), ex=JOURNAL_TTL_S)
        return plain

    def _saved(self, result_key: str) -> list[Any]:
        saved = self.redis.get(result_key)
        return list(json.loads(saved)) if saved else []
