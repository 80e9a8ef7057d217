"""Tools for scheduling tests: they measure concurrency and timing from the inside.

``probe.*`` tools count themselves in and out in Redis (``active``, ``max`` and every
start time), so a test asserts what really executed at once, not what the dispatcher
believes.
"""

from __future__ import annotations

import signal
import time

from pydantic import BaseModel, Field

from runtime.errors import ToolExecutionError
from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

# INCR the active count and keep the highest value seen, atomically
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('RPUSH', KEYS[3], ARGV[1])
return n
"""


# take the next number of the key's global start order and record who took it
_ORDER = """
local n = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], n .. '|' .. ARGV[1])
return n
"""


def _pass_gate(key: str, ctx: ToolContext) -> int:
    """Number this call in the gate's global start order (an INCR, so the order depends on
    neither clocks nor speed) and record ``<number>|<run id>``; then, while the gate key
    ``probe:<key>:allow`` holds a number smaller than this call's, wait (counted in
    ``probe:<key>:held``) until the test raises or deletes it. The test's side is
    ``Gate`` in tests/support.py."""
    base = ctx.keys.demo(f"probe:{key}")
    n = int(ctx.redis.eval(_ORDER, 2, f"{base}:seq", f"{base}:order", ctx.run_id))
    allow = ctx.redis.get(f"{base}:allow")
    if allow is not None and n > int(allow):
        ctx.redis.incr(f"{base}:held")
        try:
            while (allow := ctx.redis.get(f"{base}:allow")) is not None and n > int(allow):
                time.sleep(0.01)
        finally:
            ctx.redis.decr(f"{base}:held")
    return n


class ProbeArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    ms: int = Field(default=100, ge=0, le=10_000)
    #: a gate (``probe.gate``'s key) to pass once counted in, before working ``ms``
    gate: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]{1,60}$")


class ProbeResult(BaseModel):
    active: int


def _probe(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    base = ctx.keys.demo(f"probe:{args.key}")
    active = int(ctx.redis.eval(_ENTER, 3, f"{base}:active", f"{base}:max", f"{base}:starts",
                                f"{time.time():.6f}"))  # fmt: skip
    # distinct calls (a call executed again after a crash is the same call)
    ctx.redis.sadd(f"{base}:calls", ctx.idempotency_key)
    try:
        if args.gate is not None:
            _pass_gate(args.gate, ctx)
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


@tool("probe.lever", side_effect="read", timeout_s=20)
def probe_lever(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    """Like probe.work; the config names probe.alt its fallback (tests/test_levers.py)."""
    return _probe(args, ctx)


@tool("probe.alt", side_effect="read", timeout_s=20)
def probe_alt(args: ProbeArgs, ctx: ToolContext) -> ProbeResult:
    """probe.lever's fallback: counted under ``probe:<key>-alt``."""
    return _probe(args.model_copy(update={"key": f"{args.key}-alt"}), ctx)


class GateArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")


@tool("probe.gate", side_effect="read", timeout_s=20)
def probe_gate(args: GateArgs, ctx: ToolContext) -> ProbeResult:
    """Pass the gate ``key`` (see ``_pass_gate``): a global start order, and a hold."""
    return ProbeResult(active=_pass_gate(args.key, ctx))


#: the longest ``probe.held`` waits for its hold key to go: below its route's step timeout
#: (r.held: 20 s), so a test that forgot the key fails on a count, not on a timeout
MAX_HOLD_S = 18.0


class HeldArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")


class HeldResult(BaseModel):
    entered: int


def _held(args: HeldArgs, ctx: ToolContext) -> HeldResult:
    base = ctx.keys.demo(f"probe:{args.key}")
    entered = int(ctx.redis.incr(f"{base}:entered"))
    deadline = time.monotonic() + MAX_HOLD_S
    while ctx.redis.exists(f"{base}:hold") and time.monotonic() < deadline:
        time.sleep(0.01)
    return HeldResult(entered=entered)


