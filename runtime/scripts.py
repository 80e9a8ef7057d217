"""Lua scripts in pipelines without an extra round trip.

redis-py checks every script queued on a pipeline with ``SCRIPT EXISTS`` before sending
it: one more round trip each time. Here scripts are queued as ``EVAL`` with their source:
the server hashes the source and runs its cached compiled script, so the batch is one
round trip and can never fail half-way with NOSCRIPT (which would force re-running a batch
whose first commands already ran: a dispatch decision is not something to run twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script


def queue(pipe: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe``."""
    pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)


def run_pipeline(client: redis.Redis, build: Callable[[Any], None]) -> list[Any]:
    """Build a non-transactional pipeline with ``build(pipe)`` and run it in one round trip."""
    pipe = client.pipeline(transaction=False)
    try:
        build(pipe)
        return list(pipe.execute())
    finally:
        pipe.reset()
