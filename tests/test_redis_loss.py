"""Redis loses its state mid-workload; the runtime fails closed and rebuilds it by itself.

The runtime's Redis is a private server this test kills, flushes or restarts from an old
snapshot; the tools' state (counters, their effect journals, the probes' in-flight counts)
lives in a second server, as it would in production. Between the loss and the rebuild
nothing may reserve, dispatch or execute: afterwards every run is terminal, each increment
happened once, the route's concurrency limit held (measured inside the tool), the tenant's
daily tool-call limit held (executions counted inside the tools), and the ledger equals
the SQL spend records. No operator runs `agentrt recover`: the workers do it.
"""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.budgets.ledger import today
from runtime.config import DIMENSIONS
from runtime.embedded_redis import EmbeddedRedis, start_server
from tests.conftest import TEST_CONFIG
from tests.support import Deployment, wait_for

ROUTE_LIMIT = 2  # r.limited's concurrency_limit
TENANT_TOOL_CALLS = 20  # tday's daily tool_calls


@dataclass
class RuntimeRedis:
    """The runtime's own redis-server, which the test may kill and start again."""

    workdir: Path
    port: int
    server: EmbeddedRedis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def start(self, snapshot: Path | None = None) -> None:
        """Start again on the same port: empty, or loading ``snapshot`` (an old RDB)."""
        self.workdir = self.workdir.parent / f"{self.workdir.name}-again"
        self.workdir.mkdir()
        if snapshot is not None:
            shutil.copy(snapshot, self.workdir / "dump.rdb")
        self.server = start_server(self.workdir, persistent=False, port=self.port)


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[tuple[Deployment, RuntimeRedis]]:
    runtime = start_server(tmp_path / "runtime-redis", persistent=False)
    port = int(runtime.url.rsplit(":", 1)[1].split("/")[0])
    tools = start_server(tmp_path / "tool-redis", persistent=False)
    rr = RuntimeRedis(tmp_path / "runtime-redis", port, runtime)
    dep = Deployment.create(
        name=f"l{uuid.uuid4().hex[:6]}",
        redis_url=rr.url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp_path,
        extra_env={"AGENTRT_TOOL_REDIS_URL": tools.url},
    )
    try:
        yield dep, rr
    finally:
        dep.close()
        rr.server.stop()
        tools.stop()


def workload(dep: Deployment, probe_key: str, counter_key: str) -> list[str]:
    """Runs on r.limited (2 at once) for tenant tday (20 tool calls a day): each probes
    (counted in and out inside the tool) and then increments a journaled counter."""
    script = [
        {"type": "tool_call", "tool": "probe.work", "args": {"key": probe_key, "ms": 60}},
        {"type": "tool_call", "tool": "counter.increment", "args": {"key": counter_key}},
        {"type": "reply", "text": "ok"},
    ]
    return [dep.submit_script(script, tenant="tday", route="r.limited").run_id for _ in range(16)]


def tool_calls_made(dep: Deployment, probe_key: str, counter_key: str) -> int:
    """Tool calls the tools saw, each once: the probe's distinct calls (a read executed again
    after its worker died is the same call, charged as a retry) and the journaled counter's
    increments (exactly once each)."""
    calls = dep.svc.tool_redis.scard(dep.svc.keys.demo(f"probe:{probe_key}:calls"))
    return int(calls) + dep.counter(counter_key)


def spend_report(dep: Deployment, made: int, days: set[str]) -> str:
    """What a reader of a failure needs: the tools' count, SQL's spend and the ledger per
    day, and every recovery the workers ran."""
    svc = dep.svc
    lines = [f"tool calls the tools saw: {made}; days: {sorted(days)}"]
    for day in sorted(days):
        ledger = svc.ledger.balance(svc.keys.budget_tenant_day("tday", day))["tool_calls"]
        spend = svc.store.spend(tenant_id="tday", day=day)["tool_calls"]
        lines.append(f"{day}: SQL tool_calls {spend}, ledger {ledger}")
    for worker in dep.workers:
        lines += [f"{worker.name}: {line}" for line in worker.log().splitlines()
                  if "recovery" in line or "rebuil" in line or "state" in line]  # fmt: skip
    return "\n".join(lines)


