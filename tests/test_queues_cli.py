"""``agentrt queues``: the operator view of the scheduler, against real Redis and workers.

Commands run in-process through Typer's ``CliRunner`` with the deployment's ``AGENTRT_*``
variables, as in tests/test_cli.py; the workers are real ``celery worker`` processes.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from runtime.cli.main import app
from tests.support import ROOT, Deployment, Gate, wait_for

REPLY = {"type": "reply", "text": "ok"}


def probe(ms: int, tool: str = "probe.work", gate: Gate | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"key": f"q{uuid.uuid4().hex[:8]}", "ms": ms}
    if gate is not None:
        args["gate"] = gate.key
    return {"type": "tool_call", "tool": tool, "args": args}


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "140"})


def queues(*args: str) -> dict[str, Any]:
    result = cli("queues", "--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


def use_env(dep: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    return dep


@pytest.fixture
def fresh_env(fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A private deployment with no worker yet, its settings in the environment."""
    return use_env(fresh_deployment, monkeypatch)


def test_depth_per_tenant_and_priority_then_drained_by_a_worker(fresh_env: Deployment) -> None:
    dep = fresh_env
    # Given runs of two tenants at different priorities and no worker to take them
    runs = [dep.submit_script([REPLY], tenant="t1", priority="high") for _ in range(2)]
    runs.append(dep.submit_script([REPLY], tenant="t2", priority="low"))

    view = queues()
    assert view["capacity"] == {"processes": 0, "dispatchLimit": 0, "inFlight": 0, "workers": []}
    assert view["queued"] == 3 and view["delayed"] == 0
    tenants = by(view["tenants"], "tenant")
    assert set(tenants) == {"t1", "t2"}
    assert tenants["t1"]["byPriority"] == {"critical": 0, "high": 2, "normal": 0, "low": 0}
    assert tenants["t2"]["byPriority"] == {"critical": 0, "high": 0, "normal": 0, "low": 1}
    assert (tenants["t1"]["ready"], tenants["t1"]["delayed"], tenants["t1"]["inFlight"]) == (
        2,
        0,
        0,
    )
    basic = by(view["routes"], "route")["r.basic"]
    assert (basic["queued"], basic["inFlight"], basic["limit"]) == (3, 0, 10)
    assert view["leases"] == {"total": 0, "items": []}

    # --tenant narrows the tenant rows; an unknown tenant is a bad argument (exit 2)
    only = queues("--tenant", "t2")
    assert [t["tenant"] for t in only["tenants"]] == ["t2"] and only["queued"] == 1
    missing = cli("queues", "--tenant", "nobody")
    assert missing.exit_code == 2 and "unknown tenant 'nobody'" in missing.stderr

    # When a worker (2 processes) reports in and drains the queues
    dep.start_worker(concurrency=2)
    done = dep.wait_all([r.run_id for r in runs], timeout=60)
    assert {v.status.value for v in done.values()} == {"succeeded"}

    # Then its capacity shows and nothing is queued or in flight
    def drained() -> dict[str, Any] | None:
        view = queues()
        capacity = view["capacity"]
        return view if capacity["processes"] == 2 and capacity["inFlight"] == 0 else None

    view = wait_for(drained, timeout=120, message="the worker's capacity and an empty scheduler")
    assert view["queued"] == 0 and view["tenants"] == [] and view["parked"] == []
    # 2 processes + their headroom (none by default: chaining keeps processes busy)
    assert view["capacity"]["dispatchLimit"] == 2
    (worker,) = view["capacity"]["workers"]
    assert worker["processes"] == 2 and worker["expiresInS"] > 0


