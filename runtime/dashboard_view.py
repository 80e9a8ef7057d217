"""What the operating dashboard shows: the seed's seven panels (active runs, budget
pressure, policy decisions, tool health, trace quality, release versions, eval status)
and a run's page, read from the store and the live components for one principal's tenant
(None: every tenant). Each panel also carries what its actions need (routes, tools,
releases): the page answers "what should an operator do now", not only "what happened"."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runtime import stop_reasons
from runtime.approvals import ApprovalReads
from runtime.config import RuntimeConfig
from runtime.dead_letters import DeadLetters
from runtime.levers import Levers
from runtime.releases.api import Releases
from runtime.slo import SloReporter
from runtime.store.dashboard_reads import DashboardReads
from runtime.store.db import utcnow
from runtime.store.dead_letters import DeadLetterFilter
from runtime.store.runs import RunStore
from runtime.store.slo_reads import Scope

#: a run that spent this share of any budget dimension is "near exhaustion"
NEAR = 0.8
#: how far back the rate panels look
WINDOW = timedelta(hours=24)
PANELS = (
    "active_runs",
    "budget_pressure",
    "policy_decisions",
    "tool_health",
    "trace_quality",
    "release_versions",
    "eval_status",
    "slos",
)


def _age_s(now: datetime, then: datetime | None) -> int | None:
    if then is None:
        return None
    from datetime import UTC

    then = then if then.tzinfo is not None else then.replace(tzinfo=UTC)
    return max(0, int((now - then).total_seconds()))


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


@dataclass
class _ToolCalls:
    starts: int = 0
    timeouts: int = 0
    replays: int = 0
    keys: set[str] = field(default_factory=set)


def _tool_calls(events: list[tuple[str, dict[str, Any]]]) -> dict[str, _ToolCalls]:
    out: dict[str, _ToolCalls] = {}
    for kind, data in events:
        calls = out.setdefault(str(data.get("tool")), _ToolCalls())
        if kind == "tool_start":
            calls.starts += 1
            calls.keys.add(str(data.get("idempotency_key")))
        elif kind == "tool_end" and data.get("error_code") == "tool_timeout":
            calls.timeouts += 1
        elif kind != "tool_end":
            calls.replays += 1
    return out


class DashboardView:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        reads: DashboardReads,
        approvals: ApprovalReads,
        releases: Releases | None,
        levers: Levers,
        dead_letters: DeadLetters,
        runs: RunStore,
        slos: SloReporter,
    ) -> None:
        self.config = config
        self.reads = reads
        self.approvals = approvals
        self.releases = releases
        self.levers = levers
        self.dead_letters = dead_letters
        self.runs = runs
        self.slos = slos

    def panels(self, tenant: str | None) -> dict[str, Any]:
        """Every panel for ``tenant``'s view (None: every tenant)."""
        now = utcnow()
        since = now - WINDOW
        active = self.reads.active_runs(tenant)
        levers = self.levers.status()
        return {
            "active_runs": [{**r, "age_s": _age_s(now, r["created_at"])} for r in active],
            "budget_pressure": self._budget(active, levers),
            "policy_decisions": self._decisions(tenant, since),
            "tool_health": self._tools(tenant, since, levers),
            "trace_quality": self._trace(tenant, since),
            "release_versions": self._releases(),
            "eval_status": self._evals(tenant),
            # the runtime SLOs over the same window, as `agentrt slo report` computes them
            "slos": self.slos.report(since=since, tenant_id=tenant).results,
            "approvals": self.approvals.list(tenant, "pending", limit=50),
            "levers": levers,
        }

    # --- panels ---------------------------------------------------------------------
    def _budget(self, active: list[dict[str, Any]], levers: list[dict[str, Any]]) -> Any:
        spend = self.reads.spend_of([r["run_id"] for r in active])
        runs = []
        for r in active:
            route = self.config.routes.get(r["route"])
            policy = self.config.budget_policies.get(route.budget_policy) if route else None
            limits = policy.per_run.ledger_limits() if policy else {}
            spent = spend.get(r["run_id"], {})
            dims = {
                d: (spent.get(d, 0), lim)
                for d, lim in limits.items()
                if lim is not None and lim > 0
            }
            worst = max((s / lim for s, lim in dims.values()), default=0.0)
            runs.append(
                {
                    "run_id": r["run_id"],
                    "tenant_id": r["tenant_id"],
                    "route": r["route"],
                    "priority": r["priority"],
                    "spent": dims,
                    "used": worst,
                    "near": worst >= NEAR,
                }
            )
        runs.sort(key=lambda x: -float(x["used"]))
        concurrency = {
            lv["target"]: lv["value"] for lv in levers if lv["lever"] == "route_concurrency"
        }
        forced = {lv["target"] for lv in levers if lv["lever"] == "approval_forced_route"}
        drained = {lv["target"] for lv in levers if lv["lever"] == "route_drained"}
        routes = [
            {
                "route": name,
                "limit": concurrency.get(name, cfg.concurrency_limit),
                "approval_forced": name in forced,
                "drained": name in drained,
            }
            for name, cfg in sorted(self.config.routes.items())
        ]
        return {"runs": runs, "near": sum(1 for r in runs if r["near"]), "routes": routes}

    def _decisions(self, tenant: str | None, since: datetime) -> dict[str, Any]:
        summary = self.reads.decision_summary(tenant, since)
        by_effect: dict[str, int] = {}
        for row in summary:
            by_effect[row["decision"]] = by_effect.get(row["decision"], 0) + int(row["count"])
        decided = self.approvals.list(tenant, None, limit=1000)
        approved = sum(1 for a in decided if a.status in ("approved", "consumed"))
        closed = sum(1 for a in decided if a.status != "pending")
        return {
            "by_effect": by_effect,
            "by_rule": summary,
            "recent": self.reads.recent_decisions(tenant, since),
            # an approver let through what a rule held back
            "override_rate": _rate(approved, closed),
            "rules": [r.id for r in self.config.policy.rules],
        }

    def _tools(self, tenant: str | None, since: datetime, levers: list[dict[str, Any]]) -> Any:
        effects = self.reads.tool_effects(tenant, since)
        decisions = self.reads.tool_decisions(tenant, since)
        calls = _tool_calls(self.reads.tool_events(tenant, since))
        disabled = {lv["target"] for lv in levers if lv["lever"] == "tool_disabled"}
        rows = []
        for name, cfg in sorted(self.config.tools.items()):
            eff = effects.get(name, {})
            total = sum(v for k, v in eff.items() if k != "attempts")
            failed = eff.get("failed", 0) + eff.get("unknown", 0)
            seen = calls.get(name, _ToolCalls())
            rows.append(
                {
                    "tool": name,
                    "calls": seen.starts,
                    "denied": decisions.get(name, {}).get("deny", 0),
                    "effects": total,
                    "timeout_rate": _rate(seen.timeouts, seen.starts),
                    # a call started again under the key it already had
                    "retry_rate": _rate(seen.starts - len(seen.keys), seen.starts),
                    "failure_rate": _rate(failed, total),
                    # a redelivered call that found its key's record (replayed, not re-run)
                    "conflict_rate": _rate(seen.replays, seen.starts + seen.replays),
                    "timeout_s": cfg.timeout_s,
                    "fallback": cfg.fallback,
                    "disabled": name in disabled,
                }
            )
        return rows

    def _trace(self, tenant: str | None, since: datetime) -> dict[str, Any]:
        scope = Scope(since=since, tenant_id=tenant)
        return {
            "high_risk_traces": self.reads.trace_coverage(scope),
            "stop_reasons": self.reads.stop_reason_coverage(scope, sorted(stop_reasons.KINDS)),
            "effect_decisions": self.reads.decision_coverage(scope),
        }

    def _releases(self) -> dict[str, Any]:
        return {
            "routes": self.releases.routes() if self.releases is not None else [],
            "releases": sorted(self.config.releases),
        }

    def _evals(self, tenant: str | None) -> dict[str, Any]:
        audit = self.releases.store.audit(limit=50) if self.releases is not None else []
        gates = [a for a in audit if a.get("gate")]
        blocking = [a for a in gates if not (a["gate"] or {}).get("passed", True)]
        return {
            "gate_history": gates[:20],
            "blocking_failures": blocking[:20],
            "captures": self.reads.captures(tenant),
        }

    # --- the run page ---------------------------------------------------------------
    def run_page(self, run_id: str, tenant: str | None) -> dict[str, Any]:
        """What a run's page shows besides the run and its trace; the caller has checked
        the run is ``tenant``'s (another tenant's run is not found)."""
        approvals = [
            self.approvals.get(a, tenant) for a in self.reads.approval_ids_of(run_id, tenant)
        ]
        dead = self.dead_letters.find(
            DeadLetterFilter(run_id=run_id, tenant=tenant, status=None), 50
        )
        return {
            "steps": self.runs.steps(run_id, tenant),
            "decisions": self.runs.policy_decisions(run_id),
            "effects": self.reads.effects_of(run_id, tenant),
            "approvals": approvals,
            "dead_letters": dead,
        }

    def budget_of(self, route: str, run_id: str) -> list[tuple[str, int, int]]:
        """(dimension, spent, limit) of a run against its route's budget policy."""
        cfg = self.config.routes.get(route)
        policy = self.config.budget_policies.get(cfg.budget_policy) if cfg else None
        limits = policy.per_run.ledger_limits() if policy else {}
        spent = self.reads.spend_of([run_id]).get(run_id, {})
        return [(d, spent.get(d, 0), lim) for d, lim in limits.items()]
