"""Live controls: the switches an operator sets in Redis (run cancelled immediately, run
paused, route stopped, tool disabled, model pinned, approval forced), read by admission
and by every step.

They are signals, not the truth: a cancel or a pause is recorded in SQL first (the run's
status, the fence every claim and checkpoint reads), and an operator lever is recorded in
SQL before its switch is set (``runtime.levers``); the switch only lets a step in flight -
and a tool polling ``ctx.cancelled`` - learn it without a database read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import redis

from runtime.keys import Keys

#: how long a switch outlives the request that set it (the run has long ended by then)
SWITCH_TTL_S = 7 * 86400
#: the value of a route's stop switch that lets running runs finish (``ops stop-route
#: --mode drain``); any other value stops them at their next step
STOP_MODE_DRAIN = "drain"
#: the switches read per run (cancel, route stop, pause, pinned model, route approval);
#: then two per allowed tool (disabled, approval forced)
_FIXED = 5


class ControlsRead(NamedTuple):
    """What the switches say about one step, read in one round trip."""

    #: the actor of an immediate cancel, or None
    cancelled_by: str | None
    route_stopped: bool
    disabled_tools: frozenset[str]
    #: the actor of a pause not yet landed in SQL, or None
    paused_by: str | None = None
    #: the model an operator pinned for the route, or None
    pinned_model: str | None = None
    #: an operator forced approval for every call on the route
    route_forced_approval: bool = False
    #: tools whose every call an operator made need approval
    forced_approval_tools: frozenset[str] = frozenset()


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


class Controls:
    def __init__(
        self,
        *,
        redis: redis.Redis,
        keys: Keys,
        stopped_in_record: Callable[[str], bool] = lambda route: False,
    ) -> None:
        self.redis = redis
        self.keys = keys
        #: whether SQL records the route stopped (``runtime.levers``): asked while Redis's
        #: state is unknown, when a missing switch proves nothing
        self.stopped_in_record = stopped_in_record

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
            self.keys.pinned_model(route),
            self.keys.forced_approval_route(route),
        ]
        keys += [self.keys.tool_disabled(t) for t in tools]
        return keys + [self.keys.forced_approval_tool(t) for t in tools]

    @staticmethod
    def parse_controls(values: list[Any], tools: list[str]) -> ControlsRead:
        n = len(tools)
        disabled_raw = values[_FIXED : _FIXED + n]
        forced_raw = values[_FIXED + n : _FIXED + 2 * n]
        disabled = frozenset(t for t, v in zip(tools, disabled_raw, strict=True) if v)
        forced = frozenset(t for t, v in zip(tools, forced_raw, strict=True) if v)
        return ControlsRead(
            cancelled_by=_text(values[0]),
            # a drain stops admission only; the runs already running go on
            route_stopped=values[1] is not None and _text(values[1]) != STOP_MODE_DRAIN,
            disabled_tools=disabled,
            paused_by=_text(values[2]),
            pinned_model=_text(values[3]),
            route_forced_approval=bool(values[4]),
            forced_approval_tools=forced,
        )

    def route_stopped(self, route: str) -> bool:
        """Whether admission refuses the route (stopped in either mode). Fail closed: with
        Redis's state lost (no scheduler marker) the switch may be gone too, so the SQL
        record decides until recovery has put the levers back."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.route_stopped(route))
        pipe.exists(self.keys.sched_state())
        stopped, marked = pipe.execute()
        if stopped:
            return True
        return not marked and self.stopped_in_record(route)

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
