"""Execution modes against the registered tools: a ``sync`` route may not reach an
irreversible side effect.

A sync request runs its steps in the caller's process under a short timeout and answers
``queued`` when that runs out; a refund or an e-mail in such a step would be done for a
caller that was told nothing happened yet. ``runtime.config`` cannot see side-effect
classes (the tool modules declare them), so this check runs with ``rule_check`` in
``runtime.wiring.load_registry``.
"""

from __future__ import annotations

from runtime.config import RuntimeConfig
from runtime.tools.registry import ToolRegistry


def sync_route_problems(config: RuntimeConfig, registry: ToolRegistry) -> list[str]:
    """One problem per (sync-capable route, irreversible tool it allows)."""
    problems: list[str] = []
    for name, route in config.routes.items():
        if "sync" not in route.modes():
            continue
        key = "execution_mode" if route.execution_mode == "sync" else "execution_modes_allowed"
        for tool in route.allowed_tools:
            spec = registry.get(tool)
            if spec is not None and spec.side_effect == "irreversible":
                problems.append(
                    f"routes.{name}.{key}: a route that may run sync cannot allow the "
                    f"irreversible tool {tool!r} (allowed_tools); make it durable_workflow "
                    "or async_job, or remove the tool"
                )
    return problems
