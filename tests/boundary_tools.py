"""Tools for boundary tests: they record what really reached them, in Redis.

* ``vault.unlock``  write, declares ``pin`` secret, locked per vault: records the pin it was
                    called with (so a test sees the real value arrived after a wait), and
                    echoes the pin in its error when asked to fail
* ``strict.count``  read: an ``int`` and a ``float`` argument, for strict validation
* ``effects.write`` write, deliberately not idempotent: counts every execution per key
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from runtime.errors import ToolExecutionError
from runtime.tools.context import ToolContext
from runtime.tools.registry import tool


class UnlockArgs(BaseModel):
    vault_id: str = Field(pattern=r"^[a-z0-9\-]{1,40}$")
    pin: str = Field(pattern=r"^[0-9]{4,12}$")
    fail: bool = False
    hold_ms: int = Field(default=0, ge=0, le=10_000)
    #: hold the lock while ``vault:<vault_id>:hold`` exists (at most ``hold_ms``), not for
    #: ``hold_ms``: the test decides when the call lets go
    hold: bool = False


class UnlockResult(BaseModel):
    vault_id: str
    unlocked: bool


@tool("vault.unlock", side_effect="write", timeout_s=15, lock="vault:{vault_id}",
      secret_args=["pin"])  # fmt: skip
def vault_unlock(args: UnlockArgs, ctx: ToolContext) -> UnlockResult:
    """Unlock a vault with its pin."""
    import time

    ctx.redis.rpush(ctx.keys.demo(f"vault:{args.vault_id}:pins"), args.pin)
    if args.hold:
        until = time.monotonic() + args.hold_ms / 1000
        while ctx.redis.exists(ctx.keys.demo(f"vault:{args.vault_id}:hold")):
            if time.monotonic() >= until:
                break
            time.sleep(0.01)
    else:
        time.sleep(args.hold_ms / 1000)
    if args.fail:
        raise ToolExecutionError(f"wrong pin {args.pin} for {args.vault_id}", code="wrong_pin")
    return UnlockResult(vault_id=args.vault_id, unlocked=True)


class CountArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")
    n: int = Field(ge=0, le=1000)
    amount: float = Field(default=1.0, ge=0, le=10_000)


class CountResult(BaseModel):
    n: int
    amount: float


@tool("strict.count", side_effect="read", timeout_s=5)
def strict_count(args: CountArgs, ctx: ToolContext) -> CountResult:
    """Record the arguments it was called with."""
    ctx.redis.rpush(ctx.keys.demo(f"strict:{args.key}"), f"{args.n!r}|{args.amount!r}")
    return CountResult(n=args.n, amount=args.amount)


class WriteArgs(BaseModel):
    key: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,60}$")


class WriteResult(BaseModel):
    executions: int


@tool("effects.write", side_effect="write", timeout_s=5)
def effects_write(args: WriteArgs, ctx: ToolContext) -> WriteResult:
    """A bare, non-idempotent write: every execution counts."""
    return WriteResult(executions=int(ctx.redis.incr(ctx.keys.demo(f"writes:{args.key}"))))
