"""Fair multi-tenant scheduling in front of Celery.

Steps wait in per-tenant ready queues in Redis; a dispatch decision (one Lua call,
``lua/sched.lua``) picks the next step across tenants by weighted fair queuing within
priority bands, takes the route's and the tenant's concurrency slots, and only then is the
step published to Celery. Celery therefore only ever holds what may run now, bounded by
the live worker capacity the workers report, and a small tenant's step never waits behind
a flooding tenant's backlog.

* Priority: critical, high, normal, low. Within a tenant a step's order is its enqueue time
  plus its class's offset (``priority_offsets_s``): a low step overtakes high steps that
  arrived more than the offset difference after it, so low never starves. Across tenants,
  bands are served strictly in order, and a tenant whose head waited longer than its
  class's ``max_wait_s`` is served first whatever its band.
* Fairness is per tenant (stride scheduling with the tenant's ``weight``), so spreading
  work over many routes or keys buys a tenant nothing.
* Slots are leases: a step holds its route's and tenant's slot until it checkpoints, defers
  or waits. A step that started records its owner (the process instance holding its run
  lease, ``lua/start.lua``); when that instance's heartbeat expires (its worker died), the
  step is handed back within about ``worker_dead_after_s``: it keeps its slot and is
  published again. A step dispatched but never started has no owner: its slot lease
  expires and it is queued again.

All scheduler keys share the ``{sched}`` hash tag, so every script runs in one Redis
Cluster slot. To scale past one Redis, run one scheduler cell per Redis (keys are
namespaced; ``AGENTRT_NAMESPACE`` per cell) and shard tenants across cells by hash of the
tenant id; each cell keeps its own fairness, and workers consume from every cell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from runtime import scripts
from runtime.config import RuntimeConfig
from runtime.keys import LIMIT_TABLES, Keys

PRIORITIES = ("critical", "high", "normal", "low")
#: how often (at most, across all workers' pumps) running steps' owners are checked
HANDBACK_EVERY_MS = 1000
#: ``start.lua`` results
STARTED_NOT_IN_FLIGHT, STARTED_OWNED, STARTED_OWNED_ELSEWHERE = 0, 1, 2
PRIORITY_INDEX = {p: i for i, p in enumerate(PRIORITIES)}
#: weight of a new sample in a route's step-time moving average (``lua/step_time.lua``)
STEP_TIME_ALPHA = 0.2


@dataclass(frozen=True)
class Item:
    """One step waiting for, or holding, a slot."""

    run_id: str
    step_no: int
    tenant: str
    route: str
    priority: str = "normal"

    def encode(self) -> str:
        # a priority no version of the runtime wrote (a row edited by hand) never breaks
        # scheduling: such a step goes last
        prio = PRIORITY_INDEX.get(self.priority, PRIORITY_INDEX["low"])
        return f"{self.run_id}|{self.step_no}|{self.tenant}|{self.route}|{prio}"

    @classmethod
    def decode(cls, raw: str | bytes) -> Item:
        text = raw.decode() if isinstance(raw, bytes) else raw
        run_id, step, tenant, route, prio = text.split("|")
        return cls(run_id, int(step), tenant, route, PRIORITIES[int(prio)])


def item_of(run: dict[str, Any], step_no: int) -> Item:
    """The scheduler item of a run's step (``run`` is a run row)."""
    return Item(run["run_id"], step_no, run["tenant_id"], run["route"], run["priority"])


