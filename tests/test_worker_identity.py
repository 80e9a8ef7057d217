"""Owners are process instances: dead workers are found by their heartbeat, live ones never
taken over, and one lock has one holder even when host names and pids repeat.

Real Redis, real SQLite, real ``celery worker`` subprocesses (some in their own PID
namespace, ``unshare --pid --fork``, all with one node name). The tools in
tests/owner_tools.py count from the inside who is in at once and how often each step ran.
Figures (seconds from a SIGKILL to the step running again) are printed, never asserted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu import Connection  # type: ignore[attr-defined]

from runtime.locks.identity import new_instance_id, owner_instance
from runtime.scheduling.scheduler import (
    STARTED_NOT_IN_FLIGHT,
    STARTED_OWNED,
    STARTED_OWNED_ELSEWHERE,
    Item,
    Ops,
)
from runtime.service import RuntimeService
from runtime.wiring import Runtime
from tests.conftest import TEST_CONFIG
from tests.owner_tools import MAX_HOLD_MS
from tests.support import ROOT, Deployment, WorkerProcess, redis_now, wait_for, wait_until

REPLY = {"type": "reply", "text": "ok"}
#: heartbeat ttl of the test deployments: short, so a dead worker is found within seconds
DEAD_AFTER_S = 4.0
#: the owners routes' step timeout: longer than any hold (owner_tools.MAX_HOLD_MS), so a
#: call the test holds inside ends when the test lets it go, never by its timeout
OWNERS_STEP_TIMEOUT_S = 60
#: the broker hands an unacked message back only after an hour: within a test, a dead
#: worker's steps come back only through the runtime (and the long step timeout needs it)
VISIBILITY_TIMEOUT_S = "3600"


def owners_config(tmp_path: Path, **scheduling: Any) -> Path:
    """The test deployment plus the owner tools, their routes and ``scheduling`` changes."""
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["tool_modules"].append("tests.owner_tools")
    data["tools"]["owners.locked"] = {"version": "1"}
    data["tools"]["owners.work"] = {"version": "1"}
    route = {
        "task_class": "test",
        "risk_class": "low",
        "autonomy_level": "bounded_autonomous",
        "proposer": "scripted",
        "budget_policy": "standard",
        "step_timeout_s": OWNERS_STEP_TIMEOUT_S,
    }
    data["routes"]["r.owners.limited"] = {
        **route,
        "allowed_tools": ["owners.work"],
        "concurrency_limit": 2,
    }
    data["routes"]["r.owners.lock"] = {
        **route,
        "allowed_tools": ["owners.locked"],
        "concurrency_limit": 50,
        "lock_wait_attempts": 500,
    }
    data["scheduling"].update({"worker_dead_after_s": DEAD_AFTER_S, **scheduling})
    path = tmp_path / "owners.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def make_deployment(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    made: list[Deployment] = []

    def make(**kw: Any) -> Deployment:
        extra_env = {"AGENTRT_VISIBILITY_TIMEOUT_S": VISIBILITY_TIMEOUT_S,
                     **kw.pop("extra_env", {})}  # fmt: skip
        dep = Deployment.create(
            name=f"o{uuid.uuid4().hex[:6]}",
            redis_url=redis_url,
            database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
            config=owners_config(tmp_path, **kw),
            home=tmp_path,
            extra_env=extra_env,
        )
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.close()


def work(key: str, ms: int = 200, after_ms: int = 0, hold: bool = False) -> dict[str, Any]:
    args = {"key": key, "ms": ms, "after_ms": after_ms, "hold": hold}
    return {"type": "tool_call", "tool": "owners.work", "args": args}


def held(key: str) -> dict[str, Any]:
    """A call of ``owners.work`` that stays inside, before its write, while the test holds
    ``owners:<key>:hold`` (see ``hold_work``)."""
    return work(key, ms=MAX_HOLD_MS, hold=True)


def hold_work(dep: Deployment, key: str, on: bool) -> None:
    name = dep.svc.keys.demo(f"owners:{key}:hold")
    if on:
        dep.svc.tool_redis.set(name, 1)
    else:
        dep.svc.tool_redis.delete(name)


def locked(name: str, ms: int = 150, hold: bool = False) -> dict[str, Any]:
    args = {"name": name, "ms": ms, "hold": hold}
    return {"type": "tool_call", "tool": "owners.locked", "args": args}


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def demo(dep: Deployment, name: str) -> str:
    return dep.svc.keys.demo(name)


def executions(dep: Deployment, key: str) -> dict[str, int]:
    """Step ("run:step") -> how many times the tool started for it."""
    raw = dep.svc.tool_redis.hgetall(demo(dep, f"owners:{key}:runs"))
    return {text(k): int(v) for k, v in raw.items()}


def starts(dep: Deployment, key: str) -> list[tuple[float, str]]:
    raw = dep.svc.tool_redis.lrange(demo(dep, f"owners:{key}:starts"), 0, -1)
    out = []
    for entry in raw:
        at, step = text(entry).split("|", 1)
        out.append((float(at), step))
    return out


def running_items(dep: Deployment) -> list[Item]:
    return [item for item, _ in dep.svc.scheduler.snapshot()["inflight"]]


def alive(dep: Deployment, instance: str) -> bool:
    return bool(dep.svc.redis.exists(dep.svc.keys.instance_alive(instance)))


def step_outcomes(worker: WorkerProcess) -> list[str]:
    return re.findall(r"succeeded in [0-9.]+s: \{'outcome': '([a-z_:]+)'", worker.log())


# --- the scheduler's side, without workers -------------------------------------------------


class Recorder:
    """A publisher that sends nothing: dispatched steps stay in flight, no worker runs."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def publish(self, item: Item) -> None:
        self.items.append(item)


