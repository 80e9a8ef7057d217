"""Leases with fencing tokens against a real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from runtime.keys import Keys
from runtime.locks.leases import Busy, Lease, LeaseManager, new_owner, owner_is_dead
from tests.support import wait_for

HOST = socket.gethostname()


@pytest.fixture
def leases(redis_url: str) -> Iterator[LeaseManager]:
    client = redis.Redis.from_url(redis_url)
    yield LeaseManager(client, Keys(f"tk{uuid.uuid4().hex[:10]}"))
    client.close()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process on this host whose pid a lease owner can name."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def owner_of(pid: int, prefix: str = "") -> str:
    return f"{prefix}{HOST}|{pid}|{uuid.uuid4().hex[:12]}"


def test_new_owner_names_this_process() -> None:
    host, pid, nonce = new_owner().split("|")
    assert host == HOST and int(pid) == os.getpid() and len(nonce) == 12
    assert new_owner() != new_owner()


def test_acquire_release_and_reacquire(leases: LeaseManager) -> None:
    a, b = new_owner(), new_owner()
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
    a = new_owner()
    first = leases.acquire_lock("x", a, 10_000)
    second = leases.acquire_lock("x", a, 10_000)
    assert isinstance(first, Lease) and isinstance(second, Lease)
    assert second.fencing_token > first.fencing_token


def test_fencing_tokens_strictly_increase_across_owners_and_threads(leases: LeaseManager) -> None:
    tokens: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        owner = new_owner()
        for _ in range(20):
            got = wait_for(
                lambda: _lease_or_none(leases, "hot", owner),
                timeout=10,
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
        t.join(30)
    assert len(tokens) == 120
    # every grant got its own token; in grant order they only grow
    assert len(set(tokens)) == 120 and tokens == sorted(tokens)


def _lease_or_none(leases: LeaseManager, name: str, owner: str) -> Lease | None:
    got = leases.acquire_lock(name, owner, 10_000)
    return got if isinstance(got, Lease) else None


def test_locks_have_independent_counters(leases: LeaseManager) -> None:
    a = new_owner()
    one = leases.acquire_lock("ticket:A", a, 10_000)
    other = leases.acquire_lock("ticket:B", a, 10_000)
    assert isinstance(one, Lease) and isinstance(other, Lease)
    assert one.fencing_token == other.fencing_token == 1


def test_renew_extends_a_lease(leases: LeaseManager) -> None:
    # (a 20 s lease: the renewal comes long before it could expire, however slow the call)
    got = leases.acquire_lock("renew-me", new_owner(), 20_000)
    assert isinstance(got, Lease)
    assert leases.renew(got, 600_000) is True
    assert leases.redis.pttl(got.key) > 300_000
    busy = leases.acquire_lock("renew-me", new_owner(), 1_000)
    assert isinstance(busy, Busy) and busy.retry_after_ms > 300_000


def test_an_expired_lease_frees_the_lock(leases: LeaseManager) -> None:
    # Given a holder whose lease keeps B out
    a, b = new_owner(), new_owner()
    stale = leases.acquire_lock("short", a, 60_000)
    assert isinstance(stale, Lease)
    assert isinstance(leases.acquire_lock("short", b, 10_000), Busy)

    # When it stalls past its lease (Redis expires the key: here in a millisecond, rather
    # than a test betting that its next call comes before a short lease runs out)
    leases.redis.pexpire(stale.key, 1)

    # Then B gets it with a newer token
    got_b = wait_for(lambda: _lease_or_none(leases, "short", b), timeout=10, message="expiry")
    assert got_b.fencing_token > stale.fencing_token

    # and the stalled holder can neither renew nor release B's lease
    assert leases.renew(stale, 10_000) is False
    assert leases.release(stale) is False
    assert leases.redis.get(got_b.key) == b.encode()


def test_run_lease(leases: LeaseManager) -> None:
    a, b = new_owner(), new_owner()
    got = leases.acquire_run("run-1", a, 10_000)
    assert isinstance(got, Lease) and got.key == leases.keys.run_lease("run-1")
    assert isinstance(leases.acquire_run("run-1", b, 10_000), Busy)
    assert isinstance(leases.acquire_run("run-2", b, 10_000), Lease)
    with leases.redis.pipeline(transaction=False) as pipe:
        leases.release_in(pipe, got)
        assert pipe.execute() == [1]
    again = leases.acquire_run("run-1", b, 10_000)
    assert isinstance(again, Lease) and again.fencing_token > got.fencing_token


@pytest.mark.parametrize("prefix", ["", "run-9:3|"], ids=["run-lease-owner", "tool-lock-owner"])
def test_a_dead_owner_on_this_host_is_taken_over_at_once(
    leases: LeaseManager, child: subprocess.Popen[bytes], prefix: str
) -> None:
    # Given a lease held for a minute by another live process on this host
    # (tool locks use "<run>:<step>|host|pid|nonce", run leases "host|pid|nonce")
    dead_owner = owner_of(child.pid, prefix)
    held = leases.acquire_lock("ticket:T-dead", dead_owner, 60_000)
    assert isinstance(held, Lease)
    assert not owner_is_dead(dead_owner)
    busy = leases.acquire_lock("ticket:T-dead", new_owner(), 60_000)
    assert isinstance(busy, Busy) and busy.holder == dead_owner

    # When that process is killed (and reaped)
    child.kill()
    child.wait(timeout=10)
    assert owner_is_dead(dead_owner)

    # Then the next owner takes the lease over at once, with a newer token
    me = new_owner()
    got = leases.acquire_lock("ticket:T-dead", me, 60_000)
    assert isinstance(got, Lease), got
    assert got.owner == me and got.fencing_token > held.fencing_token
    assert leases.redis.get(got.key) == me.encode()
    # and the dead owner's release is a no-op
    assert leases.release(held) is False


@pytest.mark.parametrize(
    "owner",
    [
        "someone-else",
        "run-1:0",
        f"{HOST}|notapid|n",
        f"other-host.example|{2**22 + 12345}|n",  # another host: cannot prove anything
        f"{HOST}|{os.getpid()}|n",  # ourselves
        f"{HOST}|1|n",  # init: alive
        f"{HOST}|0|n",
        f"{HOST}|-1|n",
    ],
)
def test_owner_is_dead_only_when_provable(owner: str) -> None:
    assert owner_is_dead(owner) is False


def test_a_live_foreign_owner_is_not_taken_over(
    leases: LeaseManager, child: subprocess.Popen[bytes]
) -> None:
    held = leases.acquire_run("run-live", owner_of(child.pid), 60_000)
    assert isinstance(held, Lease)
    assert isinstance(leases.acquire_run("run-live", new_owner(), 60_000), Busy)