@tool("probe.held", side_effect="write", timeout_s=20, lock="held:{key}")
def probe_held(args: HeldArgs, ctx: ToolContext) -> HeldResult:
    """A write under the lock ``held:<key>``: counted in (``probe:<key>:entered``), then
    inside while ``probe:<key>:hold`` exists (at most ``MAX_HOLD_S``): the test, not a
    sleep, decides how long the call holds its lock. ``Hold`` in tests/support.py."""
    return _held(args, ctx)


@tool("probe.held_irreversible", side_effect="irreversible", timeout_s=20)
def probe_held_irreversible(args: HeldArgs, ctx: ToolContext) -> HeldResult:
    """``probe.held`` as an irreversible call (no lock): a test kills it while held."""
    return _held(args, ctx)


@tool("probe.held_count", side_effect="write", timeout_s=20)
def probe_held_count(args: HeldArgs, ctx: ToolContext) -> HeldResult:
    """A write that counts itself exactly once per idempotency key
    (``probe:<key>:count``, journaled with ``ctx.redis_effect``), then stays inside like
    ``probe.held``: a test kills the worker after the effect, before the runtime records
    it, and checks that the call ran again under the same key without counting twice."""
    base = ctx.keys.demo(f"probe:{args.key}")
    ctx.redis_effect(lambda pipe: pipe.incr(f"{base}:count"))
    return _held(args, ctx)


class FlakyArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    by: int = Field(default=1, ge=1, le=1000)


class FlakyResult(BaseModel):
    value: int | None


@tool("probe.flaky", side_effect="write", timeout_s=10)
def probe_flaky(args: FlakyArgs, ctx: ToolContext) -> FlakyResult:
    """Add ``by`` to a counter (exactly once per idempotency key); fails with
    ``backend_unavailable`` while the key ``fail:<key>`` exists (once, for the call that
    deletes ``fail_once:<key>``), with ``bad_request`` while ``reject:<key>`` exists. Every
    call is counted in ``flaky:<key>:calls``."""
    ctx.redis.incr(ctx.keys.demo(f"flaky:{args.key}:calls"))
    if ctx.redis.delete(ctx.keys.demo(f"fail_once:{args.key}")):
        raise ToolExecutionError("backend down, this once", code="backend_unavailable")
    if ctx.redis.exists(ctx.keys.demo(f"reject:{args.key}")):
        raise ToolExecutionError("the backend refused the request", code="bad_request")
    if ctx.redis.exists(ctx.keys.demo(f"fail:{args.key}")):
        raise ToolExecutionError("backend down", code="backend_unavailable")
    key = ctx.keys.demo(f"counter:{args.key}")
    results = ctx.redis_effect(lambda pipe: pipe.incrby(key, args.by))
    return FlakyResult(value=int(results[0]) if results else None)


@tool("probe.guarded", side_effect="write", timeout_s=10)
def probe_guarded(args: FlakyArgs, ctx: ToolContext) -> FlakyResult:
    """probe.flaky behind a circuit breaker (see the test config)."""
    return probe_flaky(args, ctx)  # type: ignore[no-any-return]


@probe_flaky.compensator
def _undo_flaky(args: FlakyArgs, result: dict[str, object], ctx: ToolContext) -> None:
    if ctx.redis.exists(ctx.keys.demo(f"fail_undo:{args.key}")):
        raise RuntimeError("the undo endpoint is down")
    key = ctx.keys.demo(f"counter:{args.key}")
    ctx.redis_effect(lambda pipe: pipe.decrby(key, args.by))
    ctx.redis.rpush(ctx.keys.demo(f"undone:{args.key}"), ctx.idempotency_key)


class HangArgs(BaseModel):
    ms: int = Field(ge=0, le=60_000)


@tool("probe.hang", side_effect="read", timeout_s=20)
def probe_hang(args: HangArgs, ctx: ToolContext) -> ProbeResult:
    """Sleep with the timeout signals blocked: neither the tool timeout (SIGALRM) nor
    Celery's soft time limit (SIGUSR1) can stop it; only the hard time limit can."""
    blocked = {signal.SIGALRM, signal.SIGUSR1}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        time.sleep(args.ms / 1000)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return ProbeResult(active=0)