@pytest.fixture
def svc(fresh_deployment: Deployment) -> Iterator[RuntimeService]:
    service = Runtime.from_settings(fresh_deployment.settings, publisher=Recorder())
    try:
        yield service
    finally:
        service.close()


def dispatched(svc: RuntimeService, route: str = "r.basic") -> Item:
    view = svc.submit("t1", route, "owned", {"script": [REPLY]}, actor="tester")
    item = Item(view.run_id, 0, "t1", route, view.priority)
    svc.schedule(Ops().heartbeat("w-test", 4, 60_000).dispatch(4))
    assert item in svc.publisher.items  # type: ignore[attr-defined]
    return item


def ghost(svc: RuntimeService) -> str:
    """An instance that registered (its heartbeat key exists) and that a test kills."""
    instance = new_instance_id()
    svc.redis.set(svc.keys.instance_alive(instance), "test", px=600_000)
    return instance


def route_slots(svc: RuntimeService, route: str) -> int:
    return int(svc.redis.zcard(f"{svc.keys.sched()}:inf:r:{route}"))


def test_a_started_step_is_handed_back_with_its_slot_when_its_owner_dies(
    svc: RuntimeService,
) -> None:
    # Given a dispatched step that started under an instance that is alive
    item = dispatched(svc)
    svc.publisher.items.clear()  # type: ignore[attr-defined]
    owner_a = f"{ghost(svc)}|n1"
    assert svc.scheduler.start(item, 60_000, owner_a, "own") == STARTED_OWNED
    assert svc.scheduler.owner_of(item) == owner_a
    slots = route_slots(svc, item.route)

    # When the pump looks while the owner lives, nothing happens
    outcome = svc.schedule(Ops().expire(100, 0))
    assert outcome.handed_back == [] and outcome.dead_instances == []
    assert svc.scheduler.owner_of(item) == owner_a

    # When its heartbeat is gone
    instance = owner_instance(owner_a)
    assert instance is not None
    svc.redis.delete(svc.keys.instance_alive(instance))
    outcome = svc.schedule(Ops().expire(100, 0))

    # Then the step is handed back: published again, with the slot it had (still in
    # flight, the route's count unchanged), and no owner until a copy starts
    assert outcome.handed_back == [item] and outcome.dead_instances == [instance]
    assert svc.publisher.items == [item]  # type: ignore[attr-defined]
    assert svc.scheduler.known([item]) == [True] and route_slots(svc, item.route) == slots
    assert item in running_items_of(svc)
    assert svc.scheduler.owner_of(item) is None
    assert not svc.redis.sismember(f"{svc.keys.sched()}:owners", instance)
    # once
    assert svc.schedule(Ops().expire(100, 0)).handed_back == []

    # And the copy that starts next owns it; completing it forgets the owner
    owner_b = f"{ghost(svc)}|n2"
    assert svc.scheduler.start(item, 60_000, owner_b, "own") == STARTED_OWNED
    svc.schedule(Ops().complete(item))
    assert svc.scheduler.owner_of(item) is None
    assert svc.scheduler.known([item]) == [False]
    assert svc.redis.scard(f"{svc.keys.sched()}:owners") == 0


