"""Tools for cancellation tests: a slow write whose commit point the test controls.

``cancel.slow_write`` counts itself in (``slow:<key>:entered``), then stays inside while the
test holds ``slow:<key>:hold`` (at most ``MAX_HOLD_S``), then commits its effect - a journal
entry - through ``ctx.redis_effect``, which refuses to commit once the run was cancelled
immediately. With ``poll`` it watches ``ctx.cancelled`` while held and stops at once.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from runtime.errors import ToolCancelled
from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

#: below the test routes' step timeout (20 s): a test that forgot its hold fails on a count
MAX_HOLD_S = 18.0


class SlowArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    poll: bool = False


class SlowResult(BaseModel):
    committed: bool


@tool("cancel.slow_write", side_effect="write", timeout_s=20)
def slow_write(args: SlowArgs, ctx: ToolContext) -> SlowResult:
    base = ctx.keys.demo(f"slow:{args.key}")
    ctx.redis.incr(f"{base}:entered")
    deadline = time.monotonic() + MAX_HOLD_S
    while ctx.redis.exists(f"{base}:hold") and time.monotonic() < deadline:
        if args.poll and ctx.cancelled:
            ctx.redis.incr(f"{base}:stopped")
            raise ToolCancelled()
        time.sleep(0.01)
    # the commit point: the journal entry and the effect's marker commit together, or not
    # at all once the run is cancelled
    ctx.redis_effect(lambda pipe: pipe.rpush(f"{base}:journal", ctx.idempotency_key))
    return SlowResult(committed=True)
