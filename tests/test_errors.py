"""One exception tree: every exception class of runtime/ and tasks/ is an AgentRuntimeError
defined in runtime/errors.py (a module that used to define one re-exports it)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import redis

from runtime import errors
from runtime.errors import AgentRuntimeError

#: the one exception that cannot be an AgentRuntimeError, and why
NOT_ERRORS = {
    # a timer signal, not an error: a BaseException, so a tool's `except Exception` cannot
    # swallow its own timeout
    "runtime.tools.executor._Alarm",
}

# Modules are imported in a child process: importing every module (tasks.app connects
# Celery signal handlers) must not change the test session's own process.
WALK = """
import importlib, inspect, json, pkgutil
import runtime, tasks
from runtime.errors import AgentRuntimeError
found = {}
for package in (runtime, tasks):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name == "runtime.store.migrations.env":
            continue  # alembic's env script runs only inside alembic (agentrt db upgrade)
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                where = f"{obj.__module__}.{obj.__qualname__}"
                if where.startswith(("runtime.", "tasks.")):
                    found[where] = [info.name, name, issubclass(obj, AgentRuntimeError)]
print(json.dumps(found))
"""


@functools.cache
def exception_classes() -> dict[str, list[object]]:
    """Where each exception class of runtime/ and tasks/ is defined -> (a module it is
    reachable from, its name there, whether it is an AgentRuntimeError)."""
    done = subprocess.run(
        [sys.executable, "-c", WALK], capture_output=True, text=True, timeout=120, check=True
    )
    found: dict[str, list[object]] = json.loads(done.stdout)
    return found


def test_every_exception_class_is_an_agent_runtime_error_defined_in_errors() -> None:
    found = exception_classes()
    assert "runtime.errors.StateUnknown" in found  # the walk saw the tree
    assert "runtime.errors.ScriptsLost" in found  # and the errors built on first use
    misplaced = sorted(w for w in found if not w.startswith("runtime.errors."))
    assert set(misplaced) == NOT_ERRORS, f"define these in runtime/errors.py: {misplaced}"
    outside = sorted(w for w, (_, _, is_ours) in found.items() if not is_ours)
    assert set(outside) == NOT_ERRORS, f"not under AgentRuntimeError: {outside}"


def test_no_error_shadows_a_builtin_name() -> None:
    import builtins

    names = {w.rsplit(".", 1)[-1] for w in exception_classes()}
    assert not names & set(dir(builtins))


def test_old_import_paths_still_work() -> None:
    from runtime.bounds import BoundsError
    from runtime.dead_letters import DeadLetterNotFound
    from runtime.scripts import ScriptsLost
    from runtime.service import WaitTimeout
    from tasks.broker_faults import BrokerConnectionClosed

    assert BoundsError is errors.BoundsError
    assert DeadLetterNotFound is errors.DeadLetterNotFound
    assert WaitTimeout is errors.WaitTimeout
    assert ScriptsLost is errors.ScriptsLost
    assert BrokerConnectionClosed is errors.BrokerConnectionClosed


def test_connection_errors_stay_redis_connection_errors() -> None:
    # the step task retries redis.ConnectionError, and kombu's consumer recovers from it:
    # both errors must still be caught as one
    for cls in (errors.ScriptsLost, errors.BrokerConnectionClosed):
        assert issubclass(cls, AgentRuntimeError)
        assert issubclass(cls, redis.ConnectionError)
        error = cls("lost")
        assert str(error) == "lost"


def test_importing_errors_does_not_import_redis() -> None:
    # read-only CLI commands import runtime.errors and must not load redis-py
    code = "import sys, runtime.errors; print('redis' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_release_refusals_are_conflict_problems_not_500s() -> None:
    from runtime.api.problems import from_error
    from runtime.errors import GateFailed, ReleaseError

    refused = from_error(GateFailed("r.basic", "v2", "1 blocking case failed"))
    assert refused is not None and (refused.status, refused.reason) == (
        409,
        "release_gate_failed",
    )
    other = from_error(ReleaseError("route 'r.basic' has no canary to promote"))
    assert other is not None and (other.status, other.reason) == (409, "release_refused")