def running_items_of(svc: RuntimeService) -> list[Item]:
    return [i for i, _ in svc.scheduler.snapshot()["inflight"]]


def test_a_step_that_never_started_is_left_to_its_slot_lease(svc: RuntimeService) -> None:
    # a dispatched step no worker took yet has no owner: nothing to hand back
    item = dispatched(svc)
    outcome = svc.schedule(Ops().expire(100, 0))
    assert outcome.handed_back == [] and svc.scheduler.owner_of(item) is None
    assert svc.scheduler.known([item]) == [True]
    # and a step whose slot is gone (re-queued long ago) records nothing when it starts
    other = Item(uuid.uuid4().hex, 0, "t1", "r.basic")
    assert svc.scheduler.start(other, 60_000, f"{ghost(svc)}|n", "own") == STARTED_NOT_IN_FLIGHT
    assert svc.scheduler.owner_of(other) is None


def test_a_copy_never_takes_the_slot_of_a_live_owner_unless_it_holds_the_run_lease(
    svc: RuntimeService,
) -> None:
    item = dispatched(svc)
    owner_a, owner_b = f"{ghost(svc)}|a", f"{ghost(svc)}|b"
    assert svc.scheduler.start(item, 60_000, owner_a, "own") == STARTED_OWNED
    # a second copy (a redelivered message) leaves a live owner's record alone
    assert svc.scheduler.start(item, 60_000, owner_b, "own") == STARTED_OWNED_ELSEWHERE
    assert svc.scheduler.owner_of(item) == owner_a
    # and drops only its own record
    assert svc.scheduler.start(item, 60_000, owner_b, "disown") == 0
    assert svc.scheduler.owner_of(item) == owner_a
    # the copy that holds the run lease owns the step, whoever was recorded
    assert svc.scheduler.start(item, 60_000, owner_b, "force") == STARTED_OWNED
    assert svc.scheduler.owner_of(item) == owner_b
    instance_a = owner_instance(owner_a)
    assert not svc.redis.sismember(f"{svc.keys.sched()}:owned:{instance_a}", item.encode())
    # a copy whose owner died is replaced by the next one that starts
    instance_b = owner_instance(owner_b)
    assert instance_b is not None
    svc.redis.delete(svc.keys.instance_alive(instance_b))
    assert svc.scheduler.start(item, 60_000, owner_a, "own") == STARTED_OWNED
    assert svc.scheduler.owner_of(item) == owner_a
    assert svc.scheduler.start(item, 60_000, owner_a, "disown") == 1
    assert svc.scheduler.owner_of(item) is None


