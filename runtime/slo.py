"""The runtime SLO report (``agentrt slo report``, the dashboard's SLO panel): each SLO of
the deployment file (``slos``, or every kind with its default target) measured from the
store over runs created since a time, with its target, owner, status and the runs that
miss it. The seed's "Runtime SLO And Incident Loop": an SLO names an owner, and a miss
names the runs that prove it.

Every measurement is a percent. ``met`` means at least the target, except the cost SLO
(cost per completed run as a percent of the route's per-run cost budget: at most the
target). ``no data`` (nothing to measure) never counts as a miss.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from runtime import stop_reasons
from runtime.config import RuntimeConfig, SloConfig, SloKind
from runtime.errors import InvalidRequest
from runtime.store.db import utcnow
from runtime.store.slo_reads import Coverage, Scope, SloReads

SloStatus = Literal["met", "missed", "no data"]
#: offending runs (or routes) named per SLO
OFFENDERS = 5
#: the table a check of the eval gate reads (the evals feature creates it)


@dataclass(frozen=True)
class Measurement:
    """What one check measured: a percent (None: nothing to measure), the runs (or
    routes) that miss, and a line saying what was counted."""

    value: float | None
    offenders: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class SloResult:
    name: str
    kind: str
    target: float
    #: "at least" or "at most" the target
    bound: str
    measured: float | None
    status: SloStatus
    owner: str
    detail: str
    offenders: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SloReport:
    since: datetime
    route: str | None
    tenant: str | None
    results: list[SloResult]

    @property
    def missed(self) -> list[SloResult]:
        return [r for r in self.results if r.status == "missed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "route": self.route,
            "tenant": self.tenant,
            "missed": [r.name for r in self.missed],
            "slos": [r.as_dict() for r in self.results],
        }


#: a check of the eval gate: given the store's reads and the scope, a measurement (the
#: evals feature plugs its own in; without one the report says "no data")
EvalGateCheck = Callable[[SloReads, Scope], Measurement]


def release_gate_health(reads: SloReads, scope: Scope) -> Measurement:
    """The release gate's health: of its verdicts in the window (each promotion asks it),
    the percent that were clean - no flaky case and no case that could not be replayed.
    A gate refusing a release that changes a recorded outcome is the gate working; a
    flaky case means the gate cannot be trusted to decide. None without any verdict."""
    verdicts = reads.gate_results(scope)
    if not verdicts:
        return Measurement(None, detail="no release gate ran in the window")
    unhealthy = [v for v in verdicts if int(v["gate"].get("flaky") or 0) > 0]
    value = 100.0 * (len(verdicts) - len(unhealthy)) / len(verdicts)
    offenders = sorted({f"{v['route']}:{v['release']}" for v in unhealthy})[:5]
    refused = sum(1 for v in verdicts if not v["gate"].get("passed"))
    return Measurement(
        value,
        offenders,
        f"{len(unhealthy)} of {len(verdicts)} gate runs had flaky cases; {refused} refused "
        "a release",
    )


def _coverage(cov: Coverage, what: str, empty: str) -> Measurement:
    if cov.total == 0:
        return Measurement(None, detail=empty)
    value = 100.0 * (cov.total - cov.missing) / cov.total
    return Measurement(value, cov.run_ids, f"{cov.missing} of {cov.total} {what}")


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class SloReporter:
    """Measures the deployment's SLOs; built by ``runtime.wiring.build_slo_reporter``."""

    def __init__(
        self,
        *,
        config: RuntimeConfig,
        reads: SloReads,
        eval_gate: EvalGateCheck = release_gate_health,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._config = config
        self._reads = reads
        self._eval_gate = eval_gate
        self._clock = clock

    def report(
        self, *, since: datetime, route: str | None = None, tenant_id: str | None = None
    ) -> SloReport:
        """Every SLO over runs created at or after ``since``, on ``route`` (None: all),
        of ``tenant_id`` (None: every tenant). Raises ``InvalidRequest`` for a route the
        config does not have or a ``since`` in the future."""
        if route is not None and route not in self._config.routes:
            raise InvalidRequest(("route",), f"unknown route {route!r}")
        if since.tzinfo is None or since > self._clock():
            raise InvalidRequest(("since",), "since must be an aware time, not in the future")
        results = [
            self._measure(name, kind, target, entry, since, route, tenant_id)
            for name, kind, target, entry in self._config.slo_list()
        ]
        return SloReport(since=since, route=route, tenant=tenant_id, results=results)

    def _routes(self, entry: SloConfig, route: str | None) -> list[str]:
        names = [route] if route is not None else list(self._config.routes)
        if entry.routes is None:
            return names
        return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in entry.routes)]

    def _measure(
        self,
        name: str,
        kind: SloKind,
        target: float,
        entry: SloConfig,
        since: datetime,
        route: str | None,
        tenant_id: str | None,
    ) -> SloResult:
        routes = self._routes(entry, route)
        # the config's routes only when the SLO or the report narrows them: a run of a
        # route since removed from the file still counts in the operator's view
        narrowed = routes if (entry.routes is not None or route is not None) else None
        scope = Scope(since=since, routes=narrowed, tenant_id=tenant_id)
        if narrowed == []:
            m = Measurement(None, detail="no route of this report matches the SLO's routes")
        else:
            m = self._check(kind, scope, routes)
        at_most = kind == "cost_per_completed_run"
        status: SloStatus
        if m.value is None:
            status = "no data"
        elif (m.value <= target) if at_most else (m.value >= target):
            status = "met"
        else:
            status = "missed"
        return SloResult(
            name=name,
            kind=kind,
            target=target,
            bound="at most" if at_most else "at least",
            measured=None if m.value is None else round(m.value, 2),
            status=status,
            owner=entry.owner,
            detail=m.detail,
            offenders=m.offenders[:OFFENDERS] if status == "missed" else [],
        )

    def _check(self, kind: SloKind, scope: Scope, routes: list[str]) -> Measurement:
        if kind == "trace_coverage_high_risk":
            cov = self._reads.trace_coverage(scope, limit=OFFENDERS)
            return _coverage(
                cov,
                "ended high-risk runs lack an admission or stop event",
                "no ended high-risk runs",
            )
        if kind == "decision_coverage_side_effects":
            cov = self._reads.decision_coverage(scope, limit=OFFENDERS)
            return _coverage(
                cov, "side effects have no policy decision for their call", "no side effects"
            )
        if kind == "stop_reason_completeness":
            kinds = sorted(stop_reasons.KINDS)
            cov = self._reads.stop_reason_coverage(scope, kinds, limit=OFFENDERS)
            return _coverage(cov, "ended runs have no stop reason of the taxonomy", "no ended runs")
        if kind == "approval_latency_p95":
            return self._approval_latency(scope, routes)
        if kind == "cost_per_completed_run":
            return self._cost(scope, routes)
        return self._eval_gate(self._reads, scope)

    def _approval_latency(self, scope: Scope, routes: list[str]) -> Measurement:
        """Approval waits that resolved (or expired) within the route's ``approval_sla_s``;
        a wait still open counts once it is past the SLA. Routes without an SLA are left
        out."""
        slas = {
            r: sla for r in routes if (sla := self._config.routes[r].approval_sla_s) is not None
        }
        if not slas:
            return Measurement(None, detail="no route has approval_sla_s")
        now = self._clock()
        waits: list[float] = []  # wait as a fraction of its SLA
        late: list[str] = []
        measured = Scope(since=scope.since, routes=sorted(slas), tenant_id=scope.tenant_id)
        for row in self._reads.approval_waits(measured):
            sla_s = slas[row["route"]]
            end = row["decided_at"] or (row["expires_at"] if row["status"] == "expired" else None)
            waited_s = (_aware(end or now) - _aware(row["requested_at"])).total_seconds()
            if end is None and waited_s <= sla_s:
                continue  # open, and still inside its SLA: nothing to say yet
            waits.append(waited_s / sla_s)
            if waited_s > sla_s:
                late.append(str(row["run_id"]))
        if not waits:
            return Measurement(None, detail="no approval waits resolved or past their SLA")
        inside = sum(1 for w in waits if w <= 1)
        p95 = _percentile(waits, 95) * 100
        return Measurement(
            100.0 * inside / len(waits),
            list(dict.fromkeys(late)),
            f"{inside} of {len(waits)} approval waits within the route's SLA "
            f"(p95 at {p95:.0f}% of the SLA)",
        )

    def _cost(self, scope: Scope, routes: list[str]) -> Measurement:
        """The worst route's cost per completed run, as a percent of its per-run cost
        budget; routes without a cost budget are left out."""
        budgets: dict[str, float] = {}
        for r in routes:
            route = self._config.routes[r]
            per_run = self._config.budget_policies[route.budget_policy].per_run
            if per_run.cost_usd:
                budgets[r] = per_run.cost_usd * 1_000_000
        if not budgets:
            return Measurement(None, detail="no route has a per-run cost budget")
        measured = Scope(since=scope.since, routes=sorted(budgets), tenant_id=scope.tenant_id)
        worst: tuple[float, str, list[str]] | None = None
        rows = [c for c in self._reads.route_costs(measured) if c.completed > 0]
        for cost in rows:
            pct = 100.0 * cost.cost_micro_usd / cost.completed / budgets[cost.route]
            if worst is None or pct > worst[0]:
                worst = (pct, cost.route, cost.top_run_ids)
        if worst is None:
            return Measurement(None, detail="no completed runs on a route with a cost budget")
        pct, worst_route, top = worst
        return Measurement(
            pct,
            top,
            f"worst route {worst_route}: {pct:.1f}% of its per-run cost budget per completed run",
        )


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive UTC times
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
