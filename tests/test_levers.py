"""Operator levers (``agentrt ops``, ``rt.levers``) with real workers, Redis and SQL.

Each lever is pulled while runs are inside a step (``probe.held`` keeps them there until
the test lets go, ``Hold`` in tests/support.py), so what is asserted is the step after the
flip: counted by the tools themselves and by the steps SQL recorded, never by time.
Levers are global to a deployment: every test turns its levers off again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.embedded_redis import start_server
from runtime.levers import Lever
from runtime.scheduling import view
from runtime.scheduling.scheduler import Ops, item_of
from runtime.step.state import Delivery
from tests.conftest import TEST_CONFIG
from tests.support import Deployment, Gate, Hold, wait_for

ROUTE = "r.levers"
ACTOR = "ops:tester"
REPLY = {"type": "reply", "text": "ok"}


def work(key: str, tool: str = "probe.work", gate: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"key": key, "ms": 0}
    if gate is not None:
        args["gate"] = gate
    return {"type": "tool_call", "tool": tool, "args": args}


def calls(dep: Deployment, key: str) -> int:
    """Executions of probe.work/probe.lever/probe.alt with ``key``, counted inside."""
    return len(dep.svc.tool_redis.lrange(dep.svc.keys.demo(f"probe:{key}:starts"), 0, -1))


def kinds(dep: Deployment, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e.data | {"step": e.step} for e in dep.svc.trace(run_id) if e.kind == kind]


def last_audit(dep: Deployment) -> dict[str, Any]:
    return dep.svc.levers.log(limit=1)[0]


def inside(dep: Deployment, hold: Hold, n: int) -> None:
    wait_for(lambda: hold.entered() >= n, timeout=60, message=f"{n} calls inside probe.held")


def held_runs(dep: Deployment, n: int, calls: int = 2) -> tuple[list[Hold], list[str]]:
    """``n`` runs on the levers route, each ``calls`` probe.held calls then a reply, each
    with a hold of its own (probe.held locks its key), held inside their first call."""
    holds = [Hold(dep) for _ in range(n)]
    runs = []
    for hold in holds:
        hold.on()
        script = [hold.step() for _ in range(calls)] + [REPLY]
        runs.append(dep.submit_script(script, route=ROUTE).run_id)
    for hold in holds:
        inside(dep, hold, 1)
    return holds, runs


def release(holds: list[Hold]) -> None:
    for hold in holds:
        hold.off()


def step_done(dep: Deployment, run_id: str, step_no: int) -> bool:
    return any(s["step_no"] == step_no for s in dep.svc.store.steps(run_id))


def test_disable_tool_refuses_at_the_next_step_and_fallback_takes_over(
    deployment: Deployment,
) -> None:
    dep = deployment
    holds, runs = held_runs(dep, 2)  # both worker processes are inside a first call
    try:
        change = dep.svc.levers.disable_tool("probe.held", actor=ACTOR, reason="incident 42")
        assert change.changed and change.affected_count >= 2
        assert set(runs) <= {r["run_id"] for r in change.affected}
        release(holds)
        done = dep.wait_all(runs)
        for run_id in runs:
            assert done[run_id].stop_reason == "policy_denied:tool_disabled"
            assert [s["step_no"] for s in dep.svc.store.steps(run_id)] == [0, 1]
        assert [h.entered() for h in holds] == [1, 1]  # never executed after the flip
        audit = last_audit(dep)
        assert (audit["actor"], audit["lever"], audit["target"]) == (
            ACTOR,
            "tool_disabled",
            "probe.held",
        )
        assert (audit["old"], audit["new"], audit["reason"], audit["dry_run"]) == (
            None,
            True,
            "incident 42",
            False,
        )
        # a disabled tool whose manifest names a fallback: the call goes to the fallback
        key = f"fb{uuid.uuid4().hex[:6]}"
        dep.svc.levers.disable_tool("probe.lever", actor=ACTOR)
        run = dep.submit_script([work(key, "probe.lever"), REPLY], route=ROUTE)
        assert dep.wait_all([run.run_id])[run.run_id].status == "succeeded"
        assert (calls(dep, key), calls(dep, f"{key}-alt")) == (0, 1)
        assert kinds(dep, run.run_id, "tool_fallback")[0]["tool"] == "probe.alt"
    finally:
        release(holds)
        dep.svc.levers.enable_tool("probe.held", actor=ACTOR)
        dep.svc.levers.enable_tool("probe.lever", actor=ACTOR)
    # enabled again: the tool runs
    run = dep.submit_script([holds[0].step(), REPLY], route=ROUTE)
    assert dep.wait_all([run.run_id])[run.run_id].status == "succeeded"
    assert holds[0].entered() == 2


def test_pin_model_and_force_approval_act_at_the_next_step(deployment: Deployment) -> None:
    dep, hold = deployment, Hold(deployment)
    key = f"ap{uuid.uuid4().hex[:6]}"
    hold.on()
    run = dep.submit_script([hold.step(), work(key), REPLY], route=ROUTE)
    try:
        inside(dep, hold, 1)
        dep.svc.levers.pin_model(ROUTE, "scripted-rated", actor=ACTOR)
        dep.svc.levers.force_approval(tool="probe.work", actor=ACTOR, reason="risky")
        hold.off()
        done = dep.wait_all([run.run_id])[run.run_id]
        assert done.status == "waiting"
        steps = dep.svc.store.steps(run.run_id)
        # step 0 asked the route's model; step 1 the pinned one, and its trace says so
        assert [s["model_version"] for s in steps] == ["scripted-test", "scripted-rated"]
        assert kinds(dep, run.run_id, "model_pinned")[0]["model"] == "scripted-rated"
        asked = kinds(dep, run.run_id, "approval_requested")
        assert [(a["tool"], a["rule"]) for a in asked] == [
            ("probe.work", "operator_forced_approval")
        ]
        assert calls(dep, key) == 0
    finally:
        hold.off()
        dep.svc.levers.unpin_model(ROUTE, actor=ACTOR)
        dep.svc.levers.unforce_approval(tool="probe.work", actor=ACTOR)
        dep.svc.cancel(run.run_id, actor=ACTOR)
    audit = dep.svc.levers.log(limit=4)
    assert [(a["lever"], a["new"]) for a in audit] == [
        ("approval_forced_tool", None),
        ("model_pinned", None),
        ("approval_forced_tool", True),
        ("model_pinned", "scripted-rated"),
    ]


def test_force_approval_for_a_route_holds_every_allowed_call(deployment: Deployment) -> None:
    dep = deployment
    key = f"fr{uuid.uuid4().hex[:6]}"
    dep.svc.levers.force_approval(route=ROUTE, actor=ACTOR)
    run: str | None = None
    try:
        run = dep.submit_script([work(key), REPLY], route=ROUTE).run_id
        assert dep.wait_all([run])[run].status == "waiting"
        asked = kinds(dep, run, "approval_requested")
        assert [(a["tool"], a["rule"]) for a in asked] == [
            ("probe.work", "operator_forced_approval")
        ]
        assert calls(dep, key) == 0
        # lifted: the next run's call runs at once
        dep.svc.levers.unforce_approval(route=ROUTE, actor=ACTOR)
        other = dep.submit_script([work(key), REPLY], route=ROUTE).run_id
        assert dep.wait_all([other])[other].status == "succeeded" and calls(dep, key) == 1
    finally:
        dep.svc.levers.unforce_approval(route=ROUTE, actor=ACTOR)
        if run is not None:
            dep.svc.cancel(run, actor=ACTOR)


def test_stop_route_drain_lets_running_runs_finish_stop_ends_them(
    deployment: Deployment,
) -> None:
    dep = deployment
    holds: list[Hold] = []
    try:
        for mode, expected in (("drain", "completed"), ("stop", "cancelled:route_stopped")):
            holds, runs = held_runs(dep, 2)
            dep.svc.levers.stop_route(ROUTE, mode, actor=ACTOR)
            refused = dep.submit_script([REPLY], route=ROUTE)
            assert refused.stop_reason == "refused:route_stopped"
            release(holds)
            done = dep.wait_all(runs)
            assert [done[r].stop_reason for r in runs] == [expected, expected]
            # drain: the runs went on to their end; stop: the step after the flip stopped
            steps = {len(dep.svc.store.steps(r)) for r in runs}
            assert steps == ({3} if mode == "drain" else {2})
            dep.svc.levers.start_route(ROUTE, actor=ACTOR)
    finally:
        release(holds)
        dep.svc.levers.start_route(ROUTE, actor=ACTOR)
    ok = dep.submit_script([REPLY], route=ROUTE).run_id
    assert dep.wait_all([ok])[ok].status == "succeeded"


@pytest.mark.parametrize("lever", ["drain_route", "drain_tenant", "pause_tenant"])
def test_drain_and_pause_dispatch_nothing_new_until_undone(
    deployment: Deployment, lever: str
) -> None:
    dep, hold = deployment, Hold(deployment)
    tenant = "t2"
    levers = dep.svc.levers
    on, off = {
        "drain_route": (lambda: levers.drain(route=ROUTE, actor=ACTOR),
                        lambda: levers.undrain(route=ROUTE, actor=ACTOR)),
        "drain_tenant": (lambda: levers.drain(tenant=tenant, actor=ACTOR),
                         lambda: levers.undrain(tenant=tenant, actor=ACTOR)),
        "pause_tenant": (lambda: levers.pause_tenant(tenant, actor=ACTOR),
                         lambda: levers.resume_tenant(tenant, actor=ACTOR)),
    }[lever]  # fmt: skip
    hold.on()
    first = dep.submit_script([hold.step(), REPLY], route=ROUTE, tenant=tenant).run_id
    try:
        inside(dep, hold, 1)
        on()
        # admitted and queued, not refused
        second = dep.submit_script([REPLY], route=ROUTE, tenant=tenant)
        assert second.status == "queued"
        hold.off()
        # the step in flight finishes; the next ones wait in the ready queue
        wait_for(lambda: step_done(dep, first, 0), timeout=60, message="the held step done")
        # (the route's own count: the shared deployment may hold other tests' steps)
        wait_for(lambda: dep.svc.scheduler.depth(tenant, ROUTE)[1] == 2, timeout=30,
                 message="both next steps queued")  # fmt: skip
        sent = dep.svc.dispatch.schedule(Ops().dispatch(10)).dispatched
        assert [i for i in sent if i.route == ROUTE] == []
        assert dep.svc.store.statuses([first, second.run_id]) == {
            first: "running",
            second.run_id: "queued",
        }
        off()
        done = dep.wait_all([first, second.run_id])
        assert {v.status for v in done.values()} == {"succeeded"}
    finally:
        hold.off()
        off()


def test_concurrency_changed_live_binds_the_dispatcher(deployment: Deployment) -> None:
    dep, gate = deployment, Gate(deployment)
    key = f"cc{uuid.uuid4().hex[:6]}"
    gate.close_after(0)  # every call waits inside the tool until the gate opens
    try:
        dep.svc.levers.set_concurrency(ROUTE, 1, actor=ACTOR)
        runs = [dep.submit_script([work(key, gate=gate.key), REPLY], route=ROUTE).run_id
                for _ in range(2)]  # fmt: skip
        wait_for(lambda: gate.held() == 1, timeout=60, message="one call inside")
        # the route is at its live limit: the dispatcher itself sends nothing more
        sent = dep.svc.dispatch.schedule(Ops().dispatch(10)).dispatched
        assert [i for i in sent if i.route == ROUTE] == []
        assert sorted(dep.svc.store.statuses(runs).values()) == ["queued", "running"]
        # what `agentrt queues` shows is the limit the dispatcher enforces now
        shown = view.read(dep.svc.redis, dep.svc.keys, dep.svc.config)
        assert {r.route: r.limit for r in shown.routes}[ROUTE] == 1
        dep.svc.levers.set_concurrency(ROUTE, 2, actor=ACTOR)  # raised: the second goes
        wait_for(lambda: gate.held() == 2, timeout=60, message="two calls inside")
        gate.open()
        done = dep.wait_all(runs)
        assert {v.status for v in done.values()} == {"succeeded"}
        max_inside = int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"probe:{key}:max")) or 0)
        assert max_inside == 2
    finally:
        gate.open()
        dep.svc.levers.set_concurrency(ROUTE, None, actor=ACTOR)
    assert last_audit(dep)["lever"] == "route_concurrency"


def test_dry_run_changes_nothing_and_unknown_targets_are_named(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployment
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    holds, (run,) = held_runs(dep, 1)
    try:
        result = CliRunner().invoke(
            app, ["ops", "disable-tool", "probe.held", "--dry-run", "--json", "--reason", "look"]
        )
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert shown["dry_run"] and shown["new"] is True and shown["affected_count"] >= 1
        assert run in {r["run_id"] for r in shown["affected"]}
        assert dep.svc.redis.get(dep.svc.keys.tool_disabled("probe.held")) is None
        assert ("tool_disabled", "probe.held") not in {
            (r["lever"], r["target"]) for r in dep.svc.levers.status()
        }
        audit = last_audit(dep)
        assert (audit["dry_run"], audit["reason"], audit["lever"]) == (
            True,
            "look",
            "tool_disabled",
        )
        # for people: the same preview as a table of the runs
        wide = {"COLUMNS": "250"}
        table = CliRunner().invoke(app, ["ops", "drain", "--route", ROUTE, "--dry-run"], env=wide)
        assert table.exit_code == 0 and "dry run, nothing changed" in table.stdout, table.output
        assert run in table.stdout and ROUTE in table.stdout
        assert not dep.svc.redis.sismember(dep.svc.keys.scheduler().drained_routes, ROUTE)
        logged = CliRunner().invoke(app, ["ops", "log", "--limit", "2"], env=wide)
        assert logged.exit_code == 0 and "route_drained" in logged.stdout, logged.output
        assert CliRunner().invoke(app, ["ops", "status"], env=wide).exit_code == 0
        release(holds)
        assert dep.wait_all([run])[run].status == "succeeded"
        assert holds[0].entered() == 2
    finally:
        release(holds)
    for args, named in (
        (["disable-tool", "nope"], "unknown tool 'nope'"),
        (["pin-model", ROUTE, "gpt-x"], "unknown model 'gpt-x'"),
        (["drain", "--tenant", "nobody"], "unknown tenant 'nobody'"),
        (["stop-route", "r.none", "--mode", "stop"], "unknown route 'r.none'"),
        (["drain", "--route", ROUTE, "--tenant", "t1"], "exactly one of"),
        (["concurrency", ROUTE, "1000001"], "N: '1000001' is not a concurrency limit"),
        (["concurrency", ROUTE, "-1"], "No such option"),
        (["concurrency", ROUTE, "lots"], "N: 'lots' is not a concurrency limit"),
    ):
        result = CliRunner().invoke(app, ["ops", *args], env={"COLUMNS": "400"})
        assert result.exit_code == 2, (args, result.output)
        assert named in result.output, (args, result.output)
    known = CliRunner().invoke(app, ["ops", "disable-tool", "nope"], env={"COLUMNS": "400"})
    assert "probe.held" in known.output  # the error lists what is known
    listed = CliRunner().invoke(app, ["ops", "log", "--json", "--limit", "1"])
    assert json.loads(listed.stdout)[0]["dry_run"] is True


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on a Redis server of its own (the test flushes it), no worker yet."""
    server = start_server(tmp_path / "redis", persistent=False)
    dep = Deployment.create(
        name=f"v{uuid.uuid4().hex[:6]}",
        redis_url=server.url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp_path,
    )
    try:
        yield dep
    finally:
        # this process ran a step on that server: its heartbeat thread goes before it does
        dep.svc.leases.liveness.stop()
        dep.close()
        server.stop()


