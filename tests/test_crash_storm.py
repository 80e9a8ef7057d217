"""A crash storm: 300 runs while worker processes are SIGKILLed every couple of seconds.

For 30 s something is killed every ~2 s, alternating between a worker's pool processes
(Celery re-sends their steps at once, ``task_retry_on_worker_lost``) and a whole worker
(main process and pool: its unacked messages come back only after the visibility timeout,
so the scheduler's slot-lease expiry and the reconciler have to bring its steps back),
which a fresh worker replaces. Afterwards nothing may be lost or done twice: every run is
terminal, every ``counter.increment`` happened once (the counter equals the journal of
applied increments, which the side-effect records account for), and the budget ledger in
Redis equals the SQL spend records and holds nothing open. All of that still holds once
the killed workers' unacked messages came back and ran as late duplicates.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtime.budgets.ledger import today
from runtime.config import DIMENSIONS, load_config
from runtime.contract import TERMINAL_STATUSES, RunView
from runtime.store.dead_letters import DeadLetterFilter
from tasks.app import min_visibility_timeout
from tests.support import ROOT, Deployment, WorkerProcess, wait_for
from tests.test_crash import increment

CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
RUNS = 300
TENANTS = ("t1", "t2", "t3")
STORM_S = 30.0
KILL_EVERY_S = 2.0
#: runs submitted before the storm, then with every kill
FIRST_WAVE = 60
WAVE = 20
#: the runs' statuses we accept, with the reason each may have
ALLOWED_REASONS = {
    "completed",
    # the same step's pool process was killed more than AGENTRT_WORKER_LOST_RETRIES times
    "dead_lettered:worker_lost",
}
#: a step is dead-lettered as worker_lost on its (AGENTRT_WORKER_LOST_RETRIES + 1)th death
WORKER_LOST_RETRIES = 3
USAGE = {"input_tokens": 100, "output_tokens": 20}
TERMINAL = {s.value for s in TERMINAL_STATUSES}


def _script(key: str, rng: random.Random) -> list[dict[str, Any]]:
    # killed before the INCR (delay_ms), or after it but before the runtime recorded it
    # (after_ms): both must end with the counter incremented exactly once
    return [
        {**increment(key, delay_ms=rng.randint(100, 300)), "usage": USAGE},
        {**increment(key, after_ms=100), "usage": USAGE},
        {"type": "reply", "text": "ok", "usage": USAGE},
    ]


def _alive(dep: Deployment) -> list[WorkerProcess]:
    return [w for w in dep.workers if w.proc.poll() is None]


def _storm(
    dep: Deployment, rng: random.Random, seconds: float, tick: Callable[[], None]
) -> tuple[list[str], int]:
    """SIGKILL something every ~KILL_EVERY_S for ``seconds``, calling ``tick()`` before
    each kill; returns what was done and how many pool processes (which run the steps)
    were killed.

    Kills alternate between a worker's pool processes and a whole worker. A whole worker
    is replaced by a fresh one, started in the background (a start takes seconds) so the
    kills keep their pace; only workers that finished starting are killed, and a whole
    worker only while another one is up, so there are always workers (at most three)."""
    events: list[str] = []
    pool_killed = 0
    ready = list(_alive(dep))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as starter:
        starting: Future[WorkerProcess] | None = None
        n = 0
        while True:
            time.sleep(KILL_EVERY_S * rng.uniform(0.75, 1.25))
            at = time.monotonic() - start
            if at > seconds:
                break
            tick()
            if starting is not None and starting.done():
                ready.append(starting.result())
                events.append(f"{at:5.1f}s {ready[-1].name} ready")
                starting = None
            ready = [w for w in ready if w.proc.poll() is None]
            victim = rng.choice(ready)
            if n % 2 == 0 or starting is not None or len(ready) < 2:
                pids = victim.kill_children()
                pool_killed += len(pids)
                events.append(f"{at:5.1f}s SIGKILL pool of {victim.name}: {pids}")
            else:
                pool_killed += len(victim.children())
                victim.kill_all()
                ready.remove(victim)
                starting = starter.submit(dep.start_worker, 2)
                events.append(f"{at:5.1f}s SIGKILL all of {victim.name}; starting another")
            n += 1
        if starting is not None:
            starting.result()
    return events, pool_killed


def _logs_tail(dep: Deployment, chars: int = 1500) -> str:
    return "\n".join(f"--- {w.name} ---\n{w.log()[-chars:]}" for w in dep.workers)


def _recovery(dep: Deployment, run_ids: list[str]) -> dict[str, int]:
    """How the runtime recovered: trace events and worker log lines, counted."""
    kinds = ("tool_retry_unknown", "tool_replayed", "reconciled", "dead_lettered")
    seen: Counter[str] = Counter()
    for run_id in run_ids:
        for e in dep.svc.trace(run_id):
            if e.kind in kinds:
                seen[e.kind] += 1
    logs = "".join(w.log() for w in dep.workers)
    seen["log:slot_lease_expired"] = logs.count("slot lease of")
    seen["log:worker_lost"] = logs.count("WorkerLostError")
    seen["log:duplicate_dropped"] = logs.count("run lease held by")
    return dict(seen)


def _open_holds(dep: Deployment) -> list[tuple[str, dict[str, str]]]:
    svc = dep.svc
    holds = []
    for raw in svc.redis.zrange(svc.keys.budget_holds_index(), 0, -1):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in svc.redis.hgetall(key).items()
        }
        holds.append((key, fields))
    return holds


def _ledger_vs_sql(dep: Deployment) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Per tenant and dimension, where the ledger's tenant-day scope and SQL differ:
    (ledger used, SQL spend, ledger reserved)."""
    day = today()
    diff: dict[str, dict[str, tuple[int, int, int]]] = {}
    for tenant in TENANTS:
        balance = dep.svc.ledger.balance(dep.svc.keys.budget_tenant_day(tenant, day))
        spend = dep.svc.store.spend(tenant_id=tenant, day=day)
        bad = {
            dim: (balance[dim]["used"], spend[dim], balance[dim]["reserved"])
            for dim in DIMENSIONS
            if balance[dim]["used"] != spend[dim] or balance[dim]["reserved"] != 0
        }
        if bad:
            diff[tenant] = bad
    return diff


