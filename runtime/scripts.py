"""Lua scripts in pipelines without the extra round trip.

redis-py checks every script queued on a pipeline with ``SCRIPT EXISTS`` before sending the
pipeline: one more round trip each time. Here scripts are queued as plain ``EVALSHA``; if
the server lost its script cache (restart, ``SCRIPT FLUSH``), the pipeline fails with
NOSCRIPT, the scripts are loaded and the pipeline is built and sent once more. Only
idempotent command batches may use this (they can run twice when a NOSCRIPT error hits
after earlier commands of the batch ran).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def queue(pipe: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` as a bare EVALSHA."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def run_pipeline(
    client: redis.Redis, build: Callable[[Any], None], scripts: Sequence[Script]
) -> list[Any]:
    """Build a non-transactional pipeline with ``build(pipe)`` and execute it in one round
    trip; on NOSCRIPT load ``scripts`` and retry once."""
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return list(pipe.execute())
        except NoScriptError:
            if attempt:
                raise
            for script in scripts:
                script.sha = client.script_load(script.script)
        finally:
            pipe.reset()
    raise AssertionError("unreachable")
