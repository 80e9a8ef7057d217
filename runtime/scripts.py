"""Lua scripts in pipelines without an extra round trip.

redis-py checks every script queued on a pipeline with ``SCRIPT EXISTS`` before sending
it: one more round trip each time. Here every script is loaded when its owner is built
(``load``) and queued as a bare ``EVALSHA``. The server loses all scripts at once (restart,
``SCRIPT FLUSH``), so when a batch meets NOSCRIPT none of its scripts ran: the scripts are
loaded again and the batch is sent once more. A batch where some scripts ran and others
did not cannot be replayed safely (a dispatch decision must not run twice) and raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

from runtime.errors import ScriptsLost as ScriptsLost

#: every script registered through ``register``, reloaded together after a NOSCRIPT
_REGISTERED: dict[str, Script] = {}


def lua(package: str, name: str, *, state_guard: bool = False) -> str:
    """The source of ``<package>/lua/<name>`` (scripts ship inside the package). With
    ``state_guard``, the state-marker prelude (``state_gen``, runtime.state) comes first."""
    source = resources.files(package).joinpath("lua", name).read_text()
    if state_guard:
        prelude = resources.files("runtime.scheduling").joinpath("lua", "state_marker.lua")
        source = prelude.read_text() + "\n" + source
    return source


def register(client: redis.Redis, source: str) -> Script:
    """Register and load ``source`` (one round trip, at start-up)."""
    script = client.register_script(source)
    client.script_load(source)
    _REGISTERED[script.sha] = script
    return script


def queue(pipe: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` as a bare EVALSHA."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def run_pipeline(
    client: redis.Redis, build: Callable[[Any], None], *, idempotent: bool = False
) -> list[Any]:
    """Build a non-transactional pipeline with ``build(pipe)`` and run it in one round trip.

    After a NOSCRIPT the scripts are loaded again and the batch is sent once more, if none
    of its scripts ran, or if the caller says the batch may run twice (``idempotent``: its
    scripts give the same outcome when repeated, e.g. a lease taken again by its owner).
    Otherwise ``ScriptsLost``."""
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        try:
            build(pipe)
            commands = [args for args, _ in pipe.command_stack]
            results = list(pipe.execute(raise_on_error=False))
        finally:
            pipe.reset()
        missing = [isinstance(r, NoScriptError) for r in results]
        if not any(missing):
            for result in results:
                if isinstance(result, ResponseError):
                    raise result
            return results
        ran = [c[0] == "EVALSHA" and not m for c, m in zip(commands, missing, strict=True)]
        if attempt or (any(ran) and not idempotent):
            raise ScriptsLost("Redis lost its scripts mid-batch (a restart or SCRIPT FLUSH)")
        for script in _REGISTERED.values():
            client.script_load(script.script)
    raise AssertionError("unreachable")
