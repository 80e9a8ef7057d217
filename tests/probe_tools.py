"""Tools for scheduling tests: they measure concurrency and timing from the inside.

``probe.*`` tools count themselves in and out in Redis (``active``, ``max`` and every
start time), so a test asserts what really executed at once, not what the dispatcher
believes.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

# INCR the active count and keep the highest value seen, atomically
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('RPUSH', KEYS[3], ARGV[1])
return n
"""


class ProbeArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    ms: int = Field(default=100, ge=0, le=10_000)


class ProbeResult(BaseModel):
    active: int


def _probe(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    base = ctx.keys.demo(f"probe:{args.key}")
    active = int(ctx.redis.eval(_ENTER, 3, f"{base}:active", f"{base}:max", f"{base}:starts",
                                f"{time.time():.6f}"))  # fmt: skip
    try:
        time.sleep(args.ms / 1000)
    finally:
        ctx.redis.decr(f"{base}:active")
    return ProbeResult(active=active)


@tool("probe.work", side_effect="read", timeout_s=20)
def probe_work(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    """Work for ``ms`` milliseconds, counted in and out."""
    return _probe(args, ctx)


@tool("probe.rated", side_effect="read", timeout_s=20)
def probe_rated(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    """Like probe.work; the config gives it a global rate limit."""
    return _probe(args, ctx)


@tool("probe.bulk", side_effect="read", timeout_s=20)
def probe_bulk(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    """Like probe.work; the config gives it a bulkhead."""
    return _probe(args, ctx)