def test_in_flight_against_route_limit_tenant_cap_bulkhead_and_leases(
    fresh_env: Deployment,
) -> None:
    dep = fresh_env
    # one process more than can run: the dispatcher (no headroom by default) has room to
    # look past the full route and the capped tenant, and parks them
    dep.start_worker(concurrency=4)
    # every probe stays in its call until the gate opens: the view below is read while the
    # state holds still, not within a window the machine's speed decides
    gate = Gate(dep)
    gate.close_after(0)
    # r.limited allows 2 steps at once; tenant tcap 1; tool probe.bulk 1 call at once
    runs = [dep.submit_script([probe(10, gate=gate), REPLY], route="r.limited") for _ in range(3)]
    runs += [
        dep.submit_script([probe(10, "probe.bulk", gate), REPLY], route="r.open", tenant="tcap")
        for _ in range(2)
    ]

    def busy() -> dict[str, Any] | None:
        view = queues("--limit", "2")
        tenants = by(view["tenants"], "tenant")
        limited = by(view["routes"], "route")["r.limited"]
        holders = by(view["bulkheads"], "tool")["probe.bulk"]["holders"]
        if (
            limited["inFlight"] == 2
            and tenants.get("t1", {}).get("parked") == "route:r.limited"
            and tenants.get("tcap", {}).get("parked") == "tenant_cap"
            and holders == 1
            and gate.held() == 3
        ):
            return view
        return None

    view = wait_for(busy, timeout=120, message="a full route, a capped tenant, a full bulkhead")
    limited = by(view["routes"], "route")["r.limited"]
    assert limited == {
        "route": "r.limited",
        "inFlight": 2,
        "limit": 2,
        "full": True,
        "queued": 1,
        "maxQueued": None,
        "onQueueFull": "refuse",
        "parkedTenants": ["t1"],
    }
    tcap = by(view["tenants"], "tenant")["tcap"]
    assert (tcap["inFlight"], tcap["maxConcurrency"], tcap["queued"]) == (1, 1, 1)
    assert by(view["parked"], "tenant") == {
        "t1": {"tenant": "t1", "waitingFor": "route:r.limited"},
        "tcap": {"tenant": "tcap", "waitingFor": "tenant_cap"},
    }
    # leases: 3 in flight, 2 listed (--limit), soonest expiry first, each a step of ours
    assert view["capacity"]["inFlight"] == 3 and view["leases"]["total"] == 3
    items = view["leases"]["items"]
    assert len(items) == 2
    ours = {r.run_id for r in runs}
    assert all(i["runId"] in ours and i["step"] == 0 and i["expiresInS"] > 0 for i in items)
    assert items[0]["expiresInS"] <= items[1]["expiresInS"]
    assert {(i["tenant"], i["route"]) for i in items} <= {("t1", "r.limited"), ("tcap", "r.open")}
    # --tenant lists only that tenant's leases
    capped = queues("--tenant", "tcap")
    assert [(i["tenant"], i["route"]) for i in capped["leases"]["items"]] == [("tcap", "r.open")]

    # the same state for people
    text = cli("queues")
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert "capacity 4 processes · 1 worker:" in out
    assert "route r.limited" in out and "tenant cap" in out
    assert "leases (3 of 3, soonest expiry first)" in out
    assert "probe.bulk" in out and "r.limited" in out

    gate.open()
    done = dep.wait_all([r.run_id for r in runs], timeout=60)
    assert {v.status.value for v in done.values()} == {"succeeded"}
    view = queues()
    assert view["capacity"]["inFlight"] == 0 and view["parked"] == [] and view["queued"] == 0
    assert by(view["bulkheads"], "tool")["probe.bulk"]["holders"] == 0


