"""The operating dashboard over HTTP (httpx against the real app served by uvicorn, with
real Redis, SQL - SQLite and PostgreSQL - and a real worker producing the runs): every
panel renders with data, tenant keys never see another tenant, every POST needs the
session's CSRF token, every action its scope, and the session cookie never holds the key."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from runtime.dashboard import session
from runtime.errors import ApiKeyRejected
from runtime.store.db import utcnow
from runtime.wiring import build_slo_reporter
from tests.dashboard_support import (
    READER,
    ROUTE,
    TENANT_SCOPES,
    Workload,
    csrf_of,
    dashboard_deployment,
    login,
    workload_on,
)
from tests.support import Deployment


@pytest.fixture(scope="module")
def dash(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Workload]:
    dep: Deployment = dashboard_deployment(
        backend, redis_url, tmp_path_factory.mktemp("dash"), request
    )
    try:
        with workload_on(dep) as work:
            yield work
    finally:
        dep.close()


def section(page: str, panel: str) -> str:
    """The HTML of one panel (``<section id="panel-...">``)."""
    found = re.search(rf'<section id="{panel}">(.*?)</section>', page, re.S)
    assert found is not None, f"no {panel} on the page"
    return found.group(1)


def cells(html_text: str, row_id: str) -> list[str]:
    row = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', html_text, re.S)
    assert row is not None, f"no row {row_id}"
    return [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]


def test_each_panel_renders_with_data(dash: Workload) -> None:
    client, _ = login(dash.base, dash.keys["admin"])
    page = client.get("/dashboard").text
    runs = dash.runs
    # a wall screen: the page reloads itself, within bounds
    assert 'http-equiv="refresh"' not in page
    assert '<meta http-equiv="refresh" content="15">' in client.get("/dashboard?refresh=15").text
    assert client.get("/dashboard?refresh=1").status_code == 422
    active = section(page, "panel-active_runs")
    assert runs["held_t1"] in active and runs["held_t2"] in active
    assert runs["done"] not in active  # over: not active
    assert runs["approval"] in active and "waiting" in active
    budget = section(page, "panel-budget_pressure")
    assert runs["held_t1"] in budget and "tool_calls" in budget
    assert "/dashboard/levers/set_concurrency" in budget
    policy = section(page, "panel-policy_decisions")
    assert "no_closing" in policy and "increments_need_approval" in policy
    assert runs["denied"] in policy
    approvals = section(page, "panel-pending_approvals")
    view = dash.dep.svc.approvals.get(dash.approval_id)
    assert view.canonical_action() in html.unescape(approvals)
    assert view.digest in approvals
    tools = section(page, "panel-tool_health")
    assert "/dashboard/levers/disable_tool" in tools
    # calls and denials from the checkpointed trace and decisions; a call still inside
    # its step shows as a side effect started (claimed before the call), not yet a call
    assert cells(tools, "tool-probe.held")[1:3] == ["0", "0"]
    assert cells(tools, "tool-probe.held")[5] == "2"
    assert cells(tools, "tool-kb.search")[1:3] == ["1", "0"]
    assert cells(tools, "tool-tickets.update")[1:3] == ["0", "1"]
    trace = section(page, "panel-trace_quality")
    assert "ended runs with a stop reason" in trace
    assert re.search(r"<td>ended runs with a stop reason</td><td>([1-9][0-9]*)</td>", trace)
    releases = section(page, "panel-release_versions")
    assert ROUTE in releases and "v1" in releases and "v2" in releases
    evals = section(page, "panel-eval_status")
    assert "promote" in evals and ("passed" in evals or "failed" in evals)
    # the SLO report's rows, as `agentrt slo report` computes them over the same window
    slos = section(page, "panel-slos")
    reported = build_slo_reporter(dash.dep.svc.config, dash.dep.svc.store.engine).report(
        since=utcnow() - timedelta(hours=24)
    )
    for result in reported.results:
        assert result.name in slos
    assert "stop_reason_completeness" in slos and "decision_coverage_side_effects" in slos


def test_run_page_shows_trace_decisions_spend_effects_approvals(dash: Workload) -> None:
    client, _ = login(dash.base, dash.keys["admin"])
    denied = client.get(f"/dashboard/runs/{dash.runs['denied']}").text
    assert "policy_denied:no_closing" in section(denied, "run-summary")
    assert "no_closing" in section(denied, "run-steps")
    assert "/task/" + dash.runs["denied"] + "-0" in section(denied, "run-steps")  # Flower
    assert "tool_calls" in section(denied, "run-budget")
    kinds = {e.kind for e in dash.dep.svc.trace(dash.runs["denied"])}
    timeline = section(denied, "run-trace")
    assert all(f"<td>{k}</td>" in timeline for k in kinds)
    waiting = client.get(f"/dashboard/runs/{dash.runs['approval']}").text
    assert dash.approval_id in section(waiting, "run-approvals")


def test_tenant_keys_see_only_their_tenant(dash: Workload) -> None:
    t1, _ = login(dash.base, dash.key("t1", TENANT_SCOPES))
    t2, _ = login(dash.base, dash.key("t2", TENANT_SCOPES))
    mine, theirs = dash.runs["held_t1"], dash.runs["held_t2"]
    page1, page2 = t1.get("/dashboard").text, t2.get("/dashboard").text
    assert mine in page1 and theirs not in page1
    assert theirs in page2 and mine not in page2
    for run_id in dash.runs.values():
        if run_id != theirs:
            assert run_id not in page2  # every other run is t1's
    assert t1.get(f"/dashboard/runs/{theirs}").status_code == 404
    assert t2.get(f"/dashboard/runs/{mine}").status_code == 404
    # t1's pending approval: not on t2's page, not decidable by t2
    assert dash.approval_id not in page2
    page = t2.get("/dashboard").text
    refused = t2.post(
        f"/dashboard/approvals/{dash.approval_id}/approve", data={"csrf": csrf_of(page)}
    )
    assert refused.status_code == 404
    assert dash.dep.svc.approvals.get(dash.approval_id).status == "pending"


def test_every_post_needs_the_sessions_csrf_token(dash: Workload) -> None:
    client, token = login(dash.base, dash.keys["admin"])
    other, other_token = login(dash.base, dash.key("t1", TENANT_SCOPES))
    run_id = dash.runs["held_t1"]
    target = f"/dashboard/runs/{run_id}/pause"
    assert client.post(target).status_code == 403
    assert client.post(target, data={"csrf": "0" * 64}).status_code == 403
    assert client.post(target, data={"csrf": other_token}).status_code == 403  # not its own
    lever = client.post("/dashboard/levers/disable_tool", data={"tool": "kb.search"})
    assert lever.status_code == 403
    assert "kb.search" not in {lv["target"] for lv in dash.dep.svc.levers.status()}
    assert dash.dep.svc.get(run_id).status == "running"  # nothing happened
    # no session at all: 401, and the login form has its own CSRF check
    anonymous = httpx.Client(base_url=dash.base, timeout=30)
    assert anonymous.post(target, data={"csrf": token}).status_code == 401
    forged = anonymous.post("/dashboard/login", data={"key": dash.keys["admin"], "csrf": "x"})
    assert forged.status_code == 403 and "agentrt_session" not in forged.cookies
    assert other.get("/dashboard").status_code == 200


def test_actions_need_their_scope(dash: Workload) -> None:
    reader, token = login(dash.base, dash.key("t1", READER))
    run_id = dash.runs["held_t1"]
    assert reader.post(f"/dashboard/runs/{run_id}/cancel", data={"csrf": token}).status_code == 403
    assert dash.dep.svc.get(run_id).status == "running"
    tenant, token = login(dash.base, dash.key("t1", TENANT_SCOPES))
    # levers and releases act on the whole deployment: ops:admin only
    lever = tenant.post("/dashboard/levers/disable_tool", data={"csrf": token, "tool": "kb.search"})
    assert lever.status_code == 403
    assert "kb.search" not in {lv["target"] for lv in dash.dep.svc.levers.status()}
    rollback = tenant.post(f"/dashboard/releases/{ROUTE}/rollback", data={"csrf": token})
    assert rollback.status_code == 403
    assert dash.dep.svc.releases is not None
    assert dash.dep.svc.releases.routes()[0]["canary"] == "v2"
    page = tenant.get("/dashboard").text
    assert "/dashboard/levers/" not in page  # no lever forms for a tenant key


def test_session_cookie_is_signed_httponly_strict_and_ends_with_its_key(
    dash: Workload,
) -> None:
    key = dash.key("t1", [*TENANT_SCOPES, "runs:submit"])
    client = httpx.Client(base_url=dash.base, timeout=30)
    form = client.get("/dashboard/login")
    bad = client.post("/dashboard/login", data={"key": key + "x", "csrf": csrf_of(form.text)})
    assert bad.status_code == 401 and "invalid or expired key" in bad.text
    entered = client.post("/dashboard/login", data={"key": key, "csrf": csrf_of(bad.text)})
    assert entered.status_code == 303
    cookie = entered.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    value = entered.cookies["agentrt_session"]
    assert key not in value and key.split("_", 2)[2] not in value  # never the secret
    assert client.get("/dashboard").status_code == 200
    # a forged signature is no session
    client.cookies.set("agentrt_session", value[:-4] + "0000", path="/dashboard")
    assert client.get("/dashboard").status_code == 303
    client.cookies.set("agentrt_session", value, path="/dashboard")
    for row in dash.dep.svc.api_keys.list("t1"):
        dash.dep.svc.api_keys.revoke(row["key_id"], actor="test")
    assert client.get("/dashboard").status_code == 303  # the key is revoked: back to login


def test_a_pending_approval_is_decided_from_the_page(dash: Workload) -> None:
    client, token = login(dash.base, dash.key("t1", TENANT_SCOPES))
    run_id = dash.runs["approval"]
    decided = client.post(
        f"/dashboard/approvals/{dash.approval_id}/approve",
        data={"csrf": token, "reason": "<b>ok</b>", "back": f"/dashboard/runs/{run_id}"},
    )
    assert decided.status_code == 303
    assert decided.headers["location"].startswith(f"/dashboard/runs/{run_id}?done=")
    view = dash.dep.svc.approvals.get(dash.approval_id)
    assert view.status in ("approved", "consumed") and view.reason == "<b>ok</b>"
    final = dash.dep.wait_all([run_id])[run_id]
    assert final.status == "succeeded", final
    page = client.get(f"/dashboard/runs/{run_id}").text
    assert "<b>ok</b>" not in page  # escaped wherever it shows
    effects = dash.dep.svc.store.side_effects(run_id)
    assert [e["tool"] for e in effects] == ["counter.increment"]
    assert effects[0]["idempotency_key"] in section(page, "run-effects")
    # an open redirect is not followed: back to the dashboard itself
    again = client.post(
        f"/dashboard/approvals/{dash.approval_id}/approve",
        data={"csrf": token, "back": "https://evil.example/"},
    )
    assert again.status_code == 409  # decided already


def test_a_session_token_expires_and_cannot_be_moved_to_another_key(dash: Workload) -> None:
    keys = dash.dep.svc.api_keys
    token, who = session.open_session(keys, dash.key("t2", READER), now=1_000_000)
    assert session.principal_of(keys, token, now=1_000_000 + 60).key_id == who.key_id
    with pytest.raises(ApiKeyRejected):
        session.principal_of(keys, token, now=1_000_000 + session.MAX_AGE_S + 1)
    other, _ = session.open_session(keys, dash.key("t2", READER), now=1_000_000)
    # another key's prefix with this token's signature: no session
    forged = ".".join([other.split(".")[0], *token.split(".")[1:]])
    with pytest.raises(ApiKeyRejected):
        session.principal_of(keys, forged, now=1_000_000 + 60)
    assert session.csrf_token(token) != session.csrf_token(other)
