"""Redis loses the runtime's data mid-workload; ``recover`` rebuilds it from SQL.

The tools' own state (the counter and its effect journal) lives in another Redis database
(``AGENTRT_TOOL_REDIS_URL``), as it would in production: the runtime's Redis is the one lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.budgets.ledger import today
from runtime.config import DIMENSIONS
from runtime.embedded_redis import start_server
from tests.conftest import TEST_CONFIG
from tests.support import Deployment, Gate, Hold, wait_for


def increment(key: str, **kw: Any) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, **kw}}


@pytest.fixture
def split_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on a private redis-server: the runtime in database 0 (the one this
    test flushes), the tools' state in database 1."""
    server = start_server(tmp_path / "redis", persistent=False)
    dep = Deployment.create(
        name=f"r{uuid.uuid4().hex[:6]}",
        redis_url=f"{server.url.rsplit('/', 1)[0]}/0",
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp_path,
        extra_env={"AGENTRT_TOOL_REDIS_URL": f"{server.url.rsplit('/', 1)[0]}/1"},
    )
    try:
        yield dep
    finally:
        dep.close()
        server.stop()


def lose_runtime_redis(dep: Deployment) -> int:
    """FLUSHDB the runtime's database (ledger, leases, scheduler queues, Celery's queue
    list, unacked messages and bindings) and SCRIPT FLUSH, as a restart without
    persistence would."""
    r = dep.svc.redis
    lost = int(r.dbsize())
    r.flushdb()
    r.script_flush()
    return lost


def assert_ledger_matches_sql(dep: Deployment, tenants: list[str]) -> None:
    svc = dep.svc
    for tenant in tenants:
        balance = svc.ledger.balance(svc.keys.budget_tenant_day(tenant, today()))
        spend = svc.store.spend(tenant_id=tenant, day=today())
        for dim in DIMENSIONS:
            assert balance[dim]["used"] == spend[dim], (tenant, dim, balance[dim], spend[dim])
            assert balance[dim]["reserved"] == 0, (tenant, dim, balance[dim])


@pytest.mark.slow
def test_runs_finish_after_redis_data_loss_and_recover(split_deployment: Deployment) -> None:
    dep, svc = split_deployment, split_deployment.svc
    for _ in range(2):
        dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    tenants = ["t1", "t2"]
    runs = [
        dep.submit_script(
            [
                increment(key, delay_ms=40),
                increment(key, after_ms=20),
                {"type": "reply", "text": "ok"},
            ],
            tenant=tenants[i % 2],
        )
        for i in range(80)
    ]
    run_ids = [r.run_id for r in runs]

    # Given a workload under way
    wait_for(
        lambda: sum(s == "succeeded" for s in svc.store.statuses(run_ids).values()) >= 15,
        timeout=60,
        message="a part of the workload done",
    )
    # When the runtime's Redis loses everything, and the operator runs recover
    lost = lose_runtime_redis(dep)
    assert lost > 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli.main",
            "recover",
            "--yes",
            "--inflight-wait",
            "3",
            "--actor",
            "test:recover",
            "--json",
        ],
        env={**os.environ, **dep.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["runs_requeued"] > 0 and report["ledger_scopes"] > 0

    # Then every run finishes, each increment happened once, and the ledger equals SQL
    done = dep.wait_all(run_ids, timeout=150)
    statuses = {v.status.value for v in done.values()}
    assert statuses == {"succeeded"}, {v.stop_reason for v in done.values()}
    effects = [
        e for e in svc.store.side_effects(tool="counter.increment") if e["run_id"] in run_ids
    ]
    succeeded = [e for e in effects if e["status"] == "succeeded"]
    assert len(succeeded) == 2 * len(run_ids)
    assert len({e["idempotency_key"] for e in succeeded}) == len(succeeded)
    assert dep.counter(key) == len(succeeded)
    wait_for(
        lambda: not svc.redis.zcard(svc.keys.budget_holds_index()),
        timeout=60,
        message="every hold settled",
    )
    assert_ledger_matches_sql(dep, tenants)
    audit = svc.dead_letters.store.audit_log(10)
    assert any(a["action"] == "recover" and a["actor"] == "test:recover" for a in audit)
    assert sum(any(e.kind == "recovered" for e in svc.trace(r)) for r in run_ids) == len(
        report["runs"]
    )


def test_recover_warns_when_no_worker_is_alive_to_take_the_runs(
    split_deployment: Deployment,
) -> None:
    dep = split_deployment
    run = dep.submit_script([{"type": "reply", "text": "ok"}])
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "recover", "--yes", "--inflight-wait", "0",
         "--json"],
        env={**os.environ, **dep.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert run.run_id in report["runs"] and report["live_worker_processes"] == 0
    assert "no worker is alive to take the runs queued again" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["read", "write"])