@pytest.fixture
def rated_env(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """A deployment whose rated tool and model allow one call a minute (so they throttle
    for the rest of the test); the model's token rate has a burst of a whole minute."""
    data = yaml.safe_load((ROOT / "tests" / "config" / "runtime.yaml").read_text())
    data["tools"]["probe.rated"]["rate_limit"] = {"limit": 1, "period_s": 60}
    data["models"]["scripted-rated"]["requests_rate"] = {"limit": 1, "period_s": 60}
    data["models"]["scripted-rated"]["tokens_rate"] = {"limit": 1000, "period_s": 60, "burst": 1000}
    config = tmp_path / "runtime.yaml"
    config.write_text(yaml.safe_dump(data))
    dep = Deployment.create(
        name=f"r{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=config,
        home=tmp_path,
    )
    try:
        yield use_env(dep, monkeypatch)
    finally:
        dep.close()


def test_rate_limiters_show_when_they_throttle(rated_env: Deployment) -> None:
    dep = rated_env
    names = ["model:scripted-rated:requests", "model:scripted-rated:tokens", "tool:probe.rated"]
    idle = by(queues()["rateLimits"], "name")
    assert sorted(idle) == names
    assert all(not r["throttling"] and r["aheadMs"] == 0 for r in idle.values())
    assert idle["model:scripted-rated:tokens"]["available"] == 1000  # the whole burst
    assert idle["tool:probe.rated"]["limit"] == 1 and idle["tool:probe.rated"]["periodS"] == 60

    dep.start_worker(concurrency=2)
    began = time.monotonic()  # before any limiter is taken from
    # two runs call the rated tool, two use the rated model: one of each gets through
    tool_runs = [dep.submit_script([probe(10, "probe.rated"), REPLY], route="r.open")
                 for _ in range(2)]  # fmt: skip
    # 500 of the 1000 tokens reserved per step are used: the rest is given back
    used = {"type": "reply", "text": "ok", "usage": {"input_tokens": 400, "output_tokens": 100}}
    model_runs = [dep.submit_script([used], route="r.modelrate", tenant="t2") for _ in range(2)]

    def throttled() -> dict[str, Any] | None:
        view = queues()
        rates = by(view["rateLimits"], "name")
        if (
            rates["tool:probe.rated"]["throttling"]
            and rates[names[0]]["throttling"]
            and (view["delayed"] >= 2)
            # the runs that got through have finished their steps
            and view["capacity"]["inFlight"] == 0
        ):
            return view
        return None

    view = wait_for(throttled, timeout=120, message="both limiters throttling, 2 steps delayed")
    # the limiters were taken from since `began`: their schedules were set at most this
    # long ago (however long the machine took), plus clock granularity
    since_ms = (time.monotonic() - began) * 1000 + 50
    rates = by(view["rateLimits"], "name")
    for name in ("tool:probe.rated", "model:scripted-rated:requests"):
        # one call a minute: the schedule runs a minute ahead of the call that got through
        assert 60_000 - since_ms <= rates[name]["aheadMs"] <= 60_000
        assert rates[name]["retryAfterMs"] == rates[name]["aheadMs"]  # burst 1: no tolerance
        assert rates[name]["available"] == 0
    # the run that got through was charged its usage (the reported 400 + 100, each part
    # bounded by what the step reserved: its prompt bound and its output grant); at
    # 1000/min its tokens put the schedule up to 60 ms per token ahead, within the burst
    # (the other run's step was deferred before its model call: it used no tokens)
    charged = sum(
        step["input_tokens"] + step["output_tokens"]
        for run in model_runs
        for step in dep.svc.store.steps(run.run_id)
    )
    assert 0 < charged <= 500
    tokens = rates["model:scripted-rated:tokens"]
    ahead = charged * 60
    assert ahead - since_ms <= tokens["aheadMs"] <= ahead and not tokens["throttling"]
    assert 1000 - charged <= tokens["available"] < 1000  # a step's worst case must wait
    # the deferred steps wait as delayed items, counted in their tenants' queues
    tenants = by(view["tenants"], "tenant")
    assert tenants["t1"]["delayed"] == 1 and tenants["t2"]["delayed"] == 1
    assert tenants["t1"]["ready"] == 0 and tenants["t1"]["inFlight"] == 0
    assert view["capacity"]["inFlight"] == 0
    ids = [r.run_id for r in tool_runs + model_runs]
    wait_for(
        lambda: list(dep.svc.store.statuses(ids).values()).count("succeeded") == 2,
        timeout=120,
        message="the run of each limiter that got through to finish",
    )

    text = cli("queues")
    assert text.exit_code == 0, text.output
    cells = r"tool:probe\.rated\W+1/60s\W+1\W+[\d.]+s\W+0\W+wait [\d.]+s"
    assert re.search(cells, text.stdout), text.stdout
