"""Leases with fencing tokens against a real Redis; owners are process instances."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from runtime.keys import Keys
from runtime.locks.identity import INSTANCE_PATTERN, Liveness, new_instance_id, owner_instance
from runtime.locks.leases import Busy, Lease, LeaseManager
from tests.support import ROOT, wait_for


@pytest.fixture
def leases(redis_url: str) -> Iterator[LeaseManager]:
    client = redis.Redis.from_url(redis_url)
    manager = LeaseManager(client, Keys(f"tk{uuid.uuid4().hex[:10]}"), dead_after_ms=8000)
    yield manager
    manager.liveness.stop()
    client.close()


def test_owner_names_this_process_instance(leases: LeaseManager) -> None:
    owner = leases.owner()
    instance, nonce = owner.split("|")
    assert INSTANCE_PATTERN.match(instance) and len(nonce) == 12
    assert owner_instance(owner) == instance
    # registered before it was handed out: its heartbeat key exists, with the ttl
    alive = leases.keys.instance_alive(instance)
    assert 0 < leases.redis.pttl(alive) <= 8000
    assert leases.owner() != owner and owner_instance(leases.owner()) == instance
    # a tool lock's owner carries the call as a prefix
    assert owner_instance(leases.owner("run-1:0")) == instance
    assert leases.owner("run-1:0").startswith("run-1:0|")


def test_acquire_release_and_reacquire(leases: LeaseManager) -> None:
    a, b = leases.owner(), leases.owner()
    # Given A holds the lock
    got = leases.acquire_lock("ticket:T-1", a, 10_000)
    assert isinstance(got, Lease) and got.owner == a and got.fencing_token >= 1
    assert got.key == leases.keys.lock("ticket:T-1")

    # When B asks, it is told who holds it and for how long
    busy = leases.acquire_lock("ticket:T-1", b, 10_000)
    assert isinstance(busy, Busy) and busy.holder == a
    assert 0 < busy.retry_after_ms <= 10_000

    # Then once A releases, B gets it with a newer token
    assert leases.release(got) is True
    assert leases.release(got) is False  # already gone
    got_b = leases.acquire_lock("ticket:T-1", b, 10_000)
    assert isinstance(got_b, Lease) and got_b.fencing_token > got.fencing_token

    # and A can no longer release or renew B's lease
    assert leases.release(Lease(got_b.key, a, got.fencing_token)) is False
    assert leases.renew(Lease(got_b.key, a, got.fencing_token), 10_000) is False
    assert leases.redis.get(got_b.key) == b.encode()


def test_the_same_owner_may_reacquire_with_a_new_token(leases: LeaseManager) -> None:
    a = leases.owner()
    first = leases.acquire_lock("x", a, 10_000)
    second = leases.acquire_lock("x", a, 10_000)
    assert isinstance(first, Lease) and isinstance(second, Lease)
    assert second.fencing_token > first.fencing_token


def test_fencing_tokens_strictly_increase_across_owners_and_threads(leases: LeaseManager) -> None:
    tokens: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        owner = leases.owner()
        for _ in range(20):
            got = wait_for(
                lambda: _lease_or_none(leases, "hot", owner),
                timeout=60,
                interval=0.001,
                message="the hot lock",
            )
            with lock:
                tokens.append(got.fencing_token)
            assert leases.release(got)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(tokens) == 120
    # every grant got its own token; in grant order they only grow
    assert len(set(tokens)) == 120 and tokens == sorted(tokens)


def _lease_or_none(leases: LeaseManager, name: str, owner: str) -> Lease | None:
    got = leases.acquire_lock(name, owner, 10_000)
    return got if isinstance(got, Lease) else None


def test_locks_have_independent_counters(leases: LeaseManager) -> None:
    a = leases.owner()
    one = leases.acquire_lock("ticket:A", a, 10_000)
    other = leases.acquire_lock("ticket:B", a, 10_000)
    assert isinstance(one, Lease) and isinstance(other, Lease)
    assert one.fencing_token == other.fencing_token == 1


def test_renew_extends_a_lease(leases: LeaseManager) -> None:
    # (a 20 s lease: the renewal comes long before it could expire, however slow the call)
    got = leases.acquire_lock("renew-me", leases.owner(), 20_000)
    assert isinstance(got, Lease)
    assert leases.renew(got, 600_000) is True
    assert leases.redis.pttl(got.key) > 300_000
    busy = leases.acquire_lock("renew-me", leases.owner(), 1_000)
    assert isinstance(busy, Busy) and busy.retry_after_ms > 300_000


def test_an_expired_lease_frees_the_lock(leases: LeaseManager) -> None:
    # Given a holder whose lease keeps B out
    a, b = leases.owner(), leases.owner()
    stale = leases.acquire_lock("short", a, 60_000)
    assert isinstance(stale, Lease)
    assert isinstance(leases.acquire_lock("short", b, 10_000), Busy)

    # When it stalls past its lease (Redis expires the key: here in a millisecond, rather
    # than a test betting that its next call comes before a short lease runs out)
    leases.redis.pexpire(stale.key, 1)

    # Then B gets it with a newer token
    got_b = wait_for(lambda: _lease_or_none(leases, "short", b), timeout=60, message="expiry")
    assert got_b.fencing_token > stale.fencing_token

    # and the stalled holder can neither renew nor release B's lease
    assert leases.renew(stale, 10_000) is False
    assert leases.release(stale) is False
    assert leases.redis.get(got_b.key) == b.encode()


def test_run_lease(leases: LeaseManager) -> None:
    a, b = leases.owner(), leases.owner()
    got = leases.acquire_run("run-1", a, 10_000)
    assert isinstance(got, Lease) and got.key == leases.keys.run_lease("run-1")
    assert isinstance(leases.acquire_run("run-1", b, 10_000), Busy)
    assert isinstance(leases.acquire_run("run-2", b, 10_000), Lease)
    with leases.redis.pipeline(transaction=False) as pipe:
        leases.release_in(pipe, got)
        assert pipe.execute() == [1]
    again = leases.acquire_run("run-1", b, 10_000)
    assert isinstance(again, Lease) and again.fencing_token > got.fencing_token


HOLDER = """
import sys, time, redis
from runtime.keys import Keys
from runtime.locks.leases import LeaseManager, Lease
leases = LeaseManager(redis.Redis.from_url(sys.argv[1]), Keys(sys.argv[2]), dead_after_ms=60_000)
got = leases.acquire_lock(sys.argv[3], leases.owner(sys.argv[4]), 600_000)
assert isinstance(got, Lease)
print(got.owner, flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(leases: LeaseManager, redis_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Another process (its own instance, heartbeat ttl 60 s) holding ``ticket:T-dead``
    for ten minutes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, leases.keys.namespace, "ticket:T-dead",
         "run-9:3"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        owner = proc.stdout.readline().strip()
        assert owner, "the holder did not start"
        yield proc, owner
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_a_dead_owner_is_taken_over_only_once_its_heartbeat_is_gone(
    leases: LeaseManager, holder: tuple[subprocess.Popen[str], str]
) -> None:
    proc, owner = holder
    instance = owner_instance(owner)
    assert instance is not None and owner.startswith("run-9:3|")
    # Given a lock held by another live process instance: never taken over
    assert isinstance(leases.acquire_lock("ticket:T-dead", leases.owner(), 60_000), Busy)

    # When that process is SIGKILLed, its death is not known yet (its heartbeat key lives
    # on for its ttl, and no pid check on this host is trusted): still busy
    proc.kill()
    proc.wait(timeout=10)
    assert not leases.liveness.known_dead(instance)
    busy = leases.acquire_lock("ticket:T-dead", leases.owner(), 60_000)
    assert isinstance(busy, Busy) and busy.holder == owner and busy.retry_after_ms > 60_000

    # Then once its heartbeat has expired (the clock passing its ttl: PEXPIRE) it is known
    # dead and the next owner takes the lock over at once, with a newer token
    held_token = int(leases.redis.get(leases.keys.lock_fence("ticket:T-dead")) or 0)
    leases.redis.pexpire(leases.keys.instance_alive(instance), 1)
    wait_for(lambda: leases.liveness.known_dead(instance), timeout=60, message="expiry")
    me = leases.owner()
    got = leases.acquire_lock("ticket:T-dead", me, 60_000)
    assert isinstance(got, Lease), got
    assert got.fencing_token > held_token
    assert leases.redis.get(got.key) == me.encode()
    # and the dead owner's release is a no-op
    assert leases.release(Lease(got.key, owner, held_token)) is False


def test_a_run_lease_of_a_dead_instance_is_taken_over(leases: LeaseManager) -> None:
    # Given a run lease held by an instance that registered and then stopped beating
    ghost = new_instance_id()
    leases.redis.set(leases.keys.instance_alive(ghost), "test", px=60_000)
    held = leases.acquire_run("run-ghost", f"{ghost}|abc", 600_000)
    assert isinstance(held, Lease) and not held.taken_over
    assert isinstance(leases.acquire_run("run-ghost", leases.owner(), 60_000), Busy)
    # When its heartbeat is gone
    leases.redis.delete(leases.keys.instance_alive(ghost))
    # Then the run lease is taken over (the step knows: it is a retry), its token grows
    got = leases.acquire_run("run-ghost", leases.owner(), 60_000)
    assert isinstance(got, Lease) and got.fencing_token > held.fencing_token
    assert got.taken_over


@pytest.mark.parametrize(
    "owner",
    [
        "someone-else",
        "run-1:0",
        "host|1234|0123456789ab",  # an owner of an older version: host|pid|nonce
        "run-1:0|host|1234|0123456789ab",
        "i-xyz|nonce",
        f"{new_instance_id()}",  # no nonce: not an owner this version writes
    ],
)
def test_an_owner_that_is_not_an_instance_is_never_known_dead(
    leases: LeaseManager, owner: str
) -> None:
    # fail closed: such a lease is waited out (its ttl), never taken over early
    assert leases.liveness.known_dead(owner_instance(owner)) is False
    held = leases.acquire_lock("legacy", owner, 60_000)
    assert isinstance(held, Lease)
    assert isinstance(leases.acquire_lock("legacy", leases.owner(), 60_000), Busy)


def test_the_steal_replaces_only_the_owner_that_was_seen_dead(leases: LeaseManager) -> None:
    # the check (heartbeat, {sched} slot) and the steal ({lock:} slot) are two steps: if the
    # lock changed hands between them, the steal does nothing
    live = leases.owner()
    held = leases.acquire_lock("cas", live, 60_000)
    assert isinstance(held, Lease)
    key, fence = leases.keys.lock("cas"), leases.keys.lock_fence("cas")
    seen_dead = f"{new_instance_id()}|gone"
    assert leases._steal(keys=[key, fence], args=[seen_dead, leases.owner(), 60_000]) == [0]
    assert leases.redis.get(key) == live.encode()


def test_a_lapsed_instance_stays_dead_and_the_process_goes_on_under_a_new_id(
    leases: LeaseManager,
) -> None:
    liveness = leases.liveness
    first = liveness.instance()
    liveness.stop()  # no refresh thread: this test calls beat() itself
    thread = liveness._thread
    assert thread is not None
    thread.join(timeout=10)
    assert liveness.beat() is True
    # When the process stalls past its ttl (its key expires before the next refresh)
    leases.redis.pexpire(leases.keys.instance_alive(first), 1)
    alive = leases.keys.instance_alive(first)
    wait_for(lambda: not leases.redis.exists(alive), timeout=60, message="the lapse")
    assert liveness.known_dead(first) is False  # never itself, until it notices
    # Then the refresh does not bring the old id back: it is dead for good, and the
    # process goes on under a new one
    assert liveness.beat() is False
    second = liveness.instance()
    assert second != first
    assert not leases.redis.exists(alive) and liveness.known_dead(first)
    assert leases.redis.exists(leases.keys.instance_alive(second))
    assert owner_instance(leases.owner()) == second


def test_a_forked_child_gets_its_own_instance_and_its_parent_vouches_for_it(
    leases: LeaseManager,
) -> None:
    liveness = leases.liveness
    parent_instance = liveness.instance()
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: register (a new instance), report it, wait, exit
        try:
            os.close(read)
            client = redis.Redis(connection_pool=redis.ConnectionPool(
                **leases.redis.connection_pool.connection_kwargs))  # fmt: skip
            child = Liveness(client, leases.keys, 8000)
            os.write(write, child.instance().encode())
            os.read(go_read, 1)
        finally:
            os._exit(0)
    os.close(write)
    child_instance = os.read(read, 100).decode()
    os.close(read)
    assert INSTANCE_PATTERN.match(child_instance) and child_instance != parent_instance
    alive = leases.keys.instance_alive(child_instance)
    # While the child lives, its parent refreshes its heartbeat (to its 8 s ttl: more than
    # the 2 s left, with 6 s to spare for reading it back)
    leases.redis.pexpire(alive, 2000)
    assert liveness.vouch_for_children({pid}) == []
    assert leases.redis.pttl(alive) > 2000
    # and a pid the pool does not list (reused by another process) is neither refreshed
    # nor declared dead: its ttl decides
    leases.redis.pexpire(alive, 5000)
    assert liveness.vouch_for_children({pid + 100_000}) == []
    assert 0 < leases.redis.pttl(alive) <= 5000
    # When the child exits, the parent, which saw it go, declares it dead at once
    os.write(go_write, b"x")
    os.close(go_write)
    os.waitpid(pid, 0)
    assert liveness.vouch_for_children(None) == [child_instance]
    assert liveness.known_dead(child_instance)
    assert liveness.vouch_for_children(None) == []  # once
