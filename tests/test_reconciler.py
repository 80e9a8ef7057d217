"""The reconciler heals what dead workers and lost messages leave: real Redis, real SQLite,
and a real worker whose pump runs it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from runtime.reconciler import Reconciler, ReconcileReport
from runtime.scheduling.scheduler import Item, Ops, now_ms
from runtime.service import RuntimeService
from runtime.store.db import utcnow
from runtime.store.runs import runs_t
from runtime.tracing import TraceBuffer
from runtime.wiring import Runtime, build_reconciler
from tasks.pump import Pump
from tests.conftest import TEST_CONFIG
from tests.support import Deployment, wait_for

REPLY = {"type": "reply", "text": "ok"}


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


def store_unscheduled(
    svc: RuntimeService, *, status: str = "queued", next_step: int = 0, tenant: str = "t1"
) -> Item:
    """A run admitted in SQL whose process died before it scheduled the run's step."""
    row = svc._new_row(
        tenant, "r.basic", "lost", {"script": [REPLY]}, "tester", None, None, None, None
    )
    row.update(status=status, next_step=next_step)
    trace = TraceBuffer(row["run_id"], row["tenant_id"], row["trace_id"], None)
    trace.add("admission", decision="admitted", route="r.basic")
    svc.store.insert_run(row, trace.drain())
    return Item(row["run_id"], next_step, tenant, "r.basic", row["priority"])


def submitted(svc: RuntimeService, tenant: str = "t1") -> Item:
    view = svc.submit(tenant, "r.basic", "fine", {"script": [REPLY]}, actor="tester")
    return Item(view.run_id, 0, tenant, "r.basic", view.priority)


