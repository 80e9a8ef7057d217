"""A read-only picture of the scheduler for operators (``agentrt queues``).

Two pipelined round trips, never a key scan: the first reads Redis' clock, the scheduler's
counters and indexes (queued per tenant x priority, workers, parked tenants, slot leases),
every configured rate limiter and tool bulkhead; the second counts the ready queues of the
tenants that have queued steps, so ready and delayed can be told apart. Nothing is written:
the view does not sync the config or run the pump.

Redis' own ``TIME`` is "now", as in the Lua scripts, so lease expiries and how far a rate
limiter's schedule runs ahead are measured on the clock that decides them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from runtime.config import RateLimit, RuntimeConfig
from runtime.keys import Keys
from runtime.scheduling import limits
from runtime.scheduling.scheduler import PRIORITIES, Item


@dataclass(frozen=True)
class Worker:
    name: str
    processes: int
    #: seconds until the heartbeat lapses (the worker counts as gone after that)
    expires_in_s: float


@dataclass
class TenantQueues:
    tenant: str
    weight: int
    #: queued steps (ready + delayed) per priority class
    by_priority: dict[str, int]
    ready: int
    delayed: int
    in_flight: int
    max_concurrency: int | None
    max_queued: int | None
    #: "route:<name>" (its next steps need a full route) | "tenant_cap" | None
    parked: str | None = None

    @property
    def queued(self) -> int:
        return sum(self.by_priority.values())


@dataclass
class RouteLoad:
    route: str
    in_flight: int
    #: the concurrency limit the dispatcher enforces (None: not in the live config)
    limit: int | None
    queued: int
    max_queued: int | None
    on_queue_full: str | None
    #: tenants parked until a slot of this route frees
    parked_tenants: list[str] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_flight >= self.limit


@dataclass(frozen=True)
class Lease:
    item: Item
    #: negative when the lease lapsed and the next pump round will re-queue the step
    expires_in_s: float


@dataclass(frozen=True)
class Bulkhead:
    tool: str
    max_concurrency: int
    #: calls holding a place now (run:step), soonest lease expiry first
    holders: list[str]


@dataclass(frozen=True)
class RateLimitState:
    #: the limiter's name, e.g. ``model:gpt:requests``, ``model:gpt:tokens``, ``tool:x``
    name: str
    kind: str  # "requests" | "tokens" | "tool"
    subject: str  # the model or tool
    limit: RateLimit
    #: how far the limiter's schedule (GCRA theoretical arrival time) runs ahead of now
    ahead_ms: float

    @property
    def interval_ms(self) -> float:
        return self.limit.period_s * 1000 / self.limit.limit

    @property
    def tolerance_ms(self) -> float:
        return self.interval_ms * (self.limit.burst - 1)

    @property
    def available(self) -> int:
        """Units (requests or tokens) one take may have now: ``gcra.lua`` allows a take
        while the schedule, after it, runs at most the burst tolerance + one interval ahead."""
        room = self.tolerance_ms + self.interval_ms - self.ahead_ms
        return max(0, min(self.limit.burst, math.floor(room / self.interval_ms + 1e-9)))

    @property
    def throttling(self) -> bool:
        """Even a take of one unit would be refused now (the step is deferred)."""
        return self.ahead_ms > self.tolerance_ms

    @property
    def retry_after_ms(self) -> float:
        """Until a take of one unit would pass."""
        return max(0.0, self.ahead_ms - self.tolerance_ms)


@dataclass
class QueuesView:
    namespace: str
    tenant: str | None
    now_ms: int
    #: live worker processes, as the dispatcher counts them
    capacity: int
    #: steps the dispatcher lets be in flight: capacity plus headroom
    dispatch_limit: int
    workers: list[Worker]
    in_flight: int
    delayed: int
    tenants: list[TenantQueues]
    routes: list[RouteLoad]
    leases: list[Lease]
    leases_total: int
    bulkheads: list[Bulkhead]
    rate_limits: list[RateLimitState]

    @property
    def queued(self) -> int:
        return sum(t.queued for t in self.tenants)

    @property
    def parked(self) -> list[TenantQueues]:
        return [t for t in self.tenants if t.parked]


def rate_limiters(config: RuntimeConfig) -> list[tuple[str, str, str, RateLimit]]:
    """Every configured limiter as (name, kind, subject, limit). The names are the ones the
    step runner takes from (``runtime/step/``)."""
    out: list[tuple[str, str, str, RateLimit]] = []
    for model_name in sorted(config.models):
        model = config.models[model_name]
        if model.requests_rate:
            out.append(
                (limits.model_requests(model_name), "requests", model_name, model.requests_rate)
            )
        if model.tokens_rate:
            out.append((limits.model_tokens(model_name), "tokens", model_name, model.tokens_rate))
    for tool_name in sorted(config.tools):
        limit = config.tools[tool_name].rate_limit
        if limit:
            out.append((limits.tool_calls(tool_name), "tool", tool_name, limit))
    return out


def read(
    client: redis.Redis,
    keys: Keys,
    config: RuntimeConfig,
    tenant: str | None = None,
    limit: int = 20,
) -> QueuesView:
    """The scheduler's state, optionally for one tenant; at most ``limit`` leases listed
    (soonest expiry first: roughly, the leases granted or renewed longest ago)."""
    k = keys.scheduler()
    limiters = rate_limiters(config)
    bulkhead_tools = sorted(n for n, t in config.tools.items() if t.max_concurrency)

    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(k.depth_tenant_priority)
    pipe.hgetall(k.depth_route)
    pipe.zcard(k.delayed)
    pipe.hgetall(k.workers)
    pipe.get(k.capacity)
    pipe.hget(k.table("conf"), "headroom")
    pipe.hgetall(k.parked)
    pipe.hgetall(k.table("rlimit"))
    pipe.hgetall(k.table("tcap"))
    pipe.hgetall(k.table("weight"))
    # every slot lease: bounded by what the dispatcher lets run (capacity plus headroom)
    pipe.zrange(k.inflight, 0, -1, withscores=True)
    for tool in bulkhead_tools:
        pipe.zrange(keys.bulkhead(tool), 0, -1, withscores=True)
    for name, *_ in limiters:
        pipe.get(keys.rate_limit(name))
    # operator levers (runtime.levers): a live limit, a drained route (limit 0 now)
    pipe.hgetall(k.live_route_limit)
    pipe.smembers(k.drained_routes)
    results = list(pipe.execute())
    drained = {_text(m) for m in results.pop()}
    live_limits = _text_map(results.pop())

    (clock, depth_tp, depth_r, delayed, workers, capacity, headroom, parked, rlimit, tcap,
     weights, inflight) = results[:12]  # fmt: skip
    bulkhead_raw = results[12 : 12 + len(bulkhead_tools)]
    limiter_raw = results[12 + len(bulkhead_tools) :]
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000

    # --- slots in flight -------------------------------------------------------------
    items = [(Item.decode(m), float(s)) for m, s in inflight]
    by_route = Counter(i.route for i, _ in items)
    by_tenant = Counter(i.tenant for i, _ in items)
    mine = [(i, s) for i, s in items if tenant is None or i.tenant == tenant]
    leases = [Lease(i, round((s - now) / 1000, 3)) for i, s in mine[:limit]]

    # --- queued per tenant x priority ------------------------------------------------
    by_priority: dict[str, dict[str, int]] = {}
    for key, value in _text_map(depth_tp).items():
        name, _, prio = key.rpartition("|")
        count = int(value)
        if count and prio.isdigit() and int(prio) < len(PRIORITIES):
            by_priority.setdefault(name, dict.fromkeys(PRIORITIES, 0))[PRIORITIES[int(prio)]] = (
                count
            )
    parked_map = _text_map(parked)
    caps = {k: int(v) for k, v in _text_map(tcap).items()}
    weight_map = {k: int(v) for k, v in _text_map(weights).items()}
    active = set(by_priority) | set(by_tenant) | set(parked_map)
    names = sorted({tenant} if tenant is not None else active)
    queued_names = [n for n in names if n in by_priority]

    ready: list[int] = []
    if queued_names:  # the second round trip: ready queues of tenants with queued steps
        pipe = client.pipeline(transaction=False)
        for name in queued_names:
            pipe.zcard(k.ready(name))
        ready = [int(n) for n in pipe.execute()]
    ready_of = dict(zip(queued_names, ready, strict=True))

    tenants: list[TenantQueues] = []
    for name in names:
        conf = config.tenants.get(name)
        prios = by_priority.get(name, dict.fromkeys(PRIORITIES, 0))
        queued = sum(prios.values())
        ready_n = min(ready_of.get(name, 0), queued)
        tenants.append(
            TenantQueues(
                tenant=name,
                weight=weight_map.get(name, conf.weight if conf else 1),
                by_priority=prios,
                ready=ready_n,
                delayed=queued - ready_n,
                in_flight=by_tenant.get(name, 0),
                max_concurrency=caps.get(name),
                max_queued=conf.max_queued if conf else None,
                parked=_parked(parked_map.get(name)),
            )
        )

    # --- routes ----------------------------------------------------------------------
    limits = {k: int(v) for k, v in (_text_map(rlimit) | live_limits).items()}
    limits |= dict.fromkeys(drained, 0)
    route_depth = {k: int(v) for k, v in _text_map(depth_r).items()}
    route_names = list(config.routes)
    extra = (set(limits) | {r for r, n in route_depth.items() if n} | set(by_route)) - set(
        route_names
    )
    route_names += sorted(extra)
    waiting: dict[str, list[str]] = {}
    for name, where in sorted(parked_map.items()):
        if where.startswith("r:") and (tenant is None or name == tenant):
            waiting.setdefault(where[2:], []).append(name)
    routes = []
    for name in route_names:
        conf_r = config.routes.get(name)
        routes.append(
            RouteLoad(
                route=name,
                in_flight=by_route.get(name, 0),
                limit=limits.get(name, conf_r.concurrency_limit if conf_r else None),
                queued=route_depth.get(name, 0),
                max_queued=conf_r.max_queued if conf_r else None,
                on_queue_full=conf_r.on_queue_full if conf_r else None,
                parked_tenants=waiting.get(name, []),
            )
        )

    # --- workers, bulkheads, rate limits ---------------------------------------------
    live = []
    for name, value in sorted(_text_map(workers).items()):
        procs, _, expiry = value.partition("|")
        if expiry.isdigit() and int(expiry) > now:
            live.append(Worker(name, int(procs), round((int(expiry) - now) / 1000, 3)))
    cap = int(capacity or 0)
    room = float(headroom) if headroom is not None else config.scheduling.headroom()
    bulkheads = [
        Bulkhead(
            tool,
            config.tools[tool].max_concurrency or 0,
            [_text(m) for m, s in raw if float(s) > now],
        )
        for tool, raw in zip(bulkhead_tools, bulkhead_raw, strict=True)
    ]
    rate_limits = [
        RateLimitState(name, kind, subject, lim, max(0.0, float(raw) - now) if raw else 0.0)
        for (name, kind, subject, lim), raw in zip(limiters, limiter_raw, strict=True)
    ]
    return QueuesView(
        namespace=keys.namespace,
        tenant=tenant,
        now_ms=now,
        capacity=cap,
        dispatch_limit=cap + math.ceil(cap * room),
        workers=live,
        in_flight=len(items),
        delayed=int(delayed) if tenant is None else sum(t.delayed for t in tenants),
        tenants=tenants,
        routes=routes,
        leases=leases,
        leases_total=len(mine),
        bulkheads=bulkheads,
        rate_limits=rate_limits,
    )


def _parked(where: str | None) -> str | None:
    if where is None:
        return None
    if where == "t":
        return "tenant_cap"
    return f"route:{where[2:]}" if where.startswith("r:") else where


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_map(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
