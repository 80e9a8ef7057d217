"""Global rate limits (GCRA) and tool bulkheads, shared by every worker through Redis.

Celery's ``rate_limit`` is per worker process and holds a prefetch slot while it waits;
these are global and a limited step waits outside any slot (it is re-queued with a
not-before time). Limits come from the config: ``models.<m>.requests_rate`` /
``tokens_rate`` and ``tools.<t>.rate_limit`` / ``max_concurrency``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from runtime import scripts
from runtime.config import RateLimit
from runtime.keys import Keys


def model_requests(model: str) -> str:
    """Limiter name of a model's requests (one name for the step runner and the view)."""
    return f"model:{model}:requests"


def model_tokens(model: str) -> str:
    return f"model:{model}:tokens"


def tool_calls(tool: str) -> str:
    return f"tool:{tool}"


@dataclass(frozen=True)
class Take:
    name: str
    limit: RateLimit
    quantity: int = 1


class Limiter:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._gcra = scripts.register(client, scripts.lua("runtime.scheduling", "gcra.lua"))
        self._bulkhead = scripts.register(client, scripts.lua("runtime.scheduling", "bulkhead.lua"))

    def take(self, takes: list[Take]) -> float:
        """Take from every limiter or none; returns 0, or seconds until it would succeed."""
        if not takes:
            return 0.0
        keys: list[str] = []
        args: list[Any] = []
        for take in takes:
            interval = take.limit.period_s * 1000 / take.limit.limit
            keys.append(self.keys.rate_limit(take.name))
            # a take larger than the burst could never pass: it takes the whole burst
            args += [
                interval,
                interval * (take.limit.burst - 1),
                min(take.quantity, take.limit.burst),
            ]
        ok, retry_ms = self._gcra(keys=keys, args=args)
        return 0.0 if int(ok) == 1 else int(retry_ms) / 1000

    def give_back(self, name: str, limit: RateLimit, quantity: int) -> None:
        """Return unused quantity (tokens reserved above what a call used)."""
        if quantity > 0:
            interval = limit.period_s * 1000 / limit.limit
            self._gcra(keys=[self.keys.rate_limit(name)], args=[interval, 0, -quantity])

    def state(self, name: str) -> float | None:
        """Milliseconds the limiter's schedule runs ahead of now (None if idle)."""
        raw = self.redis.get(self.keys.rate_limit(name))
        return None if raw is None else float(raw)

    def enter_bulkhead(self, tool: str, call_id: str, limit: int, ttl_ms: int) -> float:
        """Take a place among the tool's concurrent calls; 0, or seconds to wait."""
        ok, retry_ms = self._bulkhead(
            keys=[self.keys.bulkhead(tool)], args=[call_id, limit, ttl_ms]
        )
        return 0.0 if int(ok) == 1 else int(retry_ms) / 1000

    def leave_bulkhead(self, tool: str, call_id: str) -> None:
        self.redis.zrem(self.keys.bulkhead(tool), call_id)
