"""The budget ledger against a real Redis: reserve, settle, release, and no overspend under
concurrency from many threads and several processes."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from runtime.budgets.ledger import BudgetLedger, Scope
from runtime.config import DIMENSIONS
from runtime.errors import BudgetExhausted, StateUnknown
from runtime.keys import Keys
from runtime.state import StateMarkers


def unlimited(**limits: int) -> dict[str, int]:
    return {d: limits.get(d, -1) for d in DIMENSIONS}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def known_ledger(client: redis.Redis, keys: Keys) -> BudgetLedger:
    """A ledger whose state was built (as recovery or the first start does: runtime.state)."""
    StateMarkers(client, keys).mark(1)
    return BudgetLedger(client, keys, lambda: 1)


@pytest.fixture
def ledger(client: redis.Redis) -> BudgetLedger:
    return known_ledger(client, Keys(f"tl{uuid.uuid4().hex[:10]}"))


def used(ledger: BudgetLedger, scope: Scope, dim: str = "tokens") -> int:
    return ledger.balance(scope.key)[dim]["used"]


def reserved(ledger: BudgetLedger, scope: Scope, dim: str = "tokens") -> int:
    return ledger.balance(scope.key)[dim]["reserved"]


def test_reserve_settle_release(ledger: BudgetLedger) -> None:
    # Given a run scope and a tenant scope
    run = ledger.run_scope("run-a", unlimited(tokens=1000))
    tenant = ledger.tenant_day_scope("acme", unlimited(tokens=5000), day="2026-01-01")
    assert tenant.name == "tenant:acme:2026-01-01"

    # When step 0 reserves its worst case
    res = ledger.reserve("run-a", 0, [run, tenant], {"tokens": 400, "model_calls": 1}, 60_000)

    # Then both scopes hold it as reserved, nothing used yet
    assert res.state == "new" and res.amounts == {"tokens": 400, "model_calls": 1}
    for scope in (run, tenant):
        assert ledger.balance(scope.key)["tokens"] == {"used": 0, "reserved": 400}
        assert ledger.balance(scope.key)["model_calls"] == {"used": 0, "reserved": 1}

    # When it settles to what it actually spent
    assert ledger.settle("run-a", 0, {"tokens": 250, "model_calls": 1}) is True

    # Then the reservation becomes spend in every scope
    for scope in (run, tenant):
        assert ledger.balance(scope.key)["tokens"] == {"used": 250, "reserved": 0}
        assert ledger.balance(scope.key)["model_calls"] == {"used": 1, "reserved": 0}
    assert ledger.redis.zcard(ledger.keys.budget_holds_index()) == 0

    # and a released step spends nothing
    ledger.reserve("run-a", 1, [run, tenant], {"tokens": 400}, 60_000)
    assert reserved(ledger, run) == 400
    assert ledger.release("run-a", 1) is True
    assert ledger.balance(run.key)["tokens"] == {"used": 250, "reserved": 0}
    assert ledger.release("run-a", 1) is False


def test_settle_may_exceed_the_reservation_but_later_reserves_see_it(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-b", unlimited(tokens=1000))
    ledger.reserve("run-b", 0, [run], {"tokens": 100}, 60_000)
    ledger.settle("run-b", 0, {"tokens": 900})  # the model used more than reserved
    assert used(ledger, run) == 900
    with pytest.raises(BudgetExhausted):
        ledger.reserve("run-b", 1, [run], {"tokens": 101}, 60_000)
    assert ledger.reserve("run-b", 2, [run], {"tokens": 100}, 60_000).state == "new"


def test_limit_is_inclusive_and_reservations_count(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-c", unlimited(tokens=1000))
    ledger.reserve("run-c", 0, [run], {"tokens": 600}, 60_000)
    # an open reservation counts: 600 + 401 > 1000
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve("run-c", 1, [run], {"tokens": 401}, 60_000)
    assert info.value.scope == "run:run-c" and info.value.dimension == "tokens"
    # exactly up to the limit is fine
    ledger.reserve("run-c", 1, [run], {"tokens": 400}, 60_000)
    assert reserved(ledger, run) == 1000


def test_all_or_nothing_across_scopes(ledger: BudgetLedger) -> None:
    # Given three scopes where only the last (route) is short of tool calls
    run = ledger.run_scope("run-d", unlimited(tokens=10_000, tool_calls=5))
    tenant = ledger.tenant_day_scope("acme", unlimited(tokens=10_000), day="2026-01-01")
    route = ledger.route_day_scope("support", unlimited(tool_calls=0), day="2026-01-01")

    # When a step asks for a tool call
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve("run-d", 0, [run, tenant, route], {"tokens": 500, "tool_calls": 1}, 60_000)

    # Then the error names the failing scope and dimension...
    assert info.value.scope == "route:support:2026-01-01" and info.value.dimension == "tool_calls"
    assert "tool_calls" in str(info.value)
    # ...and no scope holds anything, no hold was written
    for scope in (run, tenant, route):
        assert ledger.balance(scope.key) == {d: {"used": 0, "reserved": 0} for d in DIMENSIONS}
    assert not ledger.redis.exists(ledger.keys.budget_hold("run-d", 0))
    assert ledger.redis.zcard(ledger.keys.budget_holds_index()) == 0
    assert ledger.settle("run-d", 0, {"tokens": 1}) is False


def test_first_failing_scope_is_named(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-e", unlimited(tokens=10))
    tenant = ledger.tenant_day_scope("acme", unlimited(tokens=10), day="2026-01-01")
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve("run-e", 0, [tenant, run], {"tokens": 11}, 60_000)
    assert info.value.scope == "tenant:acme:2026-01-01"


def test_reserve_is_idempotent_per_run_and_step(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-f", unlimited(tokens=1000))
    assert ledger.reserve("run-f", 0, [run], {"tokens": 700}, 60_000).state == "new"
    # a redelivered step finds its own hold: nothing more is reserved, even past the limit
    again = ledger.reserve("run-f", 0, [run], {"tokens": 700}, 60_000)
    assert again.state == "existing"
    assert reserved(ledger, run) == 700
    # a different step is a different hold
    with pytest.raises(BudgetExhausted):
        ledger.reserve("run-f", 1, [run], {"tokens": 700}, 60_000)


def test_settle_is_idempotent(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-g", unlimited())
    ledger.reserve("run-g", 0, [run], {"tokens": 100, "tool_calls": 1}, 60_000)
    assert ledger.settle("run-g", 0, {"tokens": 80, "tool_calls": 1}) is True
    assert ledger.settle("run-g", 0, {"tokens": 80, "tool_calls": 1}) is False
    assert ledger.release("run-g", 0) is False
    assert ledger.balance(run.key)["tokens"] == {"used": 80, "reserved": 0}
    assert ledger.balance(run.key)["tool_calls"] == {"used": 1, "reserved": 0}
    # settling a step that never reserved does nothing
    assert ledger.settle("run-g", 7, {"tokens": 5}) is False
    assert used(ledger, run) == 80


def test_settle_in_a_pipeline(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-h", unlimited())
    ledger.reserve("run-h", 0, [run], {"tokens": 100}, 60_000)
    with ledger.redis.pipeline(transaction=False) as pipe:
        ledger.settle_in(pipe, "run-h", 0, {"tokens": 42})
        pipe.set(ledger.keys.namespace + ":other", 1)
        assert pipe.execute()[0] == 1
    assert ledger.balance(run.key)["tokens"] == {"used": 42, "reserved": 0}


def test_unlimited_dimensions(ledger: BudgetLedger) -> None:
    # -1 (and a dimension missing from the limits) is unlimited
    run = ledger.run_scope("run-i", {"tokens": -1})
    huge = {"tokens": 10**12, "tool_calls": 10**9, "cost_micro_usd": 10**12}
    ledger.reserve("run-i", 0, [run], huge, 60_000)
    ledger.settle("run-i", 0, huge)
    ledger.reserve("run-i", 1, [run], huge, 60_000)
    assert ledger.balance(run.key)["tokens"] == {"used": 10**12, "reserved": 10**12}


def test_zero_amounts_pass_a_zero_limit(ledger: BudgetLedger) -> None:
    # a step that needs no tool call is not stopped by an exhausted tool-call budget
    run = ledger.run_scope("run-j", unlimited(tool_calls=0))
    ledger.reserve("run-j", 0, [run], {"tokens": 10, "tool_calls": 0}, 60_000)
    with pytest.raises(BudgetExhausted):
        ledger.reserve("run-j", 1, [run], {"tokens": 10, "tool_calls": 1}, 60_000)


def test_balance_of_an_unknown_scope_is_zero(ledger: BudgetLedger) -> None:
    balance = ledger.balance(ledger.keys.budget_run("never"))
    assert set(balance) == set(DIMENSIONS)
    assert all(v == {"used": 0, "reserved": 0} for v in balance.values())


def test_scopes_expire(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-k", unlimited())
    tenant = ledger.tenant_day_scope("acme", unlimited())
    ledger.reserve("run-k", 0, [run, tenant], {"tokens": 1}, 60_000)
    assert 29 * 86400 < ledger.redis.ttl(run.key) <= 30 * 86400
    assert 2 * 86400 < ledger.redis.ttl(tenant.key) <= 3 * 86400


def test_release_expired_frees_only_dead_holds(ledger: BudgetLedger) -> None:
    from tests.support import wait_for

    # Given one hold about to expire and one that has a minute left
    run = ledger.run_scope("run-l", unlimited(tokens=1000))
    ledger.reserve("run-l", 0, [run], {"tokens": 300}, hold_ttl_ms=50)
    ledger.reserve("run-l", 1, [run], {"tokens": 200}, hold_ttl_ms=60_000)
    assert reserved(ledger, run) == 500

    # When the reaper runs after the first one's ttl
    released = wait_for(ledger.release_expired, timeout=60, message="the short hold to expire")

    # Then only the expired hold was released, and nothing was spent
    assert released == 1
    assert ledger.balance(run.key)["tokens"] == {"used": 0, "reserved": 200}
    assert ledger.settle("run-l", 0, {"tokens": 300}) is False  # its step died
    assert ledger.release_expired() == 0
    # with an explicit clock far ahead, the other one goes too
    sec, usec = ledger.redis.time()
    assert ledger.release_expired(now_ms=int(sec) * 1000 + int(usec) // 1000 + 120_000) == 1
    assert ledger.balance(run.key)["tokens"] == {"used": 0, "reserved": 0}


def test_a_rerun_that_finds_its_hold_gets_a_full_ttl(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("run-m", unlimited(tokens=1000))
    ledger.reserve("run-m", 0, [run], {"tokens": 100}, hold_ttl_ms=50)
    # the step's worker died; a re-run reserves again and finds the hold
    again = ledger.reserve("run-m", 0, [run], {"tokens": 100}, hold_ttl_ms=60_000)
    assert again.state == "existing"
    # a second later the first ttl is long past; the refreshed one is not
    sec, usec = ledger.redis.time()
    assert ledger.release_expired(now_ms=int(sec) * 1000 + int(usec) // 1000 + 1000) == 0
    assert ledger.settle("run-m", 0, {"tokens": 40}) is True
    assert ledger.balance(run.key)["tokens"] == {"used": 40, "reserved": 0}


def test_the_reaper_settles_to_what_sql_recorded(ledger: BudgetLedger) -> None:
    from tests.support import wait_for

    # a step checkpointed its spend in SQL, then died before settling
    run = ledger.run_scope("run-n", unlimited(tokens=1000))
    ledger.reserve("run-n", 3, [run], {"tokens": 500}, hold_ttl_ms=50)
    recorded = {("run-n", 3): {"tokens": 120}}
    wait_for(
        lambda: ledger.release_expired(spent=lambda r, s: recorded.get((r, s), {})),
        timeout=60,
        message="the hold to expire",
    )
    assert ledger.balance(run.key)["tokens"] == {"used": 120, "reserved": 0}


def test_an_unknown_state_reserves_nothing(client: redis.Redis) -> None:
    # Given a ledger Redis that lost its data: no state marker, every scope empty
    keys = Keys(f"tlu{uuid.uuid4().hex[:8]}")
    lost = BudgetLedger(client, keys, lambda: 3)
    run = lost.run_scope("r", unlimited(tokens=10))
    # When a step reserves, Then nothing is reserved: the empty ledger is unknown, not free
    with pytest.raises(StateUnknown):
        lost.reserve("r", 0, [run], {"tokens": 5}, 60_000)
    assert lost.balance(run.key)["tokens"] == {"used": 0, "reserved": 0}
    assert not client.exists(keys.budget_hold("r", 0))
    # Given a Redis restored from an old snapshot: a marker older than SQL's generation
    StateMarkers(client, keys).mark(2)
    with pytest.raises(StateUnknown):
        lost.reserve("r", 0, [run], {"tokens": 5}, 60_000)
    # Once recovery built generation 3, reservations go through again
    StateMarkers(client, keys).mark(3)
    assert lost.reserve("r", 0, [run], {"tokens": 5}, 60_000).state == "new"


def test_namespaces_are_isolated(client: redis.Redis) -> None:
    a = known_ledger(client, Keys(f"tla{uuid.uuid4().hex[:8]}"))
    b = known_ledger(client, Keys(f"tlb{uuid.uuid4().hex[:8]}"))
    a.reserve("r", 0, [a.run_scope("r", unlimited(tokens=10))], {"tokens": 10}, 60_000)
    b.reserve("r", 0, [b.run_scope("r", unlimited(tokens=10))], {"tokens": 10}, 60_000)
    assert a.release_expired(now_ms=2**62) == 1 and b.release_expired(now_ms=2**62) == 1


# --- concurrency: threads and processes against one tenant scope --------------------------

LIMIT = 5_000
ATTEMPTS = 25


def amount_for(worker: str, i: int) -> int:
    return 10 + zlib.crc32(f"{worker}:{i}".encode()) % 90  # same in every process


def _reserve_many(
    redis_url: str, namespace: str, worker: str, go: Any
) -> list[tuple[str, int, int]]:
    """Reserve ATTEMPTS steps against the shared tenant scope; return the granted ones."""
    client = redis.Redis.from_url(redis_url)
    ledger = known_ledger(client, Keys(namespace))
    tenant = ledger.tenant_day_scope("shared", unlimited(tokens=LIMIT), day="2026-01-01")
    run_id = f"run-{worker}"
    run = ledger.run_scope(run_id, unlimited())
    go.wait(30)
    granted = []
    for i in range(ATTEMPTS):
        amount = amount_for(worker, i)
        try:
            ledger.reserve(run_id, i, [run, tenant], {"tokens": amount, "model_calls": 1}, 60_000)
        except BudgetExhausted:
            continue
        granted.append((run_id, i, amount))
    client.close()
    return granted


def _process_main(
    redis_url: str, namespace: str, name: str, threads: int, go: Any, out: Any
) -> None:
    results: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        got = _reserve_many(redis_url, namespace, worker, go)
        with lock:
            results.extend(got)

    pool = [threading.Thread(target=work, args=(f"{name}-t{t}",)) for t in range(threads)]
    for t in pool:
        t.start()
    out.put(("ready", name))
    for t in pool:
        t.join()
    out.put(("done", results))


def test_concurrent_threads_and_processes_never_overspend(
    redis_url: str, client: redis.Redis
) -> None:
    # Given 4 processes x 4 threads and 8 threads here, asking for ~4x the tenant's tokens
    namespace = f"tlc{uuid.uuid4().hex[:8]}"
    ledger = known_ledger(client, Keys(namespace))
    tenant = ledger.tenant_day_scope("shared", unlimited(tokens=LIMIT), day="2026-01-01")
    mp = multiprocessing.get_context("spawn")
    go = mp.Event()
    out: Any = mp.Queue()
    procs = [
        mp.Process(target=_process_main, args=(redis_url, namespace, f"p{p}", 4, go, out))
        for p in range(4)
    ]
    for proc in procs:
        proc.start()
    local: list[tuple[str, int, int]] = []
    local_lock = threading.Lock()

    def work(worker: str) -> None:
        got = _reserve_many(redis_url, namespace, worker, go)
        with local_lock:
            local.extend(got)

    threads = [threading.Thread(target=work, args=(f"main-t{t}",)) for t in range(8)]
    for t in threads:
        t.start()
    for _ in procs:
        kind, _name = out.get(timeout=60)
        assert kind == "ready"

    # When all of them reserve at once, while a watcher samples the tenant balance
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            b = ledger.balance(tenant.key)["tokens"]
            samples.append(b["used"] + b["reserved"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    go.set()
    for t in threads:
        t.join(60)
    granted = list(local)
    for _ in procs:
        try:
            kind, results = out.get(timeout=60)
        except queue.Empty:
            pytest.fail("a reserving process did not report")
        assert kind == "done"
        granted.extend(results)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    stop.set()
    watcher.join()

    # Then the granted reservations never exceeded the limit, yet filled it closely
    total = sum(a for _, _, a in granted)
    attempted = sum(
        amount_for(f"p{p}-t{t}", i) for p in range(4) for t in range(4) for i in range(ATTEMPTS)
    ) + sum(amount_for(f"main-t{t}", i) for t in range(8) for i in range(ATTEMPTS))
    assert attempted > 3 * LIMIT
    assert total <= LIMIT
    assert total > LIMIT - 100  # every amount is < 100: a refused one would have fit otherwise
    assert max(samples, default=0) <= LIMIT
    assert ledger.balance(tenant.key)["tokens"] == {"used": 0, "reserved": total}
    assert ledger.balance(tenant.key)["model_calls"]["reserved"] == len(granted)
    assert len({(r, s) for r, s, _ in granted}) == len(granted)

    # When every granted step settles to an actual at most its reservation (threads at once)
    def actual(amount: int, step: int) -> int:
        return amount - (step % 7)

    def settle(items: list[tuple[str, int, int]]) -> None:
        for run_id, step, amount in items:
            assert ledger.settle(run_id, step, {"tokens": actual(amount, step), "model_calls": 1})

    chunks = [granted[i::6] for i in range(6)]
    settlers = [threading.Thread(target=settle, args=(c,)) for c in chunks]
    for t in settlers:
        t.start()
    for t in settlers:
        t.join(60)

    # Then used is exactly the sum of actuals and nothing is left reserved
    expected = sum(actual(a, s) for _, s, a in granted)
    assert ledger.balance(tenant.key)["tokens"] == {"used": expected, "reserved": 0}
    assert ledger.balance(tenant.key)["model_calls"] == {"used": len(granted), "reserved": 0}
    assert ledger.redis.zcard(ledger.keys.budget_holds_index()) == 0