class Ops:
    """A batch of scheduler operations, run atomically by one script call."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def enqueue(self, item: Item, base_ms: int = 0) -> Ops:
        self.args += ["E", item.encode(), base_ms]
        return self

    def delay(self, item: Item, due_ms: int) -> Ops:
        self.args += ["D", item.encode(), due_ms]
        return self

    def complete(self, item: Item) -> Ops:
        self.args += ["C", item.encode()]
        return self

    def drop(self, item: Item) -> Ops:
        """Forget the item wherever it is: queued, delayed or in flight."""
        self.args += ["Z", item.encode()]
        return self

    def renew(self, item: Item, ttl_ms: int) -> Ops:
        self.args += ["R", item.encode(), ttl_ms]
        return self

    def dispatch(self, max_items: int) -> Ops:
        self.args += ["X", max_items]
        return self

    def promote(self, max_items: int = 100) -> Ops:
        self.args += ["P", max_items]
        return self

    def expire(self, max_items: int = 100, handback_every_ms: int = HANDBACK_EVERY_MS) -> Ops:
        """Hand back running steps whose owner instance is dead (looked at once per
        ``handback_every_ms`` across all workers), then expire slot leases."""
        self.args += ["L", max_items, handback_every_ms]
        return self

    def heartbeat(self, worker: str, processes: int, ttl_ms: int) -> Ops:
        self.args += ["H", worker, processes, ttl_ms]
        return self

    def unpark(self) -> Ops:
        """Let every parked tenant try again (new limits were published)."""
        self.args += ["U"]
        return self


@dataclass
class Outcome:
    #: items to publish: dispatched now, or handed back from a dead instance
    dispatched: list[Item]
    #: items whose slot lease expired: queued again
    expired: list[Item]
    #: False: Redis's scheduling state is unknown (lost, or an old snapshot); nothing but
    #: heartbeats was done, and recovery must run (see runtime.state)
    state_known: bool = True
    #: items whose owner instance died: published again with their slots (in ``dispatched``)
    handed_back: list[Item] = field(default_factory=list)
    #: the dead instances they were taken from
    dead_instances: list[str] = field(default_factory=list)
    #: steps in flight not started yet, those in ``dispatched`` included (waiting in
    #: Celery for a worker process)
    unstarted: int = 0


def now_ms() -> int:
    return int(time.time() * 1000)


class Scheduler:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        config: RuntimeConfig,
        generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.config = config
        #: the scripts' ARGV[1]: they build the scheduler's key names from it
        self.prefix = keys.sched()
        self.k = keys.scheduler()
        #: the state generation this process knows from SQL (see runtime.state)
        self.generation = generation
        self.script = scripts.register(
            client, scripts.lua("runtime.scheduling", "sched.lua", state_guard=True)
        )
        self._start = scripts.register(client, scripts.lua("runtime.scheduling", "start.lua"))
        self._step_time = scripts.register(
            client, scripts.lua("runtime.scheduling", "step_time.lua")
        )

    # --- configuration ---------------------------------------------------------------
    def publish_config(self, version: str, digest: str) -> None:
        """Publish the deployment's limits to Redis, where the dispatch script reads them.
        Only the config's owner does this (``agentrt config apply``, a worker started with
        ``--apply-config``, recovery from the applied config in SQL); every route and
        tenant gets an entry, because a missing one is read as "unknown: wait", never as
        "unlimited"."""
        sched = self.config.scheduling
        conf: dict[str, float] = {
            "lookahead": sched.lookahead,
            "headroom": sched.headroom(),
            "ttl": int((sched.queue_allowance_s + self.config.lease_ttl_s()) * 1000),
        }
        for i, name in enumerate(PRIORITIES):
            conf[f"off{i}"] = int(sched.priority_offsets_s[name] * 1000)
            conf[f"wait{i}"] = int(sched.max_wait_s[name] * 1000)
        tenants, routes = self.config.tenants, self.config.routes
        tables: dict[str, dict[str, float]] = {
            "conf": conf,
            "rlimit": {name: r.concurrency_limit for name, r in routes.items()},
            "rttl": {name: self.lease_ttl_ms(name) for name in routes},
            "weight": {name: t.weight for name, t in tenants.items()},
            "tcap": {n: t.max_concurrency or -1 for n, t in tenants.items()},
        }
        pipe = self.redis.pipeline(transaction=True)
        for name, mapping in tables.items():
            key = self.k.table(name)
            pipe.delete(key)
            if mapping:
                pipe.hset(key, mapping=cast(Any, mapping))
        pipe.hset(self.keys.published_config(), mapping={"version": version, "digest": digest})
        pipe.execute()
        # tenants parked on a route or cap that had no entry may go now
        self.run(Ops().unpark().dispatch(10))

    def published(self) -> tuple[str, str] | None:
        """(version, digest) of the published config, or None if none is."""
        raw = self.redis.hmget(self.keys.published_config(), ["version", "digest"])
        if raw[0] is None or raw[1] is None:
            return None
        return _text(raw[0]), _text(raw[1])

    # --- state (see runtime.state) -----------------------------------------------------
    def reset_state(self) -> int:
        """Forget every queue, slot and index (recovery, before queueing runs from SQL
        again): an old snapshot's in-flight entries would hold slots nobody uses. Keeps the
        published config, worker heartbeats, process instances' heartbeats (deleting one
        would declare a live process dead) and the recovery's own keys."""
        k, keys = self.k, self.keys
        keep = {k.table(name) for name in LIMIT_TABLES} | {
            k.workers, k.capacity, k.paused,
            keys.recovery_lock(), keys.published_config(), keys.sched_state(),
        }  # fmt: skip
        alive = (keys.instance_alive(""), keys.instance_children(""))
        doomed = [
            key
            for key in (_text(raw) for raw in self.redis.scan_iter(k.pattern(), count=1000))
            if key not in keep and not key.startswith(alive)
        ]
        for start in range(0, len(doomed), 500):
            self.redis.delete(*doomed[start : start + 500])
        return len(doomed)

    def lease_ttl_ms(self, route: str) -> int:
        """Slot lease from dispatch: queue allowance + the step's hard limit + margin."""
        sched = self.config.scheduling
        hard = self.config.hard_limit_s(route)
        return int((sched.queue_allowance_s + hard + sched.lease_margin_s) * 1000)

    def running_ttl_ms(self, route: str) -> int:
        """Slot lease once the step runs: its hard limit + margin."""
        margin = self.config.scheduling.lease_margin_s
        return int((self.config.hard_limit_s(route) + margin) * 1000)

    # --- operations ------------------------------------------------------------------
    def queue_in(self, pipe: Any, ops: Ops) -> None:
        """Queue ``ops`` on a pipeline run by ``scripts.run_pipeline``."""
        argv = [self.prefix, self.generation(), *ops.args]
        scripts.queue(pipe, self.script, [self.k.inflight], argv)

    def start_in(self, pipe: Any, item: Item, ttl_ms: int, owner: str, mode: str = "own") -> None:
        """Queue ``start.lua``: the step starts under ``owner`` (``<instance>|<nonce>``):
        renew its slot leases to ``ttl_ms`` and record the owner (mode ``own``; ``force``
        once the caller holds the run lease; ``disown`` when it did not get it). The
        result is one of ``STARTED_*``."""
        argv = [self.prefix, item.encode(), ttl_ms, owner, mode]
        scripts.queue(pipe, self._start, [self.k.inflight], argv)

    def start(self, item: Item, ttl_ms: int, owner: str, mode: str) -> int:
        results = scripts.run_pipeline(
            self.redis, lambda pipe: self.start_in(pipe, item, ttl_ms, owner, mode)
        )
        return int(results[0])

    def owner_of(self, item: Item) -> str | None:
        raw = self.redis.hget(self.k.owner, item.encode())
        return raw.decode() if isinstance(raw, bytes) else raw

    @staticmethod
    def outcome(raw: Sequence[Any]) -> Outcome:
        dispatched, expired, known = raw[0], raw[1], raw[2]
        handed = raw[3] if len(raw) > 3 else []
        dead = raw[4] if len(raw) > 4 else []
        unstarted = int(raw[5]) if len(raw) > 5 else 0
        return Outcome(
            [Item.decode(i) for i in dispatched],
            [Item.decode(i) for i in expired],
            state_known=bool(int(known)),
            handed_back=[Item.decode(i) for i in handed],
            dead_instances=[d.decode() if isinstance(d, bytes) else str(d) for d in dead],
            unstarted=unstarted,
        )

    def run(self, ops: Ops) -> Outcome:
        results = scripts.run_pipeline(self.redis, lambda pipe: self.queue_in(pipe, ops))
        return self.outcome(results[0])

    # --- reads for operators and admission -------------------------------------------
    def depth(self, tenant: str, route: str) -> tuple[int, int]:
        """Queued steps (ready + delayed) of a tenant and of a route."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.k.depth_tenant, tenant)
        pipe.hget(self.k.depth_route, route)
        t, r = pipe.execute()
        return int(t or 0), int(r or 0)

    def capacity(self) -> int:
        return int(self.redis.get(self.k.capacity) or 0)

    def estimated_wait_s(self, route: str, queued_ahead: int) -> float:
        """Rough wait for a new step: steps ahead / (route slots x recent step time)."""
        limit = self.config.routes[route].concurrency_limit
        slots = max(1, min(limit, self.capacity() or limit))
        step_ms = self.step_time_ms(route)
        avg_ms = 1000.0 if step_ms is None else step_ms  # nothing measured yet: 1 s a step
        return math.ceil((queued_ahead + 1) * avg_ms / slots) / 1000

    def step_time_ms(self, route: str) -> float | None:
        """The route's step-time moving average (ms); None before its first step."""
        raw = self.redis.hget(self.k.step_time, route)
        return None if raw is None else float(raw)

    def observe_step_time(self, pipe: Any, route: str, duration_ms: int) -> None:
        """Queue on ``pipe`` the folding of one step's duration into its route's step time:
        an exponentially weighted moving average (``STEP_TIME_ALPHA``; the first sample is
        taken as it is), updated atomically so concurrent workers' samples all count."""
        args = [route, duration_ms, STEP_TIME_ALPHA]
        scripts.queue(pipe, self._step_time, [self.k.step_time], args)

    def known(self, queued: Sequence[Item]) -> list[bool]:
        """For each item, whether the scheduler holds it: in its tenant's ready queue,
        delayed, or in flight. Read-only; one MULTI (every key shares the ``{sched}`` tag),
        so an item moving between those places is seen in one of them."""
        if not queued:
            return []
        k = self.k
        pipe = self.redis.pipeline(transaction=True)
        for item in queued:
            member = item.encode()
            pipe.zscore(k.ready(item.tenant), member)
            pipe.zscore(k.delayed, member)
            pipe.zscore(k.inflight, member)
        scores = pipe.execute()
        return [any(s is not None for s in scores[i : i + 3]) for i in range(0, len(scores), 3)]

    def snapshot(self) -> dict[str, Any]:
        """Everything an operator wants to see, read in one round trip."""
        k = self.k
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.depth_tenant_priority)
        pipe.hgetall(k.table("rlimit"))
        pipe.zrange(k.inflight, 0, -1, withscores=True)
        pipe.zcard(k.delayed)
        pipe.hgetall(k.workers)
        pipe.get(k.capacity)
        pipe.hgetall(k.parked)
        depth_tp, rlimit, inflight, delayed, workers, capacity, parked = pipe.execute()
        return {
            "depth_tp": _decode_map(depth_tp),
            "route_limits": _decode_map(rlimit),
            "inflight": [(Item.decode(m), int(s)) for m, s in inflight],
            "delayed": int(delayed),
            "workers": _decode_map(workers),
            "capacity": int(capacity or 0),
            "parked": _decode_map(parked),
            "now_ms": now_ms(),
        }


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _decode_map(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def items(raw: Iterable[str]) -> list[Item]:
    return [Item.decode(r) for r in raw]
