"""agentrt: a production runtime for AI-agent runs. The model proposes, the runtime decides.

Layers (imports point down only):

    entry points   tasks/ (Celery)  runtime.cli
    service        runtime.service   - the composition root
    concerns       admission, policy, budgets, locks, tools, proposers, steps, store, tracing
    leaves         contract, errors, keys, settings, config, stop_reasons, states
"""

from runtime.contract import RunStatus, RuntimeRun, RunView, TraceEvent, VersionSet
from runtime.errors import AdmissionRefused, AgentRuntimeError, ConfigError, RunNotFound
from runtime.service import Runtime, RuntimeService, WaitTimeout
from runtime.settings import Settings
from runtime.tools.context import ToolContext
from runtime.tools.registry import ToolSpec, tool

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