def assert_ledger_matches_sql(dep: Deployment) -> None:
    svc = dep.svc
    balance = svc.ledger.balance(svc.keys.budget_tenant_day("tday", today()))
    spend = svc.store.spend(tenant_id="tday", day=today())
    for dim in DIMENSIONS:
        assert balance[dim]["used"] == spend[dim], (dim, balance[dim], spend[dim])


def lose(kind: str, dep: Deployment, rr: RuntimeRedis, snapshot: Path) -> None:
    if kind == "flushall":
        dep.svc.redis.flushall()
        dep.svc.redis.script_flush()
    elif kind == "restart_empty":
        rr.kill()
        rr.start()
    else:  # restart from the snapshot taken early in the workload
        rr.kill()
        rr.start(snapshot)


@pytest.mark.slow
@pytest.mark.parametrize("supervised", [False, True], ids=["workers_alive", "supervisor"])
@pytest.mark.parametrize("kind", ["restart_empty", "flushall", "old_snapshot"])
def test_a_lost_redis_state_is_rebuilt_and_no_limit_is_exceeded(
    lossy: tuple[Deployment, RuntimeRedis], kind: str, supervised: bool, tmp_path: Path
) -> None:
    dep, rr = lossy
    for _ in range(2):
        dep.start_worker(concurrency=2)
    probe_key, counter_key = f"p{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    # an old snapshot: the state as it was before any work (ledger empty, queues empty)
    dep.svc.redis.save()
    snapshot = tmp_path / "old.rdb"
    shutil.copy(rr.workdir / "dump.rdb", snapshot)
    first_day = today()
    run_ids = workload(dep, probe_key, counter_key)
    # Given a workload under way
    wait_for(lambda: dep.counter(counter_key) >= 3, timeout=60, message="work under way")
    # When the runtime's Redis loses its state (and, with a supervisor, every worker dies
    # with it and is started again once Redis is back)
    if supervised:
        for worker in dep.workers:
            worker.kill_all()
    lose(kind, dep, rr, snapshot)
    if supervised:
        for _ in range(2):
            dep.start_worker(concurrency=2)
    # Then every run ends without an operator
    done = dep.wait_all(run_ids, timeout=240)
    statuses: dict[str, Any] = {r: v.status.value for r, v in done.items()}
    assert set(statuses.values()) <= {"succeeded", "failed"}, done
    reasons = {v.stop_reason for v in done.values()}
    assert reasons <= {"completed", "budget_exhausted:tool_calls"}, reasons
    # the route's limit held (measured inside the tool), the tenant's daily tool calls held
    # (counted inside the tools), and each increment happened once
    assert int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"probe:{probe_key}:max")) or 0) <= (
        ROUTE_LIMIT
    )
    # (the limit is per UTC day: a workload that crossed midnight had a fresh day's worth)
    days = {first_day, today()}
    made = tool_calls_made(dep, probe_key, counter_key)
    assert made <= TENANT_TOOL_CALLS * len(days), spend_report(dep, made, days)
    effects = [e for e in dep.svc.store.side_effects(tool="counter.increment")
               if e["run_id"] in run_ids]  # fmt: skip
    succeeded = [e for e in effects if e["status"] == "succeeded"]
    assert dep.counter(counter_key) == len(succeeded)
    assert {e["status"] for e in effects} <= {"succeeded"}
    # the state was rebuilt (by a worker, not an operator; a fast workload may have ended
    # before any step met the unknown state: a worker's pump rebuilds it within seconds)
    # and the ledger equals SQL
    wait_for(lambda: dep.svc.markers.known(dep.svc.generation.refresh()), timeout=60,
             message="the state rebuilt by a worker")  # fmt: skip
    assert dep.svc.generation.refresh() > 1
    wait_for(lambda: not dep.svc.redis.zcard(dep.svc.keys.budget_holds_index()), timeout=60,
             message="every hold settled")  # fmt: skip
    assert_ledger_matches_sql(dep)
    # the workers survived the broker going away (or, supervised, were started again)
    assert all(w.proc.poll() is None for w in dep.workers[-2:])
    assert any("rebuilds it from SQL" in w.log() for w in dep.workers)
