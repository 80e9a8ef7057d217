"""The seed's launch-evidence map for this deployment (``agentrt evidence``): each concern's
artifact, derived from the applied config, the tool registry and the store - never written
by hand, so it cannot go stale. The runbook's command names come from the caller (the CLI
knows its commands; this layer does not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime import stop_reasons
from runtime.config import RuntimeConfig
from runtime.contract import RuntimeRun
from runtime.statuses import TERMINAL_STATUSES, RunStatus
from runtime.store.slo_reads import TRACE_START_KIND, TRACE_STOP_KIND, SloReads
from runtime.store.tables import events_t
from runtime.tools.registry import ToolRegistry

SECTIONS = (
    "admission",
    "state",
    "policy",
    "budget",
    "tools",
    "observability",
    "evaluation",
    "recovery",
)


def _refusal_path(config: RuntimeConfig, name: str) -> list[str]:
    route = config.routes[name]
    scope = "every tenant" if "*" in route.tenants else ", ".join(route.tenants)
    paths = [
        f"tenant outside {scope} -> refused:tenant_not_in_scope",
        f"input over {route.max_input_bytes} bytes -> refused:input_too_large",
    ]
    if route.max_queued is not None:
        verb = "refused:queue_full" if route.on_queue_full == "refuse" else "queued with an ETA"
        paths.append(f"over {route.max_queued} queued steps -> {verb}")
    if not route.enabled:
        paths.append("route disabled -> every request refused:route_stopped")
    return paths


def _admission(config: RuntimeConfig, routes: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "route": name,
            "task_class": config.routes[name].task_class,
            "risk_class": config.routes[name].risk_class,
            "autonomy_level": config.routes[name].autonomy_level,
            "execution_modes": list(config.routes[name].modes()),
            "tenant_scope": list(config.routes[name].tenants),
            "enabled": config.routes[name].enabled,
            "refusal_path": _refusal_path(config, name),
        }
        for name in routes
    ]


def _policy(config: RuntimeConfig, routes: list[str], reads: SloReads) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for row in reads.decision_counts():
        counts.setdefault(row["rule_id"] or "(default)", {})[row["decision"]] = row["count"]
    rules = []
    for rule in config.policy.rules:
        if rule.match.route is not None and not any(
            any(_glob(r, g) for g in rule.match.route) for r in routes
        ):
            continue
        rules.append(
            {
                "id": rule.id,
                "effect": rule.effect,
                "reason": rule.reason,
                "owner": rule.owner,
                "match": rule.match.model_dump(mode="json", by_alias=True, exclude_none=True),
                "decisions_recorded": counts.get(rule.id, {}),
            }
        )
    return {
        "version": config.policy.version,
        "default": config.policy.default,
        "rules": rules,
        "reason_codes": sorted({r.reason for r in config.policy.rules if r.reason}),
        "approval_rules": [
            r["id"] for r in rules if r["effect"] != "allow" and r["effect"] != "deny"
        ],
    }


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _budget(config: RuntimeConfig, routes: list[str]) -> dict[str, Any]:
    used = {config.routes[r].budget_policy for r in routes}
    return {
        "policies": {
            name: {
                "version": p.version,
                "per_run": p.per_run.model_dump(exclude_none=True),
                "tokens_per_step": p.tokens_per_step,
            }
            for name, p in config.budget_policies.items()
            if name in used
        },
        "routes": {
            r: {
                "budget_policy": config.routes[r].budget_policy,
                "daily_budget": config.routes[r].daily_budget.model_dump(exclude_none=True),
                "on_exhausted": (
                    "stop: budget_exhausted:<dimension>"
                    if config.routes[r].on_budget_exhausted == "stop"
                    else "ask: waits needs_approval:budget_extension"
                ),
                "max_steps": config.routes[r].max_steps,
            }
            for r in routes
        },
    }


def _tools(
    config: RuntimeConfig, registry: ToolRegistry, routes: list[str]
) -> list[dict[str, Any]]:
    used = {t for r in routes for t in config.routes[r].allowed_tools}
    tools = []
    for name, entry in sorted(config.tools.items()):
        if name not in used:
            continue
        spec = registry.get(name)
        tools.append(
            {
                "tool": name,
                "version": entry.version,
                "side_effect": spec.side_effect if spec else None,
                "timeout_s": entry.timeout_s or (spec.timeout_s if spec else None),
                "enabled": entry.enabled,
                "routes": sorted(r for r in routes if name in config.routes[r].allowed_tools),
                "input_schema": spec.json_schema() if spec else None,
            }
        )
    return tools


def evidence_map(
    *,
    config: RuntimeConfig,
    registry: ToolRegistry,
    reads: SloReads,
    runbook: list[dict[str, str]],
    evals_dir: Path | None,
    applied: dict[str, Any] | None = None,
    route: str | None = None,
) -> dict[str, Any]:
    """The evidence map as JSON: one entry per concern of the seed's table. ``runbook``:
    the levers and recovery commands (``{"command", "help"}``); ``evals_dir``: where
    blocking evals live (None or missing: none)."""
    routes = [route] if route is not None else sorted(config.routes)
    runs = reads.runs_by_route_status()
    evals = sorted(
        str(p.relative_to(evals_dir)) for p in evals_dir.rglob("*") if p.is_file()
    ) if evals_dir is not None and evals_dir.is_dir() else []  # fmt: skip
    return {
        "deployment": {"config_version": config.version, "applied": applied, "route": route},
        "admission": {
            "routes": _admission(config, routes),
            "runs_by_status": {r: runs.get(r, {}) for r in routes},
        },
        "state": {
            "statuses": [s.value for s in RunStatus if s is not RunStatus.UNKNOWN],
            "terminal_statuses": sorted(s.value for s in TERMINAL_STATUSES),
            "stop_reason_kinds": sorted(stop_reasons.KINDS),
            "contract_fields": [f.alias or n for n, f in RuntimeRun.model_fields.items()],
        },
        "policy": _policy(config, routes, reads),
        "budget": _budget(config, routes),
        "tools": _tools(config, registry, routes),
        "observability": {
            "trace_event_fields": [c.name for c in events_t.c],
            "required_events": [TRACE_START_KIND, TRACE_STOP_KIND],
            "events_recorded": reads.event_kinds(),
        },
        "evaluation": {"blocking_evals": evals or "none"},
        "recovery": {
            "runbook": runbook,
            "compensate_on_failure": [r for r in routes if config.routes[r].compensate_on_failure],
            "fallback_proposers": {
                r: config.routes[r].fallback_proposers
                for r in routes
                if config.routes[r].fallback_proposers
            },
        },
    }


__all__ = ["SECTIONS", "evidence_map"]