def test_owners_are_checked_once_per_interval_across_all_pumps(svc: RuntimeService) -> None:
    first, second = dispatched(svc), dispatched(svc)
    owner_1, owner_2 = f"{ghost(svc)}|1", f"{ghost(svc)}|2"
    svc.scheduler.start(first, 60_000, owner_1, "own")
    svc.scheduler.start(second, 60_000, owner_2, "own")
    for owner in (owner_1, owner_2):
        svc.redis.delete(svc.keys.instance_alive(str(owner_instance(owner))))
    svc.redis.delete(f"{svc.keys.sched()}:handback")
    # one pump looks (and takes the interval: a long one here), handing back at most 1
    assert svc.schedule(Ops().expire(1, 600_000)).handed_back in ([first], [second])
    # every other pump call within the interval skips the check
    assert svc.schedule(Ops().expire(100, 600_000)).handed_back == []
    # the next interval hands back the other
    svc.redis.delete(f"{svc.keys.sched()}:handback")
    assert len(svc.schedule(Ops().expire(100, 600_000)).handed_back) == 1
    assert svc.redis.scard(f"{svc.keys.sched()}:owners") == 0


# --- dead and live workers ------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_workers_running_steps_are_handed_back_and_old_messages_dropped(
    make_deployment: Any,
) -> None:
    # Given leases that would keep a dead worker's slots and run leases for ten minutes
    # and a broker that gives its messages back after an hour: only the heartbeat path
    # can bring its steps back
    dep: Deployment = make_deployment(lease_margin_s=600, queue_allowance_s=600)
    doomed = dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    # (the first calls stay inside, before their write, until the test lets them go: the
    # kill lands mid-call however long it takes to come)
    hold_work(dep, key, on=True)
    runs = [
        dep.submit_script([held(key), work(key, ms=150), REPLY], route="r.owners.limited")
        for _ in range(6)
    ]
    run_ids = [r.run_id for r in runs]
    active = demo(dep, f"owners:{key}:active")
    # (the route allows 2 at once: both are in the tool, before their write)
    wait_for(lambda: int(dep.svc.tool_redis.get(active) or 0) == 2, timeout=60,
             message="two steps mid-call")  # fmt: skip
    owners = {dep.svc.scheduler.owner_of(i) for i in running_items(dep)}
    instances = {owner_instance(o) for o in owners if o}
    assert len(instances) >= 1 and all(i and alive(dep, i) for i in instances)

    # When the whole worker (main process and pool) is SIGKILLed mid-step
    killed_at = time.time()
    doomed.kill_all()
    killed = {step for step, n in executions(dep, key).items() if n == 1}
    assert len(killed) == 2
    dep.svc.tool_redis.set(active, 0)  # the killed calls never count themselves out
    hold_work(dep, key, on=False)  # the re-runs and the other runs need not wait
    survivor = dep.start_worker(concurrency=3)  # more processes than the route allows

    # Then every run finishes, each side effect exactly once, the limit never exceeded
    done = dep.wait_all(run_ids, timeout=180)
    assert {v.status for v in done.values()} == {"succeeded"}, done
    effects = [e for e in dep.svc.store.side_effects(tool="owners.work") if e["run_id"] in run_ids]
    assert len(effects) == 12 and {e["status"] for e in effects} == {"succeeded"}
    assert dep.counter(key) == 12
    assert int(dep.svc.tool_redis.get(demo(dep, f"owners:{key}:max")) or 0) == 2
    # the killed steps ran once more each, every other step once
    ran = executions(dep, key)
    assert {s: n for s, n in ran.items() if n > 1} == dict.fromkeys(killed, 2)
    # because their owner's heartbeat expired (no slot lease expired meanwhile)
    log = survivor.log()
    assert log.count("handed back: its owner instance is dead") == 2, log[-3000:]
    assert "slot lease of" not in log
    for instance in instances:
        assert instance is not None and not alive(dep, instance)
    again = sorted(at - killed_at for at, step in starts(dep, key) if step in killed)[-2:]
    print(f"\nSIGKILL -> killed steps running again: {[round(t, 2) for t in again]} s "
          f"(worker_dead_after_s {DEAD_AFTER_S:g}; survivor started after the kill)")  # fmt: skip

    # When the dead worker's old messages come back from the broker (as after the
    # visibility timeout: kombu's own restore, run here with a timeout of 0)
    prefix = dep.svc.keys.broker_prefix()
    # (the survivor acks its last step just after the run's checkpoint)
    wait_for(lambda: dep.svc.redis.hlen(f"{prefix}unacked") == 2, timeout=60,
             message="only the dead worker's two messages unacked")  # fmt: skip
    before = len(step_outcomes(survivor))
    options = {"global_keyprefix": prefix, "visibility_timeout": 0}
    broker = Connection(dep.svc.endpoints.broker_url, transport_options=options)  # type: ignore[no-untyped-call]
    with broker as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)
    wait_for(lambda: dep.svc.redis.hlen(f"{prefix}unacked") == 0
             and len(step_outcomes(survivor)) >= before + 2, timeout=60,
             message="the old messages consumed")  # fmt: skip

    # Then the step loop drops them: nothing runs again, nothing changes
    outcomes = step_outcomes(survivor)[before:]
    assert len(outcomes) == 2 and all(o.startswith("duplicate_") for o in outcomes), outcomes
    assert executions(dep, key) == ran and dep.counter(key) == 12
    assert {dep.svc.get(r).status for r in run_ids} == {"succeeded"}