def test_levers_come_back_from_sql_after_redis_loss(own_redis: Deployment) -> None:
    dep = own_redis
    svc, keys, sched = own_redis.svc, own_redis.svc.keys, own_redis.svc.keys.scheduler()
    key = f"rl{uuid.uuid4().hex[:6]}"
    svc.levers.disable_tool("probe.work", actor=ACTOR)
    svc.levers.pin_model(ROUTE, "scripted-rated", actor=ACTOR)
    svc.levers.pause_tenant("t3", actor=ACTOR)
    svc.levers.set_concurrency(ROUTE, 3, actor=ACTOR)
    svc.levers.stop_route("r.basic", "drain", actor=ACTOR)
    run = dep.submit_script([work(key), REPLY], route=ROUTE)
    svc.redis.flushall()
    svc.redis.script_flush()
    # before recovery: the state is unknown, and a delivered step does nothing
    row = svc.store.get_run(run.run_id)
    assert svc.steps.run(item_of(row, 0)).outcome == Delivery.STATE_UNKNOWN.value
    assert svc.store.steps(run.run_id) == [] and calls(dep, key) == 0
    # admission: a stopped route's switch is gone with Redis, the SQL record still refuses
    refused = dep.submit_script([REPLY], route="r.basic")
    assert refused.stop_reason == "refused:route_stopped"
    report = svc.recovery.recover(ACTOR, inflight_wait_s=0)
    assert report.levers == 5
    assert svc.redis.get(keys.tool_disabled("probe.work")) is not None
    assert svc.redis.get(keys.pinned_model(ROUTE)) == b"scripted-rated"
    assert svc.redis.get(keys.route_stopped("r.basic")) == b"drain"
    assert svc.redis.sismember(sched.paused_tenants, "t3")
    assert svc.redis.hget(sched.live_route_limit, ROUTE) == b"3"
    assert {r["lever"] for r in svc.levers.status()} == {
        str(x)
        for x in (
            Lever.TOOL_DISABLED,
            Lever.MODEL_PINNED,
            Lever.TENANT_PAUSED,
            Lever.ROUTE_CONCURRENCY,
            Lever.ROUTE_STOPPED,
        )
    }
    # a worker started now sees them: the queued run's call is refused, by the pinned model
    dep.start_worker(concurrency=1)
    done = dep.wait_all([run.run_id])[run.run_id]
    assert done.stop_reason == "policy_denied:tool_disabled" and calls(dep, key) == 0
    assert [s["model_version"] for s in svc.store.steps(run.run_id)] == ["scripted-rated"]