def age(svc: RuntimeService, items: list[Item], seconds: float) -> None:
    """Pretend the runs were last updated ``seconds`` ago."""
    with svc.store.engine.connect().execution_options(write=True) as conn, conn.begin():
        conn.execute(
            update(runs_t)
            .where(runs_t.c.run_id.in_([i.run_id for i in items]))
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def unlock(svc: RuntimeService) -> None:
    """End the interval's round early (tests do not wait out the lock)."""
    svc.redis.delete(svc.keys.reconciler_lock())


def reconciled(svc: RuntimeService, run_id: str) -> list[dict[str, Any]]:
    return [e for e in svc.store.trace(run_id) if e["kind"] == "reconciled"]


def test_lost_steps_are_queued_again_and_live_ones_left_alone(svc: RuntimeService) -> None:
    # Given runs whose step is in the scheduler: in flight, ready, delayed
    in_flight = submitted(svc, tenant="t2")
    svc.schedule(Ops().heartbeat("w-test", 1, 60_000).dispatch(1))
    assert svc.publisher.items == [in_flight]  # type: ignore[attr-defined]
    svc.redis.delete(f"{svc.keys.sched()}:capacity")  # no more dispatching
    ready = submitted(svc)
    delayed = store_unscheduled(svc)
    svc.schedule(Ops().delay(delayed, now_ms() + 600_000))
    # and runs whose step is nowhere: lost at admission, lost after a checkpoint
    lost_admission = store_unscheduled(svc)
    lost_checkpoint = store_unscheduled(svc, status="running", next_step=2)
    # and lost ones that must not be touched: executing now, waiting for approval, too fresh
    leased = store_unscheduled(svc)
    svc.redis.set(svc.keys.run_lease(leased.run_id), "host|1|x", px=60_000)
    waiting = store_unscheduled(svc, status="waiting", next_step=1)
    fresh = store_unscheduled(svc)
    old = [in_flight, ready, delayed, lost_admission, lost_checkpoint, leased, waiting]
    age(svc, old, 120)
    assert svc.scheduler.known([in_flight, ready, delayed, lost_admission]) == [
        True,
        True,
        True,
        False,
    ]

    # When the reconciler runs (grace 60 s)
    report = build_reconciler(svc, grace_s=60).reconcile()

    # Then exactly the lost steps of active, idle, unleased runs are queued again
    assert report.held_lock and not report.errors
    assert sorted(report.zombies) == sorted([lost_admission.run_id, lost_checkpoint.run_id])
    assert svc.scheduler.known([lost_admission, lost_checkpoint]) == [True, True]
    assert svc.scheduler.known([leased, waiting, fresh]) == [False, False, False]
    (event,) = reconciled(svc, lost_checkpoint.run_id)
    assert event["step_no"] == 2
    assert event["data"]["status"] == "running" and event["data"]["idle_s"] >= 119
    for item in (in_flight, ready, delayed, leased, waiting, fresh):
        assert reconciled(svc, item.run_id) == []
    assert svc.scheduler.depth("t1", "r.basic")[0] == 4  # ready, delayed and the two healed

    # And the next round finds nothing more to do
    unlock(svc)
    again = build_reconciler(svc, grace_s=60).reconcile()
    assert again.held_lock and again.zombies == []
    assert len(reconciled(svc, lost_admission.run_id)) == 1


def test_candidates_are_bounded_and_the_scan_moves_on(svc: RuntimeService) -> None:
    # Given an old backlog of runs that legitimately wait, older than one lost run
    backlog = [submitted(svc) for _ in range(5)]
    lost = store_unscheduled(svc)
    age(svc, backlog, 300)
    age(svc, [lost], 200)
    rec = build_reconciler(svc, grace_s=60, batch=3)

    # When rounds look at 3 candidates each
    rounds: list[ReconcileReport] = []
    for _ in range(2):
        unlock(svc)
        rounds.append(rec.reconcile())

    # Then the first sees only backlog; the second carries on past it and finds the lost run
    assert rounds[0].zombies == []
    assert rounds[1].zombies == [lost.run_id]


def test_one_round_per_interval_across_reconcilers(
    svc: RuntimeService, fresh_deployment: Deployment
) -> None:
    other_svc = Runtime.from_settings(fresh_deployment.settings, publisher=Recorder())
    try:
        lost = store_unscheduled(svc)
        age(svc, [lost], 120)
        # an interval longer than any test step takes: "within the interval" is not a race
        reconcilers = [build_reconciler(s, grace_s=60, interval_s=60.0) for s in (svc, other_svc)]
        barrier = threading.Barrier(len(reconcilers))
        reports: list[ReconcileReport] = []

        def go(rec: Reconciler) -> None:
            barrier.wait()
            reports.append(rec.reconcile())

        # When two workers' reconcilers start a round at the same moment
        threads = [threading.Thread(target=go, args=(r,)) for r in reconcilers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        # Then only one holds the lock and heals; the other skips the round entirely
        assert sorted(r.held_lock for r in reports) == [False, True]
        skipped = next(r for r in reports if not r.held_lock)
        assert skipped == ReconcileReport(held_lock=False)
        assert [z for r in reports for z in r.zombies] == [lost.run_id]
        assert len(reconciled(svc, lost.run_id)) == 1
        # and the lock is kept for the interval, expiring by itself at its end (its ttl is
        # the interval's), then anyone may take the next round
        assert reconcilers[0].reconcile().held_lock is False
        assert reconcilers[1].reconcile().held_lock is False
        assert 0 < svc.redis.pttl(svc.keys.reconciler_lock()) <= 60_000
        svc.redis.pexpire(svc.keys.reconciler_lock(), 1)  # the interval passes
        wait_for(
            lambda: reconcilers[1].reconcile().held_lock,
            timeout=60,
            message="the next interval's round",
        )
    finally:
        other_svc.close()


def test_expired_holds_released_and_retention_hourly(
    svc: RuntimeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a hold whose step died (ttl 1 min) and one with a day left
    ledger = svc.ledger
    scope = ledger.run_scope("run-h", {"tokens": 10_000})
    ledger.reserve("run-h", 0, [scope], {"tokens": 300}, hold_ttl_ms=60_000)
    ledger.reserve("run-h", 1, [scope], {"tokens": 200}, hold_ttl_ms=86_400_000)
    rec = build_reconciler(svc, grace_s=60)

    # When a round runs now: nothing has expired yet
    first = rec.reconcile()
    assert first.held_lock and first.expired_holds == 0
    assert first.retention_deleted == 0  # retention ran (nothing to delete)
    assert ledger.balance(scope.key)["tokens"] == {"used": 0, "reserved": 500}

    # When a round runs two minutes later
    calls: list[int] = []
    monkeypatch.setattr(svc.dead_letters, "apply_retention", lambda: calls.append(1) or 3)
    unlock(svc)
    later = rec.reconcile(now=utcnow() + timedelta(minutes=2))

    # Then the dead step's hold is released, the live one kept; retention not due yet
    assert later.expired_holds == 1 and not later.errors
    assert ledger.balance(scope.key)["tokens"] == {"used": 0, "reserved": 200}
    assert later.retention_deleted is None and calls == []

    # And an hour on, retention runs again
    unlock(svc)
    hour = rec.reconcile(now=utcnow() + timedelta(minutes=62))
    assert hour.retention_deleted == 3 and calls == [1]


def test_pump_survives_a_failing_reconciler(
    svc: RuntimeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def broken(self: Reconciler, now: Any = None) -> ReconcileReport:
        calls.append(time.monotonic())
        raise RuntimeError("boom")

    monkeypatch.setattr(Reconciler, "reconcile", broken)

    class App:
        def runtime_service(self) -> RuntimeService:
            return svc

    pump = Pump(App(), "w-pump", 1, reconcile_interval_s=0.1)  # type: ignore[arg-type]
    pump.start()
    try:
        wait_for(lambda: len(calls) >= 3, timeout=60, message="three reconciler rounds")
        assert pump._thread.is_alive()
    finally:
        pump.stop()


@pytest.mark.slow
def test_run_lost_at_admission_completes_once_a_worker_runs(redis_url: str, tmp_path: Path) -> None:
    # a deployment whose step lease (the reconciler's grace) is 3 + 1 + 2 + 1 = 7 s (step,
    # grace, chain window, margin)
    config = yaml.safe_load(TEST_CONFIG.read_text())
    for route in config["routes"].values():
        route["step_timeout_s"] = 3
    config["scheduling"].update(hard_limit_grace_s=1, lease_margin_s=1)
    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump(config))
    dep = Deployment.create(
        name=f"r{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=path,
        home=tmp_path,
    )
    try:
        assert dep.svc.config.lease_ttl_s() == 7
        # Given a run stored by admission whose process died before scheduling its step
        lost = store_unscheduled(dep.svc)
        assert dep.svc.scheduler.known([lost]) == [False]

        # When a worker runs (its pump offers a reconciler round every 5 s)
        worker = dep.start_worker(concurrency=1)

        # Then the run completes by itself, healed by the pump's reconciler
        done = dep.wait_all([lost.run_id], timeout=90)[lost.run_id]
        assert done.status == "succeeded", worker.log()[-3000:]
        (event,) = reconciled(dep.svc, lost.run_id)
        assert event["data"]["idle_s"] >= 7
        assert "was in no scheduler queue" in worker.log()
    finally:
        dep.close()


def test_dead_lettering_a_queued_step_takes_it_out_of_the_scheduler(svc: RuntimeService) -> None:
    # no worker capacity: the submitted step waits in its tenant's ready queue
    item = submitted(svc, tenant="t2")
    assert svc.scheduler.known([item]) == [True]
    assert svc.scheduler.depth("t2", "r.basic")[0] == 1
    # an operator-side dead-lettering (not a worker holding the step)
    entry = svc.dead_letters.dead_letter_step(
        item.run_id, 0, "exhausted", error_type="OperatorStop", error="stopped by hand"
    )
    assert entry is not None
    assert svc.scheduler.known([item]) == [False]
    assert svc.scheduler.depth("t2", "r.basic")[0] == 0
    # delayed and in-flight items go too
    delayed = submitted(svc, tenant="t3")
    svc.scheduler.run(Ops().drop(delayed).delay(delayed, now_ms() + 60_000))
    assert svc.scheduler.known([delayed]) == [True]
    svc.scheduler.run(Ops().drop(delayed))
    assert svc.scheduler.known([delayed]) == [False]
    assert svc.scheduler.depth("t3", "r.basic")[0] == 0
