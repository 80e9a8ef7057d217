"""Prometheus metrics (``runtime.metrics``) scraped over HTTP while a real workload runs on
real workers, Redis and SQL; every value is checked against what ``agentrt queues``
(``runtime.scheduling.view``) and the store say."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from runtime import metrics
from runtime.budgets.ledger import today
from runtime.config import DIMENSIONS
from runtime.scheduling import view
from runtime.scheduling.scheduler import PRIORITIES
from runtime.store.metric_reads import MetricReads
from runtime.store.slo_reads import SloReads
from runtime.wiring import build_metric_sources
from tests.api_support import free_port, serve
from tests.support import Deployment, wait_for

ROOT = Path(__file__).resolve().parent.parent
REL_CONFIG = ROOT / "tests" / "config" / "releases.yaml"
ROUTE = "r.levers"  # concurrency_limit 10 in tests/config/runtime.yaml
TENANT = "t3"
ACTOR = "ops:metrics-test"
REPLY = {"type": "reply", "text": "ok"}
FLOOD = 6

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client, url: str = "/metrics") -> Samples:
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def depth(samples: Samples, tenant: str) -> float:
    """Queued steps of ``tenant`` over every priority (a tenant with nothing queued and
    nothing in flight is not listed: 0)."""
    return sum(
        value(samples, "agentrt_queue_depth", tenant=tenant, priority=p) or 0 for p in PRIORITIES
    )


def observed(samples: Samples, name: str, **labels: str) -> float:
    """A histogram's observation count (0 before its first)."""
    return value(samples, f"{name}_count", **labels) or 0


def sources_up(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["source"]: v
        for (name, labels), v in samples.items()
        if name == "agentrt_metrics_source_up"
    }


@pytest.fixture
def http(deployment: Deployment) -> Iterator[httpx.Client]:
    with serve(deployment) as api, api.client() as client:  # no API key: /metrics is open
        yield client


def test_queue_depth_rises_with_a_flood_and_falls_as_it_drains(
    deployment: Deployment, http: httpx.Client
) -> None:
    dep, svc = deployment, deployment.svc
    before = scrape(http)
    assert set(sources_up(before).values()) == {1}
    assert value(before, "agentrt_redis_state_known") == 1
    assert depth(before, TENANT) == 0

    # Given the route drained by an operator, a flood of runs queues and nothing dispatches
    svc.levers.drain(route=ROUTE, actor=ACTOR, reason="metrics flood")
    try:
        runs = [dep.submit_script([REPLY], tenant=TENANT, route=ROUTE).run_id for _ in range(FLOOD)]
        flooded = scrape(http)
        seen = view.read(svc.redis, svc.keys, svc.config)
    finally:
        svc.levers.undrain(route=ROUTE, actor=ACTOR, reason="metrics flood over")

    # Then the scrape shows the flood, exactly as agentrt queues does
    assert value(flooded, "agentrt_queue_depth", tenant=TENANT, priority="normal") == FLOOD
    (mine,) = [t for t in seen.tenants if t.tenant == TENANT]
    for prio in PRIORITIES:
        assert (
            value(flooded, "agentrt_queue_depth", tenant=TENANT, priority=prio)
            == (mine.by_priority[prio])
        )
    assert value(flooded, "agentrt_queue_ready", tenant=TENANT) == mine.ready
    (route,) = [r for r in seen.routes if r.route == ROUTE]
    assert value(flooded, "agentrt_route_queued", route=ROUTE) == route.queued == FLOOD
    # the live limit (the drain lever), not the config's 10
    assert value(flooded, "agentrt_route_concurrency_limit", route=ROUTE) == route.limit == 0
    assert value(flooded, "agentrt_worker_capacity") == seen.capacity == 2

    # When the route is undrained, the runs complete and the depth falls to 0, never rising
    depths = [float(FLOOD)]

    def drained() -> bool:
        depths.append(depth(scrape(http), TENANT))
        return depths[-1] == 0 and all(
            s in ("succeeded",) for s in svc.store.statuses(runs).values()
        )

    wait_for(drained, timeout=90, interval=0.05, message="the flood to drain")
    assert depths == sorted(depths, reverse=True), depths
    after = scrape(http)
    assert value(after, "agentrt_route_concurrency_limit", route=ROUTE) == 10
    assert value(after, "agentrt_route_in_flight", route=ROUTE) == 0

    # every step was timed once, whole and by stage, on its settle round trip, and each
    # run's first step's wait from admission to its start
    for stage in ("step", "model_call", "checkpoint"):
        assert observed(after, "agentrt_step_latency_seconds", route=ROUTE, stage=stage) == (
            observed(before, "agentrt_step_latency_seconds", route=ROUTE, stage=stage) + FLOOD
        ), stage
    first = {"route": ROUTE, "step": "first"}
    assert observed(after, "agentrt_dispatch_wait_seconds", **first) == (
        observed(before, "agentrt_dispatch_wait_seconds", **first) + FLOOD
    )
    inf = value(after, "agentrt_step_latency_seconds_bucket", route=ROUTE, stage="step", le="+Inf")
    assert inf == observed(after, "agentrt_step_latency_seconds", route=ROUTE, stage="step")

    # and today's budget per tenant agrees with the ledger
    balance = svc.ledger.balance(svc.keys.budget_tenant_day(TENANT, today()))
    assert balance["model_calls"]["used"] >= FLOOD
    for dim in DIMENSIONS:
        assert (
            value(after, "agentrt_budget_used", tenant=TENANT, dimension=dim)
            == (balance[dim]["used"])
        )
    # a tenant with a daily budget shows its limit and what remains of it
    assert value(after, "agentrt_budget_limit", tenant="tday", dimension="tool_calls") == 20
    assert value(after, "agentrt_budget_remaining", tenant="tday", dimension="tool_calls") == (
        20
        - svc.ledger.balance(svc.keys.budget_tenant_day("tday", today()))["tool_calls"]["used"]
        - svc.ledger.balance(svc.keys.budget_tenant_day("tday", today()))["tool_calls"]["reserved"]
    )


