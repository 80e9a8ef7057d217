"""Prometheus metrics computed at scrape time from the shared state (Redis and SQL).

Nothing is counted in a process: every value is read when Prometheus scrapes, from the
state every worker and API process shares. So the numbers are the same whichever process
serves ``/metrics`` (the API, any worker's main process, on any host), a prefork child
never holds a private count, and a worker's restart loses nothing. The cost is per scrape,
not per step: two pipelined Redis round trips for the scheduler (``scheduling.view``), one
for breakers, releases and today's tenant budgets, and three grouped SQL counts.

Labels are bounded by the deployment's config (tenant, route, priority, queue, class,
rule, effect, breaker, dimension): never a run id.

Fail closed: a source that cannot be read (Redis or SQL down), or a Redis whose state is
unknown (it lost its data and recovery has not rebuilt it), reports
``agentrt_metrics_source_up{source} 0`` and none of that source's values - never a zero
that would read as "empty queues" or "nothing spent".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from runtime.budgets.ledger import today
from runtime.config import DIMENSIONS, RuntimeConfig
from runtime.keys import Keys
from runtime.release_sets import LiveRelease
from runtime.scheduling import histograms, view
from runtime.scheduling.scheduler import PRIORITIES
from runtime.store.metric_reads import MetricReads

log = logging.getLogger("agentrt.metrics")

PREFIX = "agentrt"
BREAKER_STATES = ("closed", "open", "half_open")
#: where each group of values comes from (``agentrt_metrics_source_up``)
SOURCES = (
    "scheduler",
    "budgets",
    "latency",
    "breakers",
    "releases",
    "approvals",
    "dead_letters",
    "policy",
)


@dataclass(frozen=True)
class MetricSources:
    """What one scrape reads: the deployment's Redis and store, under its config."""

    redis: redis.Redis
    keys: Keys
    config: RuntimeConfig
    reads: MetricReads
    #: whether Redis' state is known (its markers are of the generation SQL knows)
    state_known: Callable[[], bool]
    #: a route's live release (None: the route has no release)
    release_of: Callable[[str], LiveRelease | None]


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


