"""Live controls: the switches an operator sets in Redis (run cancelled immediately, run
paused, route stopped, tool disabled), read by admission and by every step.

They are signals, not the truth: a cancel or a pause is recorded in SQL first (the run's
status, the fence every claim and checkpoint reads), and the switch only lets a step in
flight - and a tool polling ``ctx.cancelled`` - learn it without a database read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import redis

from runtime.keys import Keys

#: how long a switch outlives the request that set it (the run has long ended by then)
SWITCH_TTL_S = 7 * 86400


class ControlsRead(NamedTuple):
    """What the switches say about one step, read in one round trip."""

    #: the actor of an immediate cancel, or None
    cancelled_by: str | None
    route_stopped: bool
    disabled_tools: frozenset[str]
    #: the actor of a pause not yet landed in SQL, or None
    paused_by: str | None = None


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


class Controls:
    def __init__(self, *, redis: redis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def live_controls(self, run_id: str, route: str, tools: list[str]) -> ControlsRead:
        """The switches for a step: one round trip."""
        return self.parse_controls(self.redis.mget(self.control_keys(run_id, route, tools)), tools)

    def control_keys(self, run_id: str, route: str, tools: list[str]) -> list[str]:
        """The keys ``parse_controls`` reads, in its order (a step reads them in the round
        trip that takes its lease)."""
        keys = [
            self.keys.run_cancelled(run_id),
            self.keys.route_stopped(route),
            self.keys.run_paused(run_id),
        ]
        return keys + [self.keys.tool_disabled(t) for t in tools]

    @staticmethod
    def parse_controls(values: list[Any], tools: list[str]) -> ControlsRead:
        disabled = frozenset(t for t, v in zip(tools, values[3:], strict=True) if v)
        return ControlsRead(_text(values[0]), bool(values[1]), disabled, _text(values[2]))

    def route_stopped(self, route: str) -> bool:
        return bool(self.redis.exists(self.keys.route_stopped(route)))

    # --- a run's switches ------------------------------------------------------------
    def cancelled_by(self, run_id: str) -> str | None:
        """The actor of an immediate cancel of the run (one GET), or None."""
        return _text(self.redis.get(self.keys.run_cancelled(run_id)))

    def set_cancelled(self, run_id: str, actor: str) -> None:
        self.redis.set(self.keys.run_cancelled(run_id), actor, ex=SWITCH_TTL_S)

    def pause_key(self, run_id: str) -> str:
        return self.keys.run_paused(run_id)

    def set_paused(self, run_id: str, actor: str) -> None:
        self.redis.set(self.keys.run_paused(run_id), actor, ex=SWITCH_TTL_S)

    def clear_paused(self, run_id: str) -> None:
        self.redis.delete(self.keys.run_paused(run_id))
