"""``agentrt api`` serves the API in its own process; ``/readyz`` names what is not ready;
a cross-tenant (ops:admin, tenant ``*``) key sees every tenant and submits for one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.api_support import free_port, is_problem, serve
from tests.conftest import TEST_CONFIG
from tests.support import ROOT, Deployment, wait_for

RUN = {"route": "r.basic", "goal": "g", "input": {"script": [{"type": "reply", "text": "ok"}]}}


def _children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


@pytest.mark.parametrize("workers", [1, 2])
def test_agentrt_api_serves_until_stopped(fresh_deployment: Deployment, workers: int) -> None:
    dep = fresh_deployment
    issued = dep.svc.api_keys.create("t1", ["runs:submit", "runs:read"], actor="test")
    key = issued.secret
    port = free_port()
    log = dep.home / "api.log"
    argv = ["api", "--port", str(port), "--workers", str(workers)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli.main", *argv],
            cwd=ROOT,
            env={**os.environ, **dep.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    servers: set[int] = set()

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            return False

    try:
        wait_for(up, timeout=60, message="agentrt api to answer")
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            # every server process builds its own runtime: each answers on the port
            made = [c.post("/v1/runs", json=RUN) for _ in range(4 * workers)]
            assert [m.status_code for m in made] == [202] * 4 * workers, made[-1].text
            for m in made:
                assert c.get(m.headers["Location"]).json()["tenantId"] == "t1"
            servers = _children(proc.pid)
            if workers > 1:  # uvicorn's supervisor and its server processes
                assert len(servers) >= workers, servers
            dep.svc.api_keys.revoke(issued.key_id, "test")
            # no process keeps a key it saw: revoked, it fails at once in every one
            assert {c.get("/v1/runs").status_code for _ in range(4 * workers)} == {401}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert all(not _alive(p) for p in servers), "a server process outlived agentrt api"
    assert key not in log.read_text()  # the key is never logged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it waits only for its parent to read its status
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def test_readyz_names_what_is_not_ready(redis_url: str, tmp_path: Path) -> None:
    dep = Deployment.create(
        name=f"r{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp_path,
        apply_config=False,
    )
    try:
        with serve(dep) as api, api.client() as c:
            body = is_problem(c.get("/readyz"), 503, "not_ready")
            assert body["checks"]["redis"] == "ok" and body["checks"]["sql"] == "ok"
            assert "no config applied" in body["checks"]["config"]
            dep.svc.apply_config("test")
            assert c.get("/readyz").status_code == 200
    finally:
        dep.close()


def test_a_cross_tenant_admin_key(fresh_deployment: Deployment) -> None:
    with serve(fresh_deployment) as api:
        admin = api.key("*", ["ops:admin"])
        with api.client(api.key("t1")) as t1, api.client(admin) as ops:
            mine = t1.post("/v1/runs", json=RUN).json()
            # an admin key must name the tenant it submits for; then any tenant
            no_tenant = ops.post("/v1/runs", json=RUN)
            assert is_problem(no_tenant, 422, "invalid_request")["fields"] == ["tenant"]
            theirs = ops.post("/v1/runs", json={**RUN, "tenant": "t2"})
            assert theirs.status_code == 202 and theirs.json()["tenantId"] == "t2"
            listed = {r["runId"] for r in ops.get("/v1/runs").json()["items"]}
            assert {mine["runId"], theirs.json()["runId"]} <= listed
            assert ops.get(f"/v1/runs/{mine['runId']}").status_code == 200
            # a tenant key may not submit for another tenant
            other = t1.post("/v1/runs", json={**RUN, "tenant": "t2"})
            is_problem(other, 422, "invalid_request")
