"""Redis key strings are data: a key renamed by a refactoring strands what Redis already
holds (ledger balances, leases, queues). These pin them, byte for byte."""

from __future__ import annotations

from runtime.keys import LIMIT_TABLES, Keys


def test_key_strings_are_stable() -> None:
    keys = Keys("agentrt")
    sched = keys.scheduler()
    assert {
        "run budget": keys.budget_run("r1"),
        "tenant day": keys.budget_tenant_day("acme", "2024-05-01"),
        "hold": keys.budget_hold("r1", 3),
        "ledger state": keys.ledger_state(),
        "sched prefix": keys.sched(),
        "sched state": keys.sched_state(),
        "published": keys.published_config(),
        "recovering": keys.recovery_lock(),
        "rate limit": keys.rate_limit("model:m:tokens"),
        "breaker": keys.breaker("tool:t"),
        "breaker failures": keys.breaker_failures("tool:t"),
        "alive": keys.instance_alive("i1"),
        "lock": keys.lock("ticket:7"),
        "lock fence": keys.lock_fence("ticket:7"),
        "run lease": keys.run_lease("r1"),
        "run lease fence": keys.run_lease_fence("r1"),
        "chain cursor": keys.chain_cursor("r1-2"),
        "effect": keys.effect("k"),
        "cancel": keys.run_cancelled("r1"),
        "pause": keys.run_paused("r1"),
        "dlq": keys.dlq_open("agentrt.steps"),
        "broker": keys.broker_prefix(),
        "ready": sched.ready("acme"),
        "inflight": sched.inflight,
        "delayed": sched.delayed,
        "owner": sched.owner,
        "deaths": sched.deaths,
        "depth t": sched.depth_tenant,
        "depth r": sched.depth_route,
        "depth tp": sched.depth_tenant_priority,
        "workers": sched.workers,
        "capacity": sched.capacity,
        "parked": sched.parked,
        "paused": sched.paused,
        "step time": sched.step_time,
        "rlimit": sched.table("rlimit"),
        "pattern": sched.pattern(),
    } == {
        "run budget": "agentrt:{ledger}:run:r1",
        "tenant day": "agentrt:{ledger}:tenant:acme:2024-05-01",
        "hold": "agentrt:{ledger}:hold:r1:3",
        "ledger state": "agentrt:{ledger}:state",
        "sched prefix": "agentrt:{sched}",
        "sched state": "agentrt:{sched}:state",
        "published": "agentrt:{sched}:config",
        "recovering": "agentrt:{sched}:recovering",
        "rate limit": "agentrt:{sched}:rl:model:m:tokens",
        "breaker": "agentrt:{sched}:breaker:tool:t",
        "breaker failures": "agentrt:{sched}:breaker:tool:t:fails",
        "alive": "agentrt:{sched}:alive:i1",
        "lock": "agentrt:{lock:ticket:7}",
        "lock fence": "agentrt:{lock:ticket:7}:fence",
        "run lease": "agentrt:{run:r1}:lease",
        "run lease fence": "agentrt:{run:r1}:lease:fence",
        "chain cursor": "agentrt:chain:r1-2",
        "effect": "agentrt:effect:k",
        "cancel": "agentrt:control:cancel:r1",
        "pause": "agentrt:control:pause:r1",
        "dlq": "agentrt:dlq:agentrt.steps:open",
        "broker": "agentrt:celery:",
        "ready": "agentrt:{sched}:q:acme",
        "inflight": "agentrt:{sched}:inflight",
        "delayed": "agentrt:{sched}:delayed",
        "owner": "agentrt:{sched}:owner",
        "deaths": "agentrt:{sched}:deaths",
        "depth t": "agentrt:{sched}:depth:t",
        "depth r": "agentrt:{sched}:depth:r",
        "depth tp": "agentrt:{sched}:depth:tp",
        "workers": "agentrt:{sched}:workers",
        "capacity": "agentrt:{sched}:capacity",
        "parked": "agentrt:{sched}:parked",
        "paused": "agentrt:{sched}:paused",
        "step time": "agentrt:{sched}:avg_ms",
        "rlimit": "agentrt:{sched}:rlimit",
        "pattern": "agentrt:{sched}:*",
    }


def test_every_scheduler_key_shares_the_sched_hash_tag() -> None:
    # sched.lua touches them all in one call: one Redis Cluster slot
    sched = Keys("ns").scheduler()
    names = [sched.ready("t"), sched.inflight, sched.owner, sched.deaths, sched.step_time]
    names += [sched.table(name) for name in LIMIT_TABLES]
    assert all(name.startswith("ns:{sched}:") for name in names)
