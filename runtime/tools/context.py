"""What a tool gets besides its arguments: identity, idempotency key, fencing token, journal."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from runtime.keys import Keys

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

    def redis_effect(self, apply: Callable[[Any], None]) -> list[Any]:
        """Run Redis writes exactly once per idempotency key.

        ``apply(pipe)`` queues commands on a MULTI/EXEC pipeline; the runtime adds its
        journal marker to the same transaction, so the writes and the record that they
        happened commit together. On a redelivered step the marker is found and the writes
        are skipped; the first execution's results are returned when they were saved.
        """
        marker = self.keys.effect(self.idempotency_key)
        result_key = self.keys.effect_result(self.idempotency_key)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(marker)  # type: ignore[no-untyped-call]  # a racing copy aborts our EXEC
                if pipe.exists(marker):
                    return self._saved(result_key)
                pipe.multi()
                apply(pipe)
                pipe.set(marker, "1", ex=JOURNAL_TTL_S)
                results = pipe.execute()[:-1]
            except redis.WatchError:
                return self._saved(result_key)
        plain = [r.decode() if isinstance(r, bytes) else r for r in results]
        self.redis.set(result_key, json.dumps(plain, default=str), ex=JOURNAL_TTL_S)
        return plain

    def _saved(self, result_key: str) -> list[Any]:
        saved = self.redis.get(result_key)
        return list(json.loads(saved)) if saved else []