def refund(amount: float) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "tool": "payments.refund",
        "args": {"customer_id": "cus_metrics", "amount": amount},
    }


def test_a_policy_denial_increments_its_rules_counter(
    deployment: Deployment, http: httpx.Client
) -> None:
    dep, svc = deployment, deployment.svc
    name = "agentrt_policy_decisions_total"
    before = scrape(http)
    denies = value(before, name, rule="refund_cap", effect="deny") or 0

    run = dep.submit_script([refund(5000)], route="r.refunds")
    done = svc.wait(run.run_id, timeout=60)
    assert done.stop_reason == "policy_denied:refund_cap"

    after = scrape(http)
    assert value(after, name, rule="refund_cap", effect="deny") == denies + 1
    # every other rule's count is unchanged, and all of them agree with the store
    counted = {
        (dict(labels)["rule"], dict(labels)["effect"]): v
        for (metric, labels), v in after.items()
        if metric == name
    }
    stored = {
        (row["rule_id"] or "default", row["decision"]): row["count"]
        for row in SloReads(svc.store.engine).decision_counts()
    }
    assert counted == stored


def test_dead_letters_open_agree_with_the_store(deployment: Deployment, http: httpx.Client) -> None:
    dep, svc = deployment, deployment.svc
    key = f"m{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")
    before = scrape(http)

    # a dependency that stays down: the call's retries run out and the step dead-letters
    flaky = {"type": "tool_call", "tool": "probe.flaky", "args": {"key": key, "by": 1}}
    run = dep.submit_script([flaky, REPLY], route="r.retry")
    done = svc.wait(run.run_id, timeout=60)
    assert done.stop_reason == "dead_lettered:exhausted"

    after = scrape(http)
    stats = svc.dead_letters.store.stats()
    assert stats
    for row in stats:
        assert (
            value(after, "agentrt_dead_letters_open", queue=row["queue"], **{"class": row["class"]})
            == (row["open"])
        )
    scraped = sum(v for (n, _), v in after.items() if n == "agentrt_dead_letters_open")
    assert scraped == sum(row["open"] for row in stats)
    queue = next(row["queue"] for row in stats if row["class"] == "exhausted")
    was = value(before, "agentrt_dead_letters_open", queue=queue, **{"class": "exhausted"}) or 0
    assert value(after, "agentrt_dead_letters_open", queue=queue, **{"class": "exhausted"}) == (
        was + 1
    )