@pytest.mark.slow
def test_a_live_worker_running_a_long_step_is_never_taken_over(make_deployment: Any) -> None:
    # Given steps that stay in their tool (held by the test) for three times longer than a
    # dead worker's heartbeat lasts
    dead_after_s = 2.0
    dep: Deployment = make_deployment(worker_dead_after_s=dead_after_s)
    busy = dep.start_worker(concurrency=2)
    idle = dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    hold_work(dep, key, on=True)
    runs = [dep.submit_script([held(key), REPLY], route="r.owners.limited") for _ in range(2)]
    run_ids = [r.run_id for r in runs]
    active = demo(dep, f"owners:{key}:active")
    wait_for(lambda: int(dep.svc.tool_redis.get(active) or 0) == 2, timeout=60,
             message="both steps in the tool")  # fmt: skip
    inside_since = redis_now(dep.svc.redis)
    items = running_items(dep)
    owners = {i: dep.svc.scheduler.owner_of(i) for i in items}
    assert all(owners.values())

    # When a second copy of each running step is delivered meanwhile (a redelivery)
    dep.svc.publish(items)

    # Then the copies drop themselves and the owners stay recorded
    wait_for(lambda: sum(o == "duplicate_dropped" for w in (busy, idle)
                         for o in step_outcomes(w)) == 2, timeout=60,
             message="both copies dropped")  # fmt: skip
    assert {i: dep.svc.scheduler.owner_of(i) for i in items} == owners
    assert int(dep.svc.tool_redis.get(active) or 0) == 2  # still running

    # And while they stay inside past three heartbeat ttls (a wait on the Redis clock, the
    # one the heartbeats expire by), nobody takes them over; then the test lets them go
    wait_until(dep.svc.redis, inside_since + 3 * dead_after_s, "three heartbeat ttls")
    assert {i: dep.svc.scheduler.owner_of(i) for i in items} == owners
    assert int(dep.svc.tool_redis.get(active) or 0) == 2
    hold_work(dep, key, on=False)

    # And every step ran exactly once: heartbeats kept the live worker's steps its own
    done = dep.wait_all(run_ids, timeout=120)
    assert {v.status for v in done.values()} == {"succeeded"}
    assert set(executions(dep, key).values()) == {1} and len(executions(dep, key)) == 2
    assert dep.counter(key) == 2
    for worker in (busy, idle):
        assert "handed back" not in worker.log()
        assert "heartbeat lapsed" not in worker.log()


# --- one holder per lock, across PID namespaces with one host name --------------------------


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for PID namespaces",
)