def test_a_call_that_ran_in_a_step_lost_with_redis_stays_charged_first(
    split_deployment: Deployment, kind: str
) -> None:
    """Every worker dies inside a tool call and Redis loses the step's hold with them: SQL
    still knows the call was decided at the run's current step, so recovery holds it again.
    Its step's next copy runs on that hold, and another run of the tenant (1 tool call a
    day) is refused: the tool ran for one run only, and a write's effect happened once."""
    dep, svc = split_deployment, split_deployment.svc
    if kind == "read":  # probe.gate: a read held inside its call
        held, other = Gate(dep), Gate(dep)
        held.close_after(0)
        route, inside, release = "r.open", held.held, held.open
    else:  # probe.held_count: a journaled write counted once per key, held after counting
        held, other = Hold(dep), Hold(dep)
        held.on()
        route, inside, release = "r.held", held.entered, held.off

    def script(side: Gate | Hold) -> list[dict[str, Any]]:
        step = side.step() if isinstance(side, Gate) else side.step("probe.held_count")
        return [step, {"type": "reply", "text": "ok"}]

    worker = dep.start_worker(concurrency=1)
    first = dep.submit_script(script(held), tenant="tdask", route=route).run_id
    # Given a call inside its tool (decided, reserved, running) when its worker is killed
    wait_for(lambda: inside() == 1, timeout=60, message="the call inside the tool")
    worker.kill_all()
    # and Redis loses its data with it, and recovery runs
    lose_runtime_redis(dep)
    report = svc.recovery.recover("ops:test", inflight_wait_s=0)
    assert report.recovered_holds == 1 and report.runs_requeued == 1
    hold = svc.ledger.hold(first, 0)
    assert hold is not None and hold.tool_executions == 1 and hold.amounts["tool_calls"] == 1
    tenant_day = svc.ledger.balance(svc.keys.budget_tenant_day("tdask", today()))
    assert tenant_day["tool_calls"] == {"used": 0, "reserved": 1}
    # When another run of the tenant comes, and the steps run again
    release()
    second = dep.submit_script(script(other), tenant="tdask", route=route).run_id
    dep.start_worker(concurrency=2)
    done = dep.wait_all([first, second], timeout=90)
    # Then the recovered call's run completes on its hold, and the other one is refused
    assert done[first].status.value == "succeeded", done[first]
    assert done[second].stop_reason == "budget_exhausted:tool_calls", done[second]
    if isinstance(held, Gate):
        assert set(held.order()) == {first} and not other.started()
    else:
        assert held.count() == 1 and not other.entered()
        (effect,) = svc.store.side_effects(tool="probe.held_count")
        assert effect["run_id"] == first and effect["status"] == "succeeded", effect
    # the call is charged once as a tool call and once as a retry (it may have run twice)
    spend = svc.store.spend(tenant_id="tdask", day=today())
    assert spend["tool_calls"] == 1 and spend["retries"] == 1, spend
    wait_for(lambda: not svc.redis.zcard(svc.keys.budget_holds_index()), timeout=60,
             message="every hold settled")  # fmt: skip
    assert_ledger_matches_sql(dep, ["tdask"])
