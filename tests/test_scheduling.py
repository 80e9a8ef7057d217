"""Fair scheduling with real workers: limits measured by the tools themselves.

The ``probe.*`` tools (tests/probe_tools.py) count themselves in and out in Redis, so these
tests check what actually executed at once, not the scheduler's own counters.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TEST_CONFIG
from tests.support import Deployment, Gate, redis_now, wait_for, wait_until


def probe(
    key: str, ms: int = 100, tool: str = "probe.work", gate: str | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {"key": key, "ms": ms}
    if gate is not None:
        args["gate"] = gate
    return {"type": "tool_call", "tool": tool, "args": args}


REPLY = {"type": "reply", "text": "ok"}


def probe_max(dep: Deployment, key: str) -> int:
    return int(dep.svc.redis.get(dep.svc.keys.demo(f"probe:{key}:max")) or 0)


def probe_starts(dep: Deployment, key: str) -> list[float]:
    raw = dep.svc.redis.lrange(dep.svc.keys.demo(f"probe:{key}:starts"), 0, -1)
    return sorted(float(x) for x in raw)


def take_windows(dep: Deployment, run_ids: list[str], after: str) -> list[tuple[float, float]]:
    """For each call that passed its rate limiter, the times between which the limiter's
    take happened: the step attempt's ``step_started`` event (before any take) and the
    ``after`` event (``tool_start``, ``proposal``: after it). A slow machine widens the
    windows; it never moves a take out of its own."""
    windows = []
    for run_id in run_ids:
        began: float | None = None
        for event in dep.svc.trace(run_id):
            if event.kind == "step_started":
                began = event.at.timestamp()
            elif event.kind == after and began is not None:
                windows.append((began, event.at.timestamp()))
    return windows


def shortest_spans(windows: list[tuple[float, float]], n: int) -> list[float]:
    """For every ``n`` calls consecutive in the order of their windows' starts, the longest
    their takes may have been apart (last window end - first window start). A limiter that
    spaces takes by at least S apart over ``n`` keeps every value >= S on any machine;
    one that lets ``n`` takes through at once shows a value < S where calls run promptly."""
    ordered = sorted(windows)
    return [max(hi for _, hi in ordered[i : i + n]) - ordered[i][0]
            for i in range(len(ordered) - n + 1)]  # fmt: skip


def inflight(dep: Deployment) -> int:
    """Steps holding a slot: dispatched to Celery and not yet checkpointed."""
    return len(dep.svc.scheduler.snapshot()["inflight"])


@pytest.mark.slow
def test_route_concurrency_limit_holds_across_workers(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    for _ in range(2):
        dep.start_worker(concurrency=3)  # 6 processes for a route limited to 2
    key = f"route{uuid.uuid4().hex[:6]}"
    runs = [dep.submit_script([probe(key, 250), probe(key, 250), REPLY], route="r.limited")
            for _ in range(10)]  # fmt: skip
    done = dep.wait_all([r.run_id for r in runs], timeout=90)
    assert {v.status for v in done.values()} == {"succeeded"}
    # measured inside the tool: never more than the limit, and the limit was used
    assert probe_max(dep, key) == 2
    assert len(probe_starts(dep, key)) == 20


@pytest.mark.slow
def test_tool_bulkhead_and_tenant_cap(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    dep.start_worker(concurrency=4)
    bulk, capped = f"bulk{uuid.uuid4().hex[:6]}", f"cap{uuid.uuid4().hex[:6]}"
    gate = Gate(dep)
    gate.close_after(0)  # every probe below waits inside its limit until the gate opens
    # probe.bulk has max_concurrency 1 across every route and tenant
    runs = [dep.submit_script([probe(bulk, 200, "probe.bulk", gate.key), REPLY], route="r.open",
                              tenant=t) for t in ("t1", "t2", "t3", "t1")]  # fmt: skip
    # tenant "tcap" may run one step at a time, on a route that would allow 50
    runs += [dep.submit_script([probe(capped, 200, gate=gate.key), REPLY], route="r.open",
                               tenant="tcap") for _ in range(4)]  # fmt: skip

    def bulkhead_waits() -> list[Any]:
        return [e for r in runs[:4] for e in dep.svc.trace(r.run_id) if e.kind == "bulkhead_full"]

    # While one bulk call and one capped step are held inside, the other bulk calls are
    # deferred by the bulkhead (without holding a route slot) and the other capped runs
    # are not started at all: neither depends on how fast the calls come
    wait_for(lambda: gate.held() == 2 and bulkhead_waits(), timeout=60,
             message="one call of each held, a bulk call deferred")  # fmt: skip
    statuses = dep.svc.store.statuses([r.run_id for r in runs[4:]])
    assert sorted(statuses.values()) == ["queued", "queued", "queued", "running"], statuses
    gate.open()
    done = dep.wait_all([r.run_id for r in runs], timeout=90)
    assert {v.status for v in done.values()} == {"succeeded"}
    assert probe_max(dep, bulk) == 1
    assert probe_max(dep, capped) == 1
    assert len(probe_starts(dep, bulk)) == len(probe_starts(dep, capped)) == 4


@dataclass
class Queued:
    """A submitted run and the Redis clock read just before and just after its submit: the
    scheduler queued it (and aged it from) a moment in between."""

    run_id: str
    before: float
    after: float


def submit_timed(dep: Deployment, script: list[Any], **kw: Any) -> Queued:
    before = redis_now(dep.svc.redis)
    run = dep.submit_script(script, **kw)
    return Queued(run.run_id, before, redis_now(dep.svc.redis))


@pytest.mark.slow
def test_priority_order_within_a_tenant_and_ageing(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    gate = Gate(dep)  # numbers the runs' first steps in the order they start
    offsets = dep.svc.config.scheduling.priority_offsets_s
    lead = offsets["low"] - offsets["high"]  # 1.5 s in the test config
    # Given low-priority runs queued first and high-priority runs right after, no worker yet
    low = [submit_timed(dep, [gate.step(), REPLY], route="r.open", priority="low")
           for _ in range(4)]  # fmt: skip
    high = [submit_timed(dep, [gate.step(), REPLY], route="r.open", priority="high")
            for _ in range(4)]  # fmt: skip
    # When one single-process worker drains them
    dep.start_worker(concurrency=1)
    done = dep.wait_all([r.run_id for r in low + high], timeout=60)
    assert {v.status for v in done.values()} == {"succeeded"}
    # Then a high run started before every low run queued less than `lead` before it, and
    # (ageing) after every low run queued more than `lead` before it. Which pairs are
    # decided depends on how fast the submits were, never the outcome: on any machine
    # the high runs submitted right after the lows must overtake at least the last one
    order = gate.order()
    started = sorted([*low, *high], key=lambda r: order[r.run_id])
    seen = "".join("L" if r in low else "H" for r in started)
    overtakes = [(h, lo) for h in high for lo in low if h.after < lo.before + lead]
    aged = [(h, lo) for h in high for lo in low if h.before > lo.after + lead]
    assert overtakes, f"no high run was queued within {lead} s of a low one"
    assert all(order[h.run_id] < order[lo.run_id] for h, lo in overtakes), seen
    assert all(order[lo.run_id] < order[h.run_id] for h, lo in aged), seen


@pytest.mark.slow
def test_low_priority_is_not_starved_by_sustained_high_priority(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    gate = Gate(dep)
    offsets = dep.svc.config.scheduling.priority_offsets_s
    lead = offsets["low"] - offsets["high"]  # 1.5 s in the test config
    script = [gate.step(), REPLY]
    # Given a stream of high-priority work queued before and after a low-priority run,
    # the later part more than `lead` after it (a wait on the low run's age, not on speed);
    # no worker yet, so the scheduler decides the whole order
    earlier = [submit_timed(dep, script, route="r.open", priority="high") for _ in range(3)]
    low = submit_timed(dep, script, route="r.open", priority="low")
    wait_until(dep.svc.redis, low.after + lead + 0.2, "the low run to age past the offset")
    later = [submit_timed(dep, script, route="r.open", priority="high") for _ in range(6)]
    # When one single-process worker drains them
    dep.start_worker(concurrency=1)
    runs = [*earlier, low, *later]
    done = dep.wait_all([r.run_id for r in runs], timeout=90)
    assert {v.status for v in done.values()} == {"succeeded"}
    # Then the low run goes after the high runs queued before it and before every one
    # queued more than `lead` after it: with strict priority (no ageing) it would start
    # last, after the whole stream
    order = gate.order()
    started = "".join("L" if r is low else "H" for r in sorted(runs, key=lambda r: order[r.run_id]))
    assert started == "H" * len(earlier) + "L" + "H" * len(later), started


@pytest.mark.slow
def test_small_tenant_is_not_stuck_behind_a_flooding_tenant(fresh_deployment: Deployment) -> None:
    """Counts, not seconds: how many flood steps start between a newcomer's submit and its
    first step. A scheduler that served the overdue flood first would start the whole
    backlog (> 100 steps) in between, whatever the machine's speed."""
    dep = fresh_deployment
    sched = dep.svc.config.scheduling
    gate = Gate(dep)
    script = [gate.step(), REPLY]
    flood_size, drained_first, procs = 150, 20, 2
    # Given tenant t1 with a backlog queued while no worker runs (nothing is dispatched)
    flood = [dep.submit_script(script, tenant="t1", route="r.open") for _ in range(flood_size)]
    flood_ids = {r.run_id for r in flood}
    # that is older than max_wait (5 s in the test config): every queued step of the flood
    # is overdue, and ageing must still not let it go before a newcomer of the same priority
    wait_until(dep.svc.redis, redis_now(dep.svc.redis) + sched.max_wait_s["normal"] + 0.5,
               "every flood step to be past its max wait")  # fmt: skip
    # and that has been draining: the first calls pass, then the gate holds every process
    gate.close_after(drained_first)
    dep.start_worker(concurrency=procs)
    capacity = procs + math.ceil(procs * sched.headroom())  # steps in flight at most
    wait_for(lambda: gate.held() == procs and inflight(dep) == capacity, timeout=60,
             message="the flood to fill every process and the in-flight window")  # fmt: skip
    before = gate.started()
    assert before == drained_first + procs
    # When tenant t2 submits a few runs, and the gate opens
    small = [dep.submit_script(script, tenant="t2", route="r.open") for _ in range(5)]
    gate.open()
    done = dep.wait_all([r.run_id for r in small], timeout=60)
    assert {v.status for v in done.values()} == {"succeeded"}
    # Then flood steps started between their submit and their first steps: at most the
    # dispatched ones not yet started (capacity - procs), then one flood step per newcomer
    # step as equal weights alternate (i + 1 for the i-th), and procs - 1 for the order in
    # which the pool processes reach the tool: capacity + i in all
    order = gate.order()
    flood_numbers = sorted(n for run_id, n in order.items() if run_id in flood_ids)
    firsts = sorted(order[r.run_id] for r in small)
    between = [sum(1 for n in flood_numbers if before < n < first) for first in firsts]
    print(f"flood steps started before each newcomer's first: {between} (capacity {capacity})")
    assert all(b <= capacity + i for i, b in enumerate(between)), (between, capacity)
    # while most of the flood was still queued: it could have gone first
    assert flood_size - sum(1 for n in flood_numbers if n < firsts[-1]) > flood_size // 2
    flooded = dep.wait_all([r.run_id for r in flood], timeout=180)
    assert {v.status for v in flooded.values()} == {"succeeded"}
    assert gate.started() == flood_size + len(small)


