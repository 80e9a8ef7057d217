"""agentrt: a production runtime for AI-agent runs. The model proposes, the runtime decides.

Layers (imports point down only: the import-linter contracts in ``pyproject.toml``, run by
``make lint``, and ``tests/test_architecture.py`` hold them):

    entry points   tasks/ (Celery)  runtime.cli  runtime.demo
    composition    runtime.wiring    - builds every component (``Runtime.from_env()``)
    facade         runtime.service   - the public API
    flows          step (one module per stage), dispatch, dead_letters, recovery,
                   reconciler, compensation, new_runs
    mechanisms     scheduling, budgets, locks, store (all SQL), policy, tools, proposers
    leaves         contract, errors, keys, settings

The names below are imported on first use (PEP 562): ``import runtime.store`` must not
load the whole service (the step loop, the scheduler, the tools) with it, so a read-only
command stays cheap. ``from runtime import Runtime`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.contract import RunStatus, RuntimeRun, RunView, TraceEvent, VersionSet
    from runtime.errors import (
        AdmissionRefused,
        AgentRuntimeError,
        ConfigError,
        RunNotFound,
        WaitTimeout,
    )
    from runtime.service import RuntimeService
    from runtime.settings import Settings
    from runtime.tools.context import ToolContext
    from runtime.tools.registry import ToolSpec, tool
    from runtime.wiring import Runtime

#: public name -> the module that defines it
_EXPORTS = {
    "RunStatus": "runtime.contract",
    "RuntimeRun": "runtime.contract",
    "RunView": "runtime.contract",
    "TraceEvent": "runtime.contract",
    "VersionSet": "runtime.contract",
    "AdmissionRefused": "runtime.errors",
    "AgentRuntimeError": "runtime.errors",
    "ConfigError": "runtime.errors",
    "RunNotFound": "runtime.errors",
    "Runtime": "runtime.wiring",
    "RuntimeService": "runtime.service",
    "WaitTimeout": "runtime.errors",
    "Settings": "runtime.settings",
    "ToolContext": "runtime.tools.context",
    "ToolSpec": "runtime.tools.registry",
    "tool": "runtime.tools.registry",
}

__all__ = [
    "AdmissionRefused",
    "AgentRuntimeError",
    "ConfigError",
    "RunNotFound",
    "RunStatus",
    "RunView",
    "Runtime",
    "RuntimeRun",
    "RuntimeService",
    "Settings",
    "ToolContext",
    "ToolSpec",
    "TraceEvent",
    "VersionSet",
    "WaitTimeout",
    "tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
