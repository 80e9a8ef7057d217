"""A careless tool for the Sentry tests (tests/test_sentry.py): it logs its secret argument
at error level and echoes it in its error, as real integrations do. The runtime must keep
the secret out of every report all the same.

* ``sentry.unlock``  write, declares ``pin`` secret; records each pin it was called with in
                     ``sentry:<vault_id>:pins`` (so a test sees the secret did reach it), logs
                     ``vault <id> refused pin <pin>`` at ERROR, then fails with
                     ``backend_unavailable`` (retryable) quoting the pin
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from runtime.errors import ToolExecutionError
from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

log = logging.getLogger("tests.sentry_tools")


class UnlockArgs(BaseModel):
    vault_id: str = Field(pattern=r"^[a-z0-9\-]{1,40}$")
    pin: str = Field(pattern=r"^[0-9]{6,12}$")


class UnlockResult(BaseModel):
    unlocked: bool


@tool("sentry.unlock", side_effect="write", timeout_s=10, secret_args=["pin"])
def sentry_unlock(args: UnlockArgs, ctx: ToolContext) -> UnlockResult:
    """Try a vault's pin; always refused (see the module docstring)."""
    ctx.redis.rpush(ctx.keys.demo(f"sentry:{args.vault_id}:pins"), args.pin)
    log.error("vault %s refused pin %s", args.vault_id, args.pin)
    raise ToolExecutionError(
        f"vault {args.vault_id} down while checking pin {args.pin}", code="backend_unavailable"
    )