@pytest.mark.slow
def test_global_tool_rate_limit_holds_across_worker_processes(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    for _ in range(2):
        dep.start_worker(concurrency=2)
    key = f"rate{uuid.uuid4().hex[:6]}"
    # probe.rated: 5 per second, across every worker
    runs = [dep.submit_script([probe(key, 10, "probe.rated"), REPLY], route="r.open")
            for _ in range(12)]  # fmt: skip
    done = dep.wait_all([r.run_id for r in runs], timeout=90)
    assert {v.status for v in done.values()} == {"succeeded"}
    assert len(probe_starts(dep, key)) == 12
    # any 6 takes span at least one period (5 intervals of 200 ms): measured between the
    # steps' own events around each take, not the tools' start times (a call may start
    # late after its take, so two tool starts may be closer than their takes were)
    windows = take_windows(dep, [r.run_id for r in runs], after="tool_start")
    assert len(windows) == 12
    spans = shortest_spans(windows, 6)
    assert min(spans) >= 0.95, spans
    assert any(e.kind == "rate_limited" for r in runs for e in dep.svc.trace(r.run_id))


@pytest.mark.slow
def test_model_rate_limit_defers_steps_without_holding_slots(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    for _ in range(2):
        dep.start_worker(concurrency=2)
    # model scripted-rated: 10 requests per second; 8 runs x 2 proposals
    runs = [dep.submit_script([REPLY, REPLY], route="r.modelrate") for _ in range(8)]
    done = dep.wait_all([r.run_id for r in runs], timeout=60)
    assert {v.status for v in done.values()} == {"succeeded"}
    # any 6 model calls' takes span at least 5 intervals of 100 ms (10/s), measured around
    # each take (see take_windows), not by the proposals' times alone
    windows = take_windows(dep, [r.run_id for r in runs], after="proposal")
    assert len(windows) == 8
    spans = shortest_spans(windows, 6)
    assert min(spans) >= 0.45, spans


def private_deployment(
    redis_url: str,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Deployment:
    """Like ``fresh_deployment``, with a changed copy of the test config or environment."""
    config = TEST_CONFIG
    if change is not None:
        data = yaml.safe_load(TEST_CONFIG.read_text())
        change(data)
        config = tmp_path / "runtime.yaml"
        config.write_text(yaml.safe_dump(data))
    return Deployment.create(
        name=f"f{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=config,
        home=tmp_path,
        extra_env=extra_env,
    )


@pytest.fixture
def no_redelivery_deployment(redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """``fresh_deployment`` whose broker hands an unacked message back only after an hour:
    within a test, a dead worker's steps can come back only through the runtime."""
    dep = private_deployment(
        redis_url, tmp_path, extra_env={"AGENTRT_VISIBILITY_TIMEOUT_S": "3600"}
    )
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def slow_rate_deployment(redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """``fresh_deployment`` whose ``probe.rated`` allows one call a minute: every call but
    the first waits most of a minute, longer than any test looks."""

    def one_a_minute(data: dict[str, Any]) -> None:
        data["tools"]["probe.rated"]["rate_limit"] = {"limit": 1, "period_s": 60}

    dep = private_deployment(redis_url, tmp_path, change=one_a_minute)
    try:
        yield dep
    finally:
        dep.close()


@pytest.mark.slow
def test_dead_worker_slots_come_back_and_nothing_runs_twice(
    no_redelivery_deployment: Deployment,
) -> None:
    dep = no_redelivery_deployment
    doomed = dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    inc = {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "delay_ms": 1500}}
    # route r.limited allows 2 at once: the doomed worker holds both slots when it dies
    runs = [dep.submit_script([inc, REPLY], route="r.limited") for _ in range(4)]
    run_ids = [r.run_id for r in runs]
    wait_for(
        lambda: (
            len([e for e in dep.svc.store.side_effects(status="started") if e["run_id"] in run_ids])
            == 2
        ),
        timeout=30,
        message="two steps mid-call",
    )
    doomed.kill_all()
    dep.start_worker(concurrency=2)
    done = dep.wait_all(run_ids, timeout=90)
    assert {v.status for v in done.values()} == {"succeeded"}
    succeeded = [e for e in dep.svc.store.side_effects(tool="counter.increment", status="succeeded")
                 if e["run_id"] in run_ids]  # fmt: skip
    assert len(succeeded) == 4 and dep.counter(key) == 4
    # the dead worker's steps came back through its heartbeat (handed back) or their slot
    # leases (expired; with this config's short leases the two race), not the visibility
    # timeout: the broker would hand the dead worker's messages back only after an hour,
    # so without either the two runs it held never finish (wait_all above fails).
    # tests/test_worker_identity.py shows the heartbeat path alone, with long leases.
    logs = "\n".join(w.log() for w in dep.workers[1:])
    assert "handed back: its owner instance is dead" in logs or "expired: queued again" in logs


def test_backpressure_refuses_with_retry_after(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment  # no worker: everything stays queued
    # tenant tq: max_queued 3, refuse when over
    accepted = [dep.submit_script([REPLY], tenant="tq") for _ in range(3)]
    assert all(r.status == "queued" for r in accepted)
    refused = dep.submit_script([REPLY], tenant="tq")
    assert refused.status == "refused" and refused.stop_reason == "refused:queue_full"
    assert refused.retry_after_s is not None and refused.retry_after_s >= 1
    assert refused.output and "max_queued 3" in refused.output["detail"]
    # route r.queued: max_queued 2 but on_queue_full: queue -> admitted with an estimate
    queued = [dep.submit_script([REPLY], tenant="t2", route="r.queued") for _ in range(4)]
    assert all(r.status == "queued" for r in queued)
    assert queued[-1].estimated_wait_s is not None and queued[-1].estimated_wait_s > 0


@pytest.mark.slow
def test_waiting_steps_hold_no_slot(slow_rate_deployment: Deployment) -> None:
    dep = slow_rate_deployment
    dep.start_worker(concurrency=2)
    key = f"w{uuid.uuid4().hex[:6]}"
    # Given route r.limited (2 slots) and three runs calling probe.rated (one call a
    # minute): one call gets through, the other two steps must wait most of a minute
    waiting = [dep.submit_script([probe(key, 10, "probe.rated"), REPLY], route="r.limited")
               for _ in range(3)]  # fmt: skip
    # When another run of the same route comes while they wait
    other = dep.submit_script([REPLY], route="r.limited")
    ids = [r.run_id for r in waiting]

    def two_waiting_none_in_flight() -> bool:
        snap = dep.svc.scheduler.snapshot()
        done = dep.svc.store.statuses([other.run_id, *ids])
        return (
            done[other.run_id] == "succeeded"
            and [done[i] for i in ids].count("succeeded") == 1
            and snap["delayed"] == 2
            and snap["inflight"] == []
        )

    # Then it finishes while two steps wait, and the waiting steps hold no slot: if they
    # kept their slots, both of the route's slots would be taken until the wait ended
    wait_for(two_waiting_none_in_flight, timeout=45,
             message="the other run to finish while two steps wait without a slot")  # fmt: skip
    stalled = [i for i in ids if dep.svc.store.statuses([i])[i] != "succeeded"]
    assert all(any(e.kind == "rate_limited" for e in dep.svc.trace(run_id)) for run_id in stalled)
    assert probe_max(dep, key) == 1 and len(probe_starts(dep, key)) == 1
    # and no slot had to come back through lease expiry (which frees even a held slot)
    assert "expired: queued again" not in dep.workers[0].log()
    for run_id in stalled:  # rather than wait a minute for them
        dep.svc.cancel(run_id, actor="tester")


def test_token_rate_limit_takes_worst_case_and_gives_back_the_rest(redis_url: str) -> None:
    import redis as redis_lib

    from runtime.config import RateLimit
    from runtime.keys import Keys
    from runtime.scheduling.limits import Limiter, Take

    limiter = Limiter(redis_lib.Redis.from_url(redis_url), Keys(f"tok{uuid.uuid4().hex[:6]}"))
    tokens = RateLimit(limit=6000, period_s=60, burst=4000)  # 100 tokens a second
    # a step takes its worst case (4000 tokens): the burst allows it at once
    assert limiter.take([Take("model:m:tokens", tokens, 4000)]) == 0
    # the next worst case must wait: the schedule runs 40 s ahead
    assert limiter.take([Take("model:m:tokens", tokens, 4000)]) > 30
    # the first call used only 400 tokens: with 3600 given back, the next worst case waits
    # only for the 400 tokens really spent to flow back (4 s at 100 a second), not 40 s
    limiter.give_back("model:m:tokens", tokens, 3600)
    assert 3 < limiter.take([Take("model:m:tokens", tokens, 4000)]) <= 4.01
    # all or nothing across limiters: a refused request takes from none of them
    requests = RateLimit(limit=1, period_s=60)
    assert limiter.take([Take("model:m:requests", requests)]) == 0
    before = limiter.state("model:m:tokens")
    assert (
        limiter.take([Take("model:m:tokens", tokens, 10), Take("model:m:requests", requests)]) > 0
    )
    assert limiter.state("model:m:tokens") == before


def test_observe_step_time_keeps_a_moving_average_per_route(redis_url: str) -> None:
    import redis as redis_lib

    from runtime import scripts
    from runtime.config import load_config
    from runtime.keys import Keys
    from runtime.scheduling.scheduler import STEP_TIME_ALPHA, Scheduler

    client = redis_lib.Redis.from_url(redis_url)
    scheduler = Scheduler(client, Keys(f"avg{uuid.uuid4().hex[:6]}"), load_config(TEST_CONFIG))

    def observe(route: str, duration_ms: int) -> None:
        scripts.run_pipeline(
            client, lambda pipe: scheduler.observe_step_time(pipe, route, duration_ms)
        )

    # Given no step of r.limited measured yet, the wait estimate assumes 1 s a step
    assert scheduler.step_time_ms("r.limited") is None
    assert scheduler.estimated_wait_s("r.limited", queued_ahead=3) == 2.0  # 4 steps, 2 slots
    # When steps of 100, 200 and 400 ms finish
    observe("r.limited", 100)
    assert scheduler.step_time_ms("r.limited") == 100  # the first sample is taken as it is
    observe("r.limited", 200)
    observe("r.limited", 400)
    # Then the route's step time is their exponentially weighted moving average
    expected = 100.0
    for sample in (200, 400):
        expected += STEP_TIME_ALPHA * (sample - expected)
    assert STEP_TIME_ALPHA == 0.2 and expected == pytest.approx(176.0)
    assert scheduler.step_time_ms("r.limited") == pytest.approx(expected, abs=0.001)
    # and the wait estimate uses it: 4 steps ahead of a new one on 2 slots, 176 ms each
    assert scheduler.estimated_wait_s("r.limited", queued_ahead=3) == math.ceil(4 * 176 / 2) / 1000
    # while another route keeps its own average
    observe("r.open", 50)
    assert scheduler.step_time_ms("r.open") == 50
    assert scheduler.step_time_ms("r.limited") == pytest.approx(expected, abs=0.001)
