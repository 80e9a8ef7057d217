"""Live controls: the kill switches an operator sets in Redis (run cancelled, route
stopped, tool disabled), read by admission and by every step."""

from __future__ import annotations

from typing import Any

import redis

from runtime.keys import Keys

#: (cancelled, route stopped, tools disabled live)
LiveControls = tuple[bool, bool, frozenset[str]]


class Controls:
    def __init__(self, *, redis: redis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def live_controls(self, run_id: str, route: str, tools: list[str]) -> LiveControls:
        """(cancelled, route stopped, tools disabled) from the kill switches: one round trip."""
        return self.parse_controls(self.redis.mget(self.control_keys(run_id, route, tools)), tools)

    def control_keys(self, run_id: str, route: str, tools: list[str]) -> list[str]:
        """The keys ``parse_controls`` reads, in its order (a step reads them in the round
        trip that takes its lease)."""
        keys = [self.keys.run_cancelled(run_id), self.keys.route_stopped(route)]
        return keys + [self.keys.tool_disabled(t) for t in tools]

    @staticmethod
    def parse_controls(values: list[Any], tools: list[str]) -> LiveControls:
        disabled = frozenset(t for t, v in zip(tools, values[2:], strict=True) if v)
        return bool(values[0]), bool(values[1]), disabled

    def route_stopped(self, route: str) -> bool:
        return bool(self.redis.exists(self.keys.route_stopped(route)))
