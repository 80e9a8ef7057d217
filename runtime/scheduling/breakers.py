"""Circuit breakers per tool and per model, shared by every worker through Redis.

``failures`` failed calls within ``window_s`` open a breaker for ``open_s``; after that one
caller is let through as a probe: its success closes the breaker, its failure opens it
again. While a model's breaker is open the route's ``fallback_proposers`` are asked in
order; a tool call (or a step with no fallback left) waits without holding a slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from runtime import scripts
from runtime.config import Breaker
from runtime.keys import Keys


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    #: closed | half_open | open
    state: str
    retry_after_s: float = 0.0


class Breakers:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self.script = scripts.register(client, scripts.lua("runtime.scheduling", "breaker.lua"))

    def _call(self, name: str, op: str, cfg: Breaker, caller: str) -> list[object]:
        args: list[str | int] = [
            op,
            cfg.failures,
            int(cfg.window_s * 1000),
            int(cfg.open_s * 1000),
            caller,
        ]
        keys = [self.keys.breaker(name), self.keys.breaker_failures(name)]
        return list(self.script(keys=keys, args=args))

    def allow(self, name: str, cfg: Breaker | None, caller: str) -> Verdict:
        if cfg is None:
            return Verdict(True, "closed")
        ok, detail = self._call(name, "allow", cfg, caller)
        if int(str(ok)) == 1:
            return Verdict(True, _text(detail))
        return Verdict(False, "open", int(str(detail)) / 1000)

    def record(self, name: str, cfg: Breaker | None, caller: str, ok: bool) -> str:
        if cfg is None:
            return "closed"
        _, state = self._call(name, "success" if ok else "failure", cfg, caller)
        return _text(state)

    def state(self, name: str) -> str:
        raw = self.redis.hget(self.keys.breaker(name), "state")
        return _text(raw) if raw else "closed"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
