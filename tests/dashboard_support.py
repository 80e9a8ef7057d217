"""The dashboard's test deployment and workload (tests/config/dashboard.yaml), shared by
the HTTP tests and the browser test: real Redis, real SQL, a real prefork worker, the real
app served by uvicorn, and runs in every state a panel shows."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.api_keys import ADMIN
from runtime.errors import GateFailed
from tests.api_support import serve
from tests.conftest import _database_url
from tests.support import Deployment, Hold, wait_for

DASH_CONFIG = Path(__file__).resolve().parent / "config" / "dashboard.yaml"
ROUTE = "r.dash"
REPLY = {"type": "reply", "text": "done", "usage": {"input_tokens": 120, "output_tokens": 40}}
READER = ["runs:read"]
TENANT_SCOPES = ["runs:read", "runs:cancel", "approvals:decide"]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def search() -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund policy"}}


def close_ticket() -> dict[str, Any]:
    args = {"ticket_id": "T-9", "status": "closed"}
    return {"type": "tool_call", "tool": "tickets.update", "args": args}


def increment(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "by": 3}}


@dataclass
class Workload:
    dep: Deployment
    base: str
    #: run ids by what they show: done, denied, approval (waiting), held_t1, held_t2
    runs: dict[str, str]
    holds: list[Hold]
    approval_id: str
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str, scopes: list[str]) -> str:
        return self.dep.svc.api_keys.create(tenant, scopes, actor="test").secret


def start_workload(dep: Deployment, base: str) -> Workload:
    """Runs in every state the panels show. The held runs go last: each holds a worker
    process inside probe.held until the test lets go."""
    submit = dep.submit_script
    done = submit([search(), REPLY], route=ROUTE).run_id
    denied = submit([close_ticket(), REPLY], route=ROUTE).run_id
    approval = submit([increment(f"c{uuid.uuid4().hex[:6]}"), REPLY], route=ROUTE).run_id
    finished = dep.wait_all([done, denied, approval])
    assert finished[done].status == "succeeded", finished[done]
    assert finished[denied].stop_reason == "policy_denied:no_closing", finished[denied]
    assert finished[approval].status == "waiting", finished[approval]
    pending = dep.svc.approvals.list("t1", "pending", route=ROUTE)
    approval_id = next(a.approval_id for a in pending if a.run_id == approval)
    # a promotion through the gate: the eval panel's gate history
    releases = dep.svc.releases
    assert releases is not None
    releases.canary(ROUTE, "v2", tenants=["t2"], actor="test", reason="try v2 on t2")
    with contextlib.suppress(GateFailed):  # refused is gate history too
        releases.promote(ROUTE, actor="test", reason="v2 looks good")
    releases.rollback(ROUTE, to="v1", actor="test", reason="back to v1")
    releases.canary(ROUTE, "v2", tenants=["t2"], actor="test", reason="canary again")
    holds = [Hold(dep), Hold(dep)]
    runs = {"done": done, "denied": denied, "approval": approval}
    for name, tenant, hold in (("held_t1", "t1", holds[0]), ("held_t2", "t2", holds[1])):
        hold.on()
        # two held calls: the second is the "next step" an operator's lever acts on
        script = [hold.step(), hold.step(), REPLY]
        runs[name] = submit(script, tenant=tenant, route=ROUTE).run_id
    for hold in holds:
        wait_for(lambda h=hold: h.entered() >= 1, timeout=60, message="a call inside probe.held")
    return Workload(dep, base, runs, holds, approval_id)


def dashboard_deployment(
    backend: str, redis_url: str, tmp: Path, request: pytest.FixtureRequest
) -> Deployment:
    dep = Deployment.create(
        name=f"dash{uuid.uuid4().hex[:4]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=DASH_CONFIG,
        home=tmp,
    )
    dep.start_worker(concurrency=2)
    return dep


@contextmanager
def workload_on(dep: Deployment) -> Iterator[Workload]:
    with serve(dep) as api:
        work = start_workload(dep, api.base)
        work.keys["admin"] = work.key("*", [ADMIN])
        try:
            yield work
        finally:
            for hold in work.holds:
                hold.off()
            for tool in ("probe.held",):
                dep.svc.levers.enable_tool(tool, actor="test")


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found is not None, page[:2000]
    return found.group(1)


def login(base: str, key: str) -> tuple[httpx.Client, str]:
    """A client with a dashboard session for ``key``, and the dashboard's CSRF token."""
    client = httpx.Client(base_url=base, timeout=30)
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    entered = client.post("/dashboard/login", data={"key": key, "csrf": csrf_of(form.text)})
    assert entered.status_code == 303, entered.text
    page = client.get("/dashboard")
    assert page.status_code == 200, page.text
    return client, csrf_of(page.text)
