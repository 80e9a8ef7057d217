"""How ``agentrt config`` shows a deployment file: its summary for scripts and people, the
model probes, and what ``config apply`` did. Every value is escaped for Rich markup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig
    from runtime.deployment import ConfigChange
    from runtime.proposers.probe import ProbeResult


def config_summary(config: RuntimeConfig) -> dict[str, Any]:
    return {
        "version": config.version,
        "harnessVersion": config.harness_version,
        "policyVersion": config.policy.version,
        "policyRules": len(config.policy.rules),
        "tenants": sorted(config.tenants),
        "routes": list(config.routes),
        "tools": sorted(config.tools),
        "toolModules": config.tool_modules,
        "models": sorted(config.models),
        "budgetPolicies": {n: p.version for n, p in config.budget_policies.items()},
        "schedules": sorted(config.schedules),
    }


def config_table(config: RuntimeConfig) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    budgets = ", ".join(f"{n} ({p.version})" for n, p in config.budget_policies.items())
    rows = [
        ("version", f"{config.version} · harness {config.harness_version}"),
        ("tenants", f"{len(config.tenants)}: {', '.join(sorted(config.tenants))}"),
        ("routes", f"{len(config.routes)}: {', '.join(config.routes)}"),
        ("tools", f"{len(config.tools)}: {', '.join(sorted(config.tools))}"),
        ("tool modules", ", ".join(config.tool_modules) or "-"),
        ("models", ", ".join(f"{n} ({m.version})" for n, m in config.models.items())),
        ("budget policies", budgets),
        (
            "policy",
            f"{config.policy.version}: {len(config.policy.rules)} rules, "
            f"default {config.policy.default}",
        ),
        (
            "schedules",
            ", ".join(f"{n} ({s.cron} {s.timezone})" for n, s in config.schedules.items()) or "-",
        ),
    ]
    for key, value in rows:
        grid.add_row(key, escape(value))
    return grid


def no_probes_line() -> str:
    return "probe: no model of kind openai"


def probe_line(p: ProbeResult) -> str:
    """``probe <model> <url>: ok | HTTP 404 | connection error...``"""
    mark = f"[{'green' if p.ok else 'red'}]{escape(p.detail)}[/]"
    return f"probe {escape(p.model)} {escape(p.url)}: {mark}"


def applied_json(change: ConfigChange) -> dict[str, Any]:
    return {
        "version": change.version,
        "digest": change.digest,
        "changed": change.changed,
        "previous": None
        if change.previous is None
        else {"version": change.previous.version, "digest": change.previous.digest},
    }


def applied_line(change: ConfigChange) -> str:
    """``applied version v2 (digest) (was v1, digest)``, or that it already was."""
    if not change.changed:
        return f"already applied: version {escape(change.version)} ({change.digest[:12]})"
    was = (
        f" (was {escape(change.previous.version)}, {change.previous.digest[:12]})"
        if change.previous
        else ""
    )
    return f"[green bold]applied[/] version {escape(change.version)} ({change.digest[:12]}){was}"
