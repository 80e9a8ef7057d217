"""Tools for budget tests: they count every execution themselves.

``meter.write`` (a side effect the runtime may run again after an unknown outcome) and
``meter.read`` INCR ``meter:<key>:executions`` first thing, so the count is what really ran,
whatever the runtime believes. While ``meter:<key>:hold`` exists they then wait inside,
listed in ``meter:<key>:inside`` (pid -> run:step), so a test can SIGKILL exactly the pool
processes that are inside a tool, with no race against the tool finishing.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

#: the longest a tool waits for its hold key to go (a test that forgot it fails, not hangs)
MAX_HOLD_S = 25.0


class MeterArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")


class MeterResult(BaseModel):
    executions: int


def _meter(args: MeterArgs, ctx: ToolContext) -> MeterResult:
    base = ctx.keys.demo(f"meter:{args.key}")
    n = int(ctx.redis.incr(f"{base}:executions"))
    if ctx.redis.exists(f"{base}:hold"):
        pid = str(os.getpid())
        ctx.redis.hset(f"{base}:inside", pid, f"{ctx.run_id}:{ctx.step}")
        try:
            deadline = time.monotonic() + MAX_HOLD_S
            while ctx.redis.exists(f"{base}:hold") and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            ctx.redis.hdel(f"{base}:inside", pid)
    return MeterResult(executions=n)


@tool("meter.write", side_effect="write", timeout_s=30)
def meter_write(args: MeterArgs, ctx: ToolContext) -> MeterResult:
    """Count this execution (a write: re-run after a crash with the same key)."""
    return _meter(args, ctx)


@tool("meter.read", side_effect="read", timeout_s=30)
def meter_read(args: MeterArgs, ctx: ToolContext) -> MeterResult:
    """Count this execution (a read: no side-effect record)."""
    return _meter(args, ctx)
