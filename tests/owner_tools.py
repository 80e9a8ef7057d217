"""Tools for the worker-identity tests: they count, from the inside, who is in at once.

* ``owners.locked`` holds the lock ``res:{name}`` and records every holder by its fencing
  token in a set: the set's largest size is how many held the lock at once.
* ``owners.work`` is a journaled increment (exactly once per idempotency key, as
  ``counter.increment``) that counts the route's steps in and out and every execution of
  each step, so a test sees the route's real concurrency and whether a step ran twice.

A SIGKILLed execution never counts itself out; the tests take the dead ones out (they know
which: the counters right after the kill, when no other worker runs).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

# SADD the holder, keep the largest set size seen, log the entry
_ENTER_SET = """
redis.call('SADD', KEYS[1], ARGV[1])
local n = redis.call('SCARD', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('RPUSH', KEYS[3], ARGV[2])
return n
"""

# INCR the active count, keep the largest value seen, count the step's executions
_ENTER_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('RPUSH', KEYS[4], ARGV[2])
return n
"""


#: the longest a call waits for its hold key to go (a test that forgot it fails, not hangs);
#: the owners routes' step timeout (tests/test_worker_identity.py) is longer
MAX_HOLD_MS = 50_000


def _held(key: str, ms: int, ctx: ToolContext) -> None:
    """Wait while ``key`` exists, at most ``ms``: the test, not a sleep, decides how long
    the call stays inside."""
    until = time.monotonic() + ms / 1000
    while ctx.redis.exists(key) and time.monotonic() < until:
        time.sleep(0.02)


class LockedArgs(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    ms: int = Field(default=200, ge=0, le=MAX_HOLD_MS)
    #: hold the lock while ``owners:<name>:hold`` exists (at most ``ms``), not for ``ms``
    hold: bool = False


class Entered(BaseModel):
    at_once: int


@tool("owners.locked", side_effect="read", timeout_s=60, lock="res:{name}")
def owners_locked(args: LockedArgs, ctx: ToolContext) -> Entered:
    """Hold ``res:{name}`` for ``ms`` (or, with ``hold``, while the test holds it open);
    ``owners:<name>:holders`` is the set of holders (fencing tokens), ``:max`` its largest
    size, ``:log`` every entry in order."""
    base = ctx.keys.demo(f"owners:{args.name}")
    token = str(ctx.fencing_token)
    entry = f"{token}|{ctx.run_id}|{time.time():.6f}"
    n = int(ctx.redis.eval(_ENTER_SET, 3, f"{base}:holders", f"{base}:max", f"{base}:log",
                           token, entry))  # fmt: skip
    try:
        if args.hold:
            _held(f"{base}:hold", args.ms, ctx)
        else:
            time.sleep(args.ms / 1000)
    finally:
        ctx.redis.srem(f"{base}:holders", token)
    return Entered(at_once=n)


class WorkArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    ms: int = Field(default=200, ge=0, le=MAX_HOLD_MS)
    after_ms: int = Field(default=0, ge=0, le=20_000)
    #: before the write, wait while ``owners:<key>:hold`` exists (at most ``ms``), not ``ms``
    hold: bool = False


class Worked(BaseModel):
    value: int | None
    at_once: int


@tool("owners.work", side_effect="write", timeout_s=60)
def owners_work(args: WorkArgs, ctx: ToolContext) -> Worked:
    """Counted in (``owners:<key>:active``, ``:max``, executions per step in ``:runs``,
    every start in ``:starts``), work ``ms`` (or, with ``hold``, while the test holds it),
    add 1 to ``counter:<key>`` exactly once per idempotency key, work ``after_ms``, counted
    out."""
    base = ctx.keys.demo(f"owners:{args.key}")
    step = f"{ctx.run_id}:{ctx.step}"
    n = int(ctx.redis.eval(_ENTER_COUNT, 4, f"{base}:active", f"{base}:max", f"{base}:runs",
                           f"{base}:starts", step, f"{time.time():.6f}|{step}"))  # fmt: skip
    try:
        if args.hold:
            _held(f"{base}:hold", args.ms, ctx)
        else:
            time.sleep(args.ms / 1000)
        key = ctx.keys.demo(f"counter:{args.key}")
        results = ctx.redis_effect(lambda pipe: pipe.incrby(key, 1))
        time.sleep(args.after_ms / 1000)
    finally:
        ctx.redis.decr(f"{base}:active")
    return Worked(value=int(results[0]) if results else None, at_once=n)