def test_a_worker_serves_the_same_values_from_its_main_process(
    fresh_deployment: Deployment,
) -> None:
    dep, svc = fresh_deployment, fresh_deployment.svc
    port = free_port()
    dep.env["AGENTRT_METRICS_PORT"] = str(port)
    worker = dep.start_worker(concurrency=2)
    svc.levers.drain(route=ROUTE, actor=ACTOR, reason="metrics worker port")
    for _ in range(3):
        dep.submit_script([REPLY], tenant=TENANT, route=ROUTE)

    with serve(dep) as api, api.client() as from_api, httpx.Client(timeout=30) as from_worker:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _answers(from_worker, url), timeout=60, message="the worker's metrics")
        on_worker, on_api = scrape(from_worker, url), scrape(from_api)
    svc.levers.undrain(route=ROUTE, actor=ACTOR, reason="done")

    assert value(on_worker, "agentrt_queue_depth", tenant=TENANT, priority="normal") == 3
    for name in ("agentrt_queue_depth", "agentrt_route_concurrency_limit", "agentrt_budget_used"):
        mine = {k: v for k, v in on_worker.items() if k[0] == name}
        assert mine and mine == {k: v for k, v in on_api.items() if k[0] == name}
    # only the main process listens: the pool's processes run no server thread
    assert f"metrics on http://127.0.0.1:{port}/metrics" in worker.log()
    assert worker.log().count("metrics on http://") == 1


def _answers(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_grafana_dashboard_uses_only_exposed_metric_names(
    deployment: Deployment, http: httpx.Client
) -> None:
    text = http.get("/metrics").text
    families = {f.name for f in text_string_to_metric_families(text)}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agentrt.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for expr in exprs
        for name in re.findall(r"agentrt_[a-z_]+", expr)
    }
    assert len(used) >= 15
    assert used <= families, used - families


def test_unknown_redis_state_and_an_unreadable_store_report_no_values(
    fresh_deployment: Deployment,
) -> None:
    """Fail closed: what cannot be known is reported as not read, never as zeros."""
    dep, svc = fresh_deployment, fresh_deployment.svc
    svc.levers.drain(route=ROUTE, actor=ACTOR, reason="metrics fail closed")
    dep.submit_script([REPLY], tenant=TENANT, route=ROUTE)
    sources = build_metric_sources(svc)
    reg = metrics.registry(lambda: sources)
    known = parse(generate_latest(reg))
    assert value(known, "agentrt_queue_depth", tenant=TENANT, priority="normal") == 1

    # SQL unreachable: the SQL sources are down, Redis' are still read
    broken = MetricReads(create_engine(f"sqlite:///{dep.home / 'missing' / 'no.db'}"))
    no_sql = parse(generate_latest(metrics.registry(lambda: replace(sources, reads=broken))))
    up = sources_up(no_sql)
    assert up["approvals"] == up["dead_letters"] == up["policy"] == 0
    assert up["scheduler"] == up["budgets"] == 1
    assert not any(n == "agentrt_policy_decisions_total" for n, _ in no_sql)

    # Redis lost its state (the markers are gone): no queue or budget values at all
    svc.redis.delete(svc.keys.sched_state(), svc.keys.ledger_state())
    lost = parse(generate_latest(reg))
    assert value(lost, "agentrt_redis_state_known") == 0
    up = sources_up(lost)
    assert up["scheduler"] == up["budgets"] == 0 and up["policy"] == 1
    assert not any(n.startswith(("agentrt_queue_", "agentrt_budget_")) for n, _ in lost)