class RuntimeCollector(Collector):
    """A ``prometheus_client`` collector over the sources ``current()`` returns at each
    scrape (a worker's may change when a new config is applied)."""

    def __init__(self, current: Callable[[], MetricSources]) -> None:
        self.current = current

    def describe(self) -> Iterable[Metric]:
        # no description at registration: registering must not read Redis or SQL
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = _gauge("metrics_source_up", "1 if the source was read at this scrape", ["source"])
        try:
            src = self.current()
        except Exception:
            log.exception("metrics: the runtime could not be built")
            for name in SOURCES:
                up.add_metric([name], 0)
            yield up
            return
        known = _known(src)
        groups: list[tuple[str, bool, Callable[[MetricSources], list[Metric]]]] = [
            ("scheduler", True, _scheduler),
            ("budgets", True, _budgets),
            ("latency", False, _latency),
            ("breakers", False, _breakers),
            ("releases", False, _releases),
            ("approvals", False, _approvals),
            ("dead_letters", False, _dead_letters),
            ("policy", False, _policy),
        ]
        for name, needs_state, read in groups:
            if needs_state and not known:
                up.add_metric([name], 0)
                continue
            try:
                metrics = read(src)
            except Exception:  # one source down must not hide the others
                log.exception("metrics: source %s could not be read", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up
        state = _gauge("redis_state_known", "1 if Redis' state is known (not lost)", [])
        state.add_metric([], 1 if known else 0)
        yield state
        took = _gauge("metrics_scrape_duration_seconds", "time this scrape took to read", [])
        took.add_metric([], time.perf_counter() - started)
        yield took


def _known(src: MetricSources) -> bool:
    try:
        return bool(src.state_known())
    except Exception:
        log.exception("metrics: Redis' state could not be checked")
        return False


def _scheduler(src: MetricSources) -> list[Metric]:
    v = view.read(src.redis, src.keys, src.config, limit=0)
    depth = _gauge(
        "queue_depth",
        "queued steps (ready and delayed) per tenant and priority",
        ["tenant", "priority"],
    )
    ready = _gauge("queue_ready", "steps ready to dispatch now, per tenant", ["tenant"])
    delayed = _gauge("queue_delayed", "steps waiting for their time, per tenant", ["tenant"])
    tenant_in_flight = _gauge("tenant_in_flight", "steps holding a slot, per tenant", ["tenant"])
    for t in v.tenants:
        for prio in PRIORITIES:
            depth.add_metric([t.tenant, prio], t.by_priority.get(prio, 0))
        ready.add_metric([t.tenant], t.ready)
        delayed.add_metric([t.tenant], t.delayed)
        tenant_in_flight.add_metric([t.tenant], t.in_flight)
    in_flight = _gauge("route_in_flight", "steps holding a slot, per route", ["route"])
    limit = _gauge(
        "route_concurrency_limit",
        "the concurrency limit the dispatcher enforces now (operator levers included; a "
        "drained route: 0)",
        ["route"],
    )
    queued = _gauge("route_queued", "queued steps per route", ["route"])
    for r in v.routes:
        in_flight.add_metric([r.route], r.in_flight)
        queued.add_metric([r.route], r.queued)
        if r.limit is not None:
            limit.add_metric([r.route], r.limit)
    capacity = _gauge("worker_capacity", "live worker processes the dispatcher counts", [])
    capacity.add_metric([], v.capacity)
    workers = _gauge("workers", "live workers (heartbeat not lapsed)", [])
    workers.add_metric([], len(v.workers))
    total = _gauge("in_flight", "steps holding a slot", [])
    total.add_metric([], v.in_flight)
    return [
        depth,
        ready,
        delayed,
        tenant_in_flight,
        in_flight,
        limit,
        queued,
        capacity,
        workers,
        total,
    ]


def _budgets(src: MetricSources) -> list[Metric]:
    """Today's (UTC) spend per tenant and dimension from the ledger, for every tenant of
    the config; remaining only where the tenant's daily budget limits the dimension."""
    tenants = sorted(src.config.tenants)
    day = today()
    pipe = src.redis.pipeline(transaction=False)
    for tenant in tenants:
        pipe.hgetall(src.keys.budget_tenant_day(tenant, day))
    raws = pipe.execute()
    used = _gauge(
        "budget_used", "ledger units spent today (UTC) per tenant", ["tenant", "dimension"]
    )
    reserved = _gauge(
        "budget_reserved", "ledger units held by steps in flight today", ["tenant", "dimension"]
    )
    limit = _gauge(
        "budget_limit", "the tenant's daily limit (ledger units)", ["tenant", "dimension"]
    )
    remaining = _gauge(
        "budget_remaining",
        "limit - used - reserved today; only for limited dimensions",
        ["tenant", "dimension"],
    )
    for tenant, raw in zip(tenants, raws, strict=True):
        fields = {_text(k): int(v) for k, v in raw.items()}
        limits = src.config.tenants[tenant].daily_budget.ledger_limits()
        for dim in DIMENSIONS:
            u, r = fields.get(f"u:{dim}", 0), fields.get(f"r:{dim}", 0)
            used.add_metric([tenant, dim], u)
            reserved.add_metric([tenant, dim], r)
            cap = limits.get(dim, -1)
            if cap >= 0:
                limit.add_metric([tenant, dim], cap)
                remaining.add_metric([tenant, dim], max(0, cap - u - r))
    return [used, reserved, limit, remaining]


def _latency(src: MetricSources) -> list[Metric]:
    """Step latency by route and stage (step, model_call, tool_call, checkpoint) and the
    dispatch wait of a step (a run's first from admission, a later one from the checkpoint
    that queued it), from the
    histograms every step adds to on its settle round trip."""
    step = HistogramMetricFamily(
        f"{PREFIX}_step_latency_seconds",
        "a step's duration (stage step) and its timed stages",
        labels=["route", "stage"],
    )
    wait = HistogramMetricFamily(
        f"{PREFIX}_dispatch_wait_seconds",
        "how long a step waited to start: step=first from the run's admission, step=next "
        "from the checkpoint that queued it",
        labels=["route", "step"],
    )
    for hist in histograms.read(src.redis, src.keys.scheduler().histograms):
        buckets = [(le, float(n)) for le, n in hist.cumulative()]
        if hist.metric == histograms.STEP:
            step.add_metric([hist.route, hist.stage], buckets, hist.sum_ms / 1000)
        elif hist.metric == histograms.DISPATCH_WAIT:
            wait.add_metric([hist.route, hist.stage], buckets, hist.sum_ms / 1000)
    return [step, wait]


def _breakers(src: MetricSources) -> list[Metric]:
    """Every configured breaker (a model's, a tool's) as one series per state, 1 for the
    state it is in."""
    config = src.config
    names = [f"model:{n}" for n in sorted(config.models) if config.models[n].breaker]
    names += [f"tool:{n}" for n in sorted(config.tools) if config.tools[n].breaker]
    pipe = src.redis.pipeline(transaction=False)
    for name in names:
        pipe.hget(src.keys.breaker(name), "state")
    states = pipe.execute() if names else []
    state = _gauge("breaker_state", "1 for the state a circuit breaker is in", ["breaker", "state"])
    for name, raw in zip(names, states, strict=True):
        now = _text(raw) if raw else "closed"
        for s in BREAKER_STATES:
            state.add_metric([name, s], 1 if s == now else 0)
    return [state]


def _releases(src: MetricSources) -> list[Metric]:
    info = _gauge(
        "release_info",
        "1 per route and release: role active or canary",
        ["route", "release", "role"],
    )
    percent = _gauge("release_canary_percent", "share of new runs on the canary", ["route"])
    for route in sorted(src.config.routes):
        state = src.release_of(route)
        if state is None:
            continue
        info.add_metric([route, state.active, "active"], 1)
        if state.canary is not None:
            info.add_metric([route, state.canary, "canary"], 1)
            percent.add_metric([route], state.percent or 0)
        else:
            percent.add_metric([route], 0)
    return [info, percent]


def _approvals(src: MetricSources) -> list[Metric]:
    pending = _gauge("approvals_pending", "approvals waiting for a human", ["tenant", "route"])
    age = _gauge(
        "approval_oldest_age_seconds",
        "how long the oldest pending approval has waited",
        ["tenant", "route"],
    )
    now = time.time()
    for row in src.reads.pending_approvals():
        pending.add_metric([row.tenant, row.route], row.count)
        age.add_metric([row.tenant, row.route], max(0.0, now - row.oldest.timestamp()))
    return [pending, age]


def _dead_letters(src: MetricSources) -> list[Metric]:
    open_ = _gauge("dead_letters_open", "open dead-letter entries", ["queue", "class"])
    for row in src.reads.open_dead_letters():
        open_.add_metric([row.queue, row.dl_class], row.count)
    return [open_]


def _policy(src: MetricSources) -> list[Metric]:
    decisions = CounterMetricFamily(
        f"{PREFIX}_policy_decisions",
        "policy decisions recorded, per rule and effect (allow, deny, require_approval, escalate)",
        labels=["rule", "effect"],
    )
    for row in src.reads.decision_counts():
        decisions.add_metric([row.rule, row.effect], row.count)
    return [decisions]


def registry(current: Callable[[], MetricSources]) -> CollectorRegistry:
    """A dedicated registry holding only the runtime's collector (no process metrics of
    whichever process serves it: they would differ per process)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RuntimeCollector(current))
    return reg


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