@pytest.fixture
def storm_deployment(redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """``fresh_deployment`` with the shortest visibility timeout the runtime accepts, so
    that the killed workers' unacked messages come back (as late duplicates) in the test."""
    visibility = math.floor(min_visibility_timeout(load_config(CONFIG))) + 1
    dep = Deployment.create(
        name=f"f{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=CONFIG,
        home=tmp_path,
        extra_env={"AGENTRT_VISIBILITY_TIMEOUT_S": str(visibility)},
    )
    try:
        yield dep
    finally:
        dep.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 30 s storm, then a drain: on a loaded machine, many minutes
def test_crash_storm_loses_no_run_repeats_no_effect_and_keeps_the_ledger(
    storm_deployment: Deployment,
) -> None:
    dep = storm_deployment
    svc = dep.svc
    seed = random.randrange(2**32)
    print(f"\nseed {seed}")  # the storm's choices and the scripts' delays
    rng = random.Random(seed)
    began = time.monotonic()
    for _ in range(2):
        dep.start_worker(concurrency=2)
    key = f"storm{uuid.uuid4().hex[:8]}"

    # Given 300 runs over three tenants, each incrementing one counter twice, arriving
    # in waves (so that kills hit first, middle and last steps alike)
    runs: list[RunView] = []

    def submit(n: int) -> None:
        for _ in range(min(n, RUNS - len(runs))):
            tenant = TENANTS[len(runs) % len(TENANTS)]
            runs.append(dep.submit_script(_script(key, rng), tenant=tenant))

    submit(FIRST_WAVE)

    # When for 30 s a pool or a whole worker is SIGKILLed every ~2 s
    storm_started = time.monotonic()
    storm, pool_killed = _storm(dep, rng, STORM_S, lambda: submit(WAVE))
    submit(RUNS)
    run_ids = [r.run_id for r in runs]
    assert len(set(run_ids)) == RUNS
    assert {r.status.value for r in runs} == {"queued"}
    storm_s = time.monotonic() - storm_started
    during = Counter(svc.store.statuses(run_ids).values())
    print(f"storm ({storm_s:.1f}s, {len(storm)} kills, {pool_killed} pool processes):\n  "
          + "\n  ".join(storm))  # fmt: skip
    print(f"statuses when the storm ended: {dict(during)}")

    # Then every run ends, none is lost, no increment is repeated, the ledger equals SQL
    dep.wait_all(run_ids, timeout=600)
    print(f"drained {time.monotonic() - storm_started - storm_s:.1f}s after the storm")
    print(f"recovery: {_recovery(dep, run_ids)}")
    first = _check_outcome(dep, run_ids, key, pool_killed)

    # ...and stays so once the killed workers' unacked messages came back (kombu restores
    # them after the visibility timeout) and ran as late duplicates
    _wait_broker_drained(dep)
    assert _check_outcome(dep, run_ids, key, pool_killed) == first
    print(f"total {time.monotonic() - began:.1f}s")


def _wait_broker_drained(dep: Deployment) -> None:
    """Until no step message is queued or unacked (tests share one Redis for everything)."""
    r, prefix = dep.svc.redis, dep.svc.keys.broker_prefix()

    def empty() -> bool:
        pipe = r.pipeline(transaction=True)
        pipe.hlen(f"{prefix}unacked")
        pipe.llen(f"{prefix}agentrt.steps")
        return not any(pipe.execute())

    started = time.monotonic()

    def drained() -> bool:
        # twice, a second apart: a message between the queue and the unacked hash is in
        # neither for a moment
        if not empty():
            return False
        time.sleep(1)
        return empty()

    try:
        wait_for(
            drained,
            timeout=dep.settings.visibility_timeout_s + 45,
            interval=0.5,
            message="the broker to drain",
        )
    except AssertionError as timed_out:
        # what kept it: messages' ages in the unacked index, kombu's restore mutex
        now = time.time()
        index = r.zrange(f"{prefix}unacked_index", 0, -1, withscores=True)
        ages = [round(now - at) for _, at in index]
        state = {
            "queued": r.llen(f"{prefix}agentrt.steps"),
            "unacked_ages_s": ages,
            "restore_mutex_ttl_ms": r.pttl(f"{prefix}unacked_mutex"),
        }
        raise AssertionError(f"{timed_out}: {state}") from None
    print(f"broker drained after {time.monotonic() - started:.1f}s more")


def _check_outcome(
    dep: Deployment, run_ids: list[str], key: str, pool_killed: int
) -> dict[str, Any]:
    """Assert the storm's invariants; returns what they saw, to compare later."""
    svc = dep.svc
    statuses = svc.store.statuses(run_ids)
    assert len(statuses) == RUNS, f"lost runs: {sorted(set(run_ids) - set(statuses))}"
    views = {run_id: svc.get(run_id) for run_id in run_ids}
    summary = Counter((v.status.value, v.stop_reason) for v in views.values())
    print(f"outcomes: {dict(summary)}")
    not_terminal = {r: s for r, s in statuses.items() if s not in TERMINAL}
    assert not not_terminal, (not_terminal, _logs_tail(dep))

    # almost all succeed; the rest stopped for a reason a storm explains, no more often than
    # the kills allow: each dead-lettered step died WORKER_LOST_RETRIES + 1 times, each time
    # with a killed pool process (a count of kills, not of how fast the steps ran)
    reasons = {v.stop_reason for v in views.values()}
    assert reasons <= ALLOWED_REASONS, (dict(summary), _logs_tail(dep))
    succeeded = [r for r, v in views.items() if v.status.value == "succeeded"]
    most_lost = pool_killed // (WORKER_LOST_RETRIES + 1)
    assert len(succeeded) >= RUNS - most_lost, (dict(summary), pool_killed)
    # a dead-lettered run waits in the dead-letter queue for an operator
    dead = {r for r, v in views.items() if v.stop_reason == "dead_lettered:worker_lost"}
    entries = svc.dead_letters.find(DeadLetterFilter(dl_class="worker_lost"), limit=None)
    assert dead <= {e["run_id"] for e in entries}, (dead, entries)

    # every increment happened exactly once
    ours = set(run_ids)
    effects = [e for e in svc.store.side_effects(tool="counter.increment") if e["run_id"] in ours]
    keys = [e["idempotency_key"] for e in effects]
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
    done = [e for e in effects if e["status"] == "succeeded"]
    per_run = Counter(e["run_id"] for e in done)
    assert all(per_run[r] == 2 for r in succeeded), [r for r in succeeded if per_run[r] != 2]
    # the tool's journal (written in the INCR's transaction) says which calls were applied
    pipe = svc.tool_redis.pipeline(transaction=False)
    for e in effects:
        pipe.exists(svc.keys.effect(e["idempotency_key"]))
    applied = [e for e, hit in zip(effects, pipe.execute(), strict=True) if hit]
    assert {e["idempotency_key"] for e in done} <= {e["idempotency_key"] for e in applied}
    # applied but not recorded as succeeded: only a dead-lettered run's call, killed after
    # its INCR (a retry from the dead-letter queue replays it from the journal)
    unrecorded = [e for e in applied if e["status"] != "succeeded"]
    assert {e["run_id"] for e in unrecorded} <= dead, unrecorded
    counter = dep.counter(key)
    assert counter == len(applied) == len(done) + len(unrecorded), (
        counter,
        len(applied),
        len(done),
        unrecorded,
    )
    print(
        f"counter {counter}: {len(done)} succeeded records, {len(unrecorded)} applied by "
        f"dead-lettered runs; {len(effects)} effect records"
    )

    # the ledger equals the SQL spend records, with nothing left reserved
    try:
        wait_for(lambda: not _ledger_vs_sql(dep), timeout=60, message="ledger == SQL spend")
    except AssertionError:
        raise AssertionError(
            f"ledger (used, sql, reserved) differs: {_ledger_vs_sql(dep)}; "
            f"open holds: {_open_holds(dep)}\n{_logs_tail(dep)}"
        ) from None
    spend = {t: svc.store.spend(tenant_id=t, day=today()) for t in TENANTS}
    print(f"spend: {spend}")
    # each applied increment was charged once (a re-run after a kill charges its call once)
    assert sum(s["tool_calls"] for s in spend.values()) == len(done)
    # the storm did hit steps: some were re-run, and the re-runs were charged as retries
    assert sum(s["retries"] for s in spend.values()) >= 1
    return {"outcomes": summary, "counter": counter, "effects": effects, "spend": spend}