class NamespacedWorker(WorkerProcess):
    """``proc`` is unshare(1), which ignores SIGTERM while it waits; its child is the
    worker's main process, pid 1 of the namespace: killing it ends the whole namespace."""

    def init_pid(self) -> int | None:
        children = self.children()
        return children[0] if children else None

    def stop(self) -> None:
        init = self.init_pid()
        if self.proc.poll() is None and init is not None:
            os.kill(init, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill_all()

    def kill_all(self) -> None:
        init = self.init_pid()
        if init is not None:
            os.kill(init, signal.SIGKILL)
        self.proc.wait(timeout=60)


def start_namespaced_worker(dep: Deployment, concurrency: int, node: str) -> NamespacedWorker:
    """A worker in its own PID namespace (its main process is pid 1 there, its pool 2, 3,
    ...), as in a container sharing the host's network and host name."""
    name = f"{dep.settings.namespace}-ns{len(dep.workers)}"
    log_path = dep.home / f"{name}.log"
    env = {**os.environ, **dep.env, "PYTHONUNBUFFERED": "1"}
    cmd = ["unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--", sys.executable, "-m",
           "celery", "-A", "tasks.app", "worker", "-c", str(concurrency), "-P", "prefork",
           "-n", node, "--without-mingle", "--without-gossip", "-l", "INFO"]  # fmt: skip
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    worker = NamespacedWorker(name, proc, log_path)
    dep.workers.append(worker)
    wait_for(lambda: "ready." in worker.log() or proc.poll() is not None, timeout=90,
             message=f"worker {name} to start")  # fmt: skip
    assert proc.poll() is None, worker.log()[-3000:]
    return worker


def holders(dep: Deployment, name: str) -> set[str]:
    return {text(m) for m in dep.svc.tool_redis.smembers(demo(dep, f"owners:{name}:holders"))}


def entries(dep: Deployment, name: str) -> list[str]:
    return [text(e) for e in dep.svc.tool_redis.lrange(demo(dep, f"owners:{name}:log"), 0, -1)]


@needs_unshare
@pytest.mark.slow
def test_one_holder_per_lock_across_pid_namespaces_with_one_host_name(
    make_deployment: Any,
) -> None:
    dep: Deployment = make_deployment()
    # Given two workers with one node name and host name, each in its own PID namespace:
    # their processes have the same small pids, and the larger pool's pids name nothing in
    # the smaller one's namespace (a pid check there finds them "dead": with owners named
    # host|pid, as before, this test saw two holders at once)
    first = start_namespaced_worker(dep, 6, "same@samehost")
    second = start_namespaced_worker(dep, 1, "same@samehost")
    # (counted apart: the capacity they report is keyed by instance, not by node name)
    wait_for(lambda: dep.svc.scheduler.capacity() == 7, timeout=60, message="capacity 7")

    # When many runs contend for one lock
    name = f"x{uuid.uuid4().hex[:6]}"
    runs = [dep.submit_script([locked(name, ms=120), REPLY], route="r.owners.lock")
            for _ in range(16)]  # fmt: skip
    done = dep.wait_all([r.run_id for r in runs], timeout=180)

    # Then each ran once, never two holders at once, and both workers held the lock
    assert {v.status for v in done.values()} == {"succeeded"}
    assert len(entries(dep, name)) == 16
    assert int(dep.svc.tool_redis.get(demo(dep, f"owners:{name}:max")) or 0) == 1
    assert step_outcomes(first) and step_outcomes(second)
    tokens = [int(e.split("|")[0]) for e in entries(dep, name)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 16


@needs_unshare
@pytest.mark.slow
def test_a_lock_of_a_killed_worker_is_taken_over_only_after_its_heartbeat_expired(
    make_deployment: Any,
) -> None:
    dep: Deployment = make_deployment()
    name = f"y{uuid.uuid4().hex[:6]}"
    # Given a worker holding the lock in a call that lasts until the test lets it go
    doomed = start_namespaced_worker(dep, 2, "same@samehost")
    dep.svc.tool_redis.set(demo(dep, f"owners:{name}:hold"), 1)
    long_run = dep.submit_script([locked(name, ms=MAX_HOLD_MS, hold=True), REPLY],
                                 route="r.owners.lock")  # fmt: skip
    wait_for(lambda: len(holders(dep, name)) == 1, timeout=60, message="the lock held")
    (dead_token,) = holders(dep, name)
    holder = dep.svc.redis.get(dep.svc.keys.lock(f"res:{name}"))
    assert holder is not None
    dead_instance = owner_instance(text(holder))
    assert dead_instance is not None and alive(dep, dead_instance)
    # and another worker, same node and host name, other PID namespace, waiting for it
    survivor = start_namespaced_worker(dep, 2, "same@samehost")
    waiting_run = dep.submit_script([locked(name, ms=100), REPLY], route="r.owners.lock")
    wait_for(lambda: any(e.kind == "lock_busy" for e in dep.svc.trace(waiting_run.run_id)),
             timeout=60, message="the second run waiting for the lock")  # fmt: skip

    # When the holder's worker is SIGKILLed
    killed_at = time.time()
    doomed.kill_all()  # its PID namespace's init: all of it
    dep.svc.tool_redis.srem(demo(dep, f"owners:{name}:holders"), dead_token)
    dep.svc.tool_redis.delete(demo(dep, f"owners:{name}:hold"))  # the re-run need not wait
    entered = len(entries(dep, name))
    assert entered == 1

    # Then nobody takes the lock while the dead worker's heartbeat lives on
    def heartbeat_gone() -> bool:
        seen = len(entries(dep, name))  # read first: a key seen alive after it was alive then
        if alive(dep, dead_instance):
            assert seen == entered, "the lock was taken while its owner's heartbeat lived"
            return False
        return True

    wait_for(heartbeat_gone, timeout=60, interval=0.02, message="the heartbeat to expire")
    gone_at = time.time()

    # and then the other worker takes it over and the work completes, one holder at a time
    done = dep.wait_all([long_run.run_id, waiting_run.run_id], timeout=180)
    assert {v.status for v in done.values()} == {"succeeded"}
    assert int(dep.svc.tool_redis.get(demo(dep, f"owners:{name}:max")) or 0) == 1
    later = entries(dep, name)[1:]
    assert {e.split("|")[1] for e in later} >= {waiting_run.run_id}
    assert all(int(e.split("|")[0]) > int(dead_token) for e in later)
    first_after = min(float(e.split("|")[2]) for e in later)
    print(f"\nSIGKILL -> heartbeat gone {gone_at - killed_at:.2f} s -> lock taken over "
          f"{first_after - killed_at:.2f} s (worker_dead_after_s {DEAD_AFTER_S:g})")  # fmt: skip
    assert "handed back" in survivor.log()  # the long run's step came back by heartbeat


def test_recovery_forgets_owners_but_never_a_live_instance(svc: RuntimeService) -> None:
    # Given a running step and its owner's heartbeat
    item = dispatched(svc)
    owner = f"{ghost(svc)}|n"
    instance = owner_instance(owner)
    assert instance is not None
    svc.scheduler.start(item, 60_000, owner, "own")
    children = svc.keys.instance_children(new_instance_id())
    svc.redis.hset(children, "123", instance)
    # When recovery resets the scheduler's state (slots and queues rebuilt from SQL)
    svc.scheduler.reset_state()
    # Then who ran what is forgotten with the slots, but the heartbeats stay: deleting one
    # would declare a live process dead and hand its locks to others
    assert svc.scheduler.owner_of(item) is None
    assert svc.redis.scard(f"{svc.keys.sched()}:owners") == 0
    assert svc.redis.exists(svc.keys.instance_alive(instance), children) == 2