def parse(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_approvals_pending_and_their_age_agree_with_the_store(
    deployment: Deployment, http: httpx.Client
) -> None:
    dep, svc = deployment, deployment.svc
    inc = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "m", "by": 1}}
    run = dep.submit_script([inc, REPLY], route="r.approve", actor="user:metrics")
    wait_for(
        lambda: svc.get(run.run_id).status.value == "waiting",
        timeout=60,
        message="the run to wait for its approval",
    )
    try:
        scraped = scrape(http)
        stored = {r: (n, oldest) for r, n, oldest in svc.approvals.store.pending_by_route("t1")}
        assert (
            value(scraped, "agentrt_approvals_pending", tenant="t1", route="r.approve")
            == (stored["r.approve"][0])
        )
        assert stored["r.approve"][0] >= 1
        age = value(scraped, "agentrt_approval_oldest_age_seconds", tenant="t1", route="r.approve")
        assert age is not None and age >= 0
    finally:
        svc.cancel(run.run_id, actor="user:metrics")


def test_each_routes_releases_are_scraped_as_they_stand(redis_url: str, tmp_path: Path) -> None:
    """No worker: the active and canary releases of ``tests/config/releases.yaml``."""
    dep = Deployment.create(
        name=f"m{uuid.uuid4().hex[:5]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=REL_CONFIG,
        home=tmp_path,
    )
    try:
        svc = dep.svc
        reg = metrics.registry(lambda: build_metric_sources(svc))
        routes = svc.releases.routes()
        scraped = parse(generate_latest(reg))
        assert routes
        for r in routes:
            assert (
                value(
                    scraped,
                    "agentrt_release_info",
                    route=r["route"],
                    release=r["active"],
                    role="active",
                )
                == 1
            )
            if r["canary"]:
                assert (
                    value(
                        scraped,
                        "agentrt_release_info",
                        route=r["route"],
                        release=r["canary"],
                        role="canary",
                    )
                    == 1
                )
                assert value(scraped, "agentrt_release_canary_percent", route=r["route"]) == (
                    r["percent"] or 0
                )
        assert any(r["canary"] for r in routes)
    finally:
        dep.close()


def test_a_breaker_and_a_live_limit_are_scraped_as_they_stand(
    fresh_deployment: Deployment,
) -> None:
    svc = fresh_deployment.svc
    reg = metrics.registry(lambda: build_metric_sources(svc))
    name = "tool:probe.guarded"  # failures: 2 opens it (tests/config/runtime.yaml)
    cfg = svc.config.tools["probe.guarded"].breaker
    assert (
        value(parse(generate_latest(reg)), "agentrt_breaker_state", breaker=name, state="closed")
        == 1
    )
    for caller in ("c1", "c2"):
        svc.breakers.record(name, cfg, caller, ok=False)
    assert svc.breakers.state(name) == "open"
    opened = parse(generate_latest(reg))
    assert value(opened, "agentrt_breaker_state", breaker=name, state="open") == 1
    assert value(opened, "agentrt_breaker_state", breaker=name, state="closed") == 0

    svc.levers.set_concurrency(ROUTE, 3, actor=ACTOR, reason="metrics")
    assert value(parse(generate_latest(reg)), "agentrt_route_concurrency_limit", route=ROUTE) == 3
    svc.levers.set_concurrency(ROUTE, None, actor=ACTOR, reason="metrics")
    assert value(parse(generate_latest(reg)), "agentrt_route_concurrency_limit", route=ROUTE) == 10


def test_a_later_steps_dispatch_wait_is_counted_from_the_checkpoint_that_queued_it(
    deployment: Deployment, http: httpx.Client
) -> None:
    dep = deployment
    before = scrape(http)
    call = {"type": "tool_call", "tool": "probe.work", "args": {"key": uuid.uuid4().hex[:8]}}
    runs = [dep.submit_script([call, call, REPLY], tenant=TENANT, route=ROUTE).run_id
            for _ in range(2)]  # fmt: skip
    done = dep.wait_all(runs)
    assert {v.status for v in done.values()} == {"succeeded"}
    after = scrape(http)
    # 3 steps a run: its first from admission, the 2 others from the checkpoint before
    for which, count in (("first", 2), ("next", 4)):
        labels = {"route": ROUTE, "step": which}
        assert observed(after, "agentrt_dispatch_wait_seconds", **labels) == (
            observed(before, "agentrt_dispatch_wait_seconds", **labels) + count
        ), which
