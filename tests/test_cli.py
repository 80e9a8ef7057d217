"""The ``agentrt`` CLI against real Redis, real SQL and real prefork workers.

Commands run in-process through Typer's ``CliRunner`` with the deployment's ``AGENTRT_*``
variables, so they build the same settings a user's shell would; ``worker`` and ``flower``
exec Celery, so they run as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from runtime.cli.main import app
from runtime.demo.workload import COUNTER, REFUNDS, TENANTS, TRIAGE
from runtime.settings import Settings
from runtime.wiring import Runtime
from tests.support import ROOT, Deployment, wait_for

USAGE = {"input_tokens": 100, "output_tokens": 20}
FINISHED = {"succeeded", "failed", "refused", "cancelled", "waiting"}
CONTRACT_KEYS = {
    "runId",
    "traceId",
    "requestId",
    "actorId",
    "tenantId",
    "route",
    "goal",
    "autonomyLevel",
    "riskClass",
    "executionMode",
    "status",
    "versionSet",
    "budgetPolicyVersion",
    "policyVersion",
    "workflowStep",
    "allowedTools",
    "idempotencyKey",
    "approvalId",
    "checkpointRef",
    "stopReason",
    "createdAt",
    "updatedAt",
}


def search(query: str = "refund") -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": query}, "usage": USAGE}


def update(ticket: str) -> dict[str, Any]:
    args = {"ticket_id": ticket, "status": "pending"}
    return {"type": "tool_call", "tool": "tickets.update", "args": args, "usage": USAGE}


def reply(text: str = "done") -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


@pytest.fixture
def cli_env(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """The deployment's settings as environment variables, as a user's shell would have."""
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    return deployment


@pytest.fixture
def fresh_env(fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A private deployment with no worker yet."""
    for name, value in fresh_deployment.env.items():
        monkeypatch.setenv(name, value)
    return fresh_deployment


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def submit_args(tenant: str, route: str, script: list[Any]) -> list[str]:
    payload = json.dumps({"script": script})
    return ["submit", "--tenant", tenant, "--route", route, "--goal", "cli test", "-i", payload]


# --- submit --------------------------------------------------------------------------


def test_submit_wait_json_prints_the_finished_contract(cli_env: Deployment) -> None:
    script = [search(), reply("all good")]
    args = submit_args("t1", "r.basic", script)
    result = cli(*args, "--actor", "alice", "--request-id", "cli-req-1", "--wait", "--json")

    run = as_json(result)
    assert set(run) >= CONTRACT_KEYS
    assert run["status"] == "succeeded" and run["stopReason"] == "completed"
    assert run["actorId"] == "alice" and run["requestId"] == "cli-req-1"
    assert run["output"] == {"text": "all good"} and run["steps"] == 2
    # a repeated request id returns the same run, never a second one
    again = as_json(cli(*args, "--actor", "alice", "--request-id", "cli-req-1", "--json"))
    assert again["runId"] == run["runId"]


def test_a_request_id_reused_with_another_goal_exits_2_naming_the_field(
    cli_env: Deployment,
) -> None:
    request_id = f"cli-conflict-{uuid.uuid4().hex[:8]}"
    args = submit_args("t1", "r.basic", [reply()])
    assert cli(*args, "--actor", "alice", "--request-id", request_id).exit_code == 0
    other = [a if a != "cli test" else "another goal" for a in args]
    result = cli(*other, "--actor", "alice", "--request-id", request_id)
    assert result.exit_code == 2, result.output
    assert "refused:idempotency_conflict" in result.stderr and "goal" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_submit_for_people_prints_status_and_stop_reason(cli_env: Deployment) -> None:
    result = cli(*submit_args("t2", "r.basic", [search(), reply()]), "--wait")
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout and "stop reason completed" in result.stdout
    assert re.search(r"agentrt trace [0-9a-f]{32}", result.stdout)


def test_refused_admission_prints_the_reason_code_and_exits_2(cli_env: Deployment) -> None:
    result = cli(*submit_args("nobody", "r.basic", [reply()]))
    assert result.exit_code == 2
    assert "refused:unknown_tenant" in result.stderr

    # tenant t3 is outside r.refunds' scope; --json still prints the stored run
    result = cli(*submit_args("t3", "r.refunds", [reply()]), "--wait", "--json")
    assert result.exit_code == 2
    run = json.loads(result.stdout)
    assert run["status"] == "refused" and run["stopReason"] == "refused:tenant_not_in_scope"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"script": [', "--input is not valid JSON: Expecting value at line 1 column 13"),
        ("[1, 2]", "must be a JSON object, got list"),
        ("@/nonexistent/run.json", "cannot read /nonexistent/run.json"),
    ],
)
def test_bad_input_is_named_and_exits_2(
    value: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refused before any connection: nothing to start, nothing stored
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    result = cli("submit", "--tenant", "t1", "--route", "r.basic", "--goal", "g", "-i", value)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "redis").exists()


def test_input_from_a_file_and_from_stdin(cli_env: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"script": [reply("from file")]}))
    base = ["submit", "--tenant", "t1", "--route", "r.basic", "--goal", "g", "--wait", "--json"]
    assert as_json(cli(*base, "-i", f"@{path}"))["output"] == {"text": "from file"}
    stdin = json.dumps({"script": [reply("from stdin")]})
    assert as_json(cli(*base, "-i", "@-", input=stdin))["output"] == {"text": "from stdin"}


def test_wait_timeout_exits_3(fresh_env: Deployment) -> None:
    # no worker in this deployment: the run stays queued
    result = cli(*submit_args("t1", "r.basic", [reply()]), "--wait", "--timeout", "0.3")
    assert result.exit_code == 3
    assert "still queued after 0.3s" in result.stderr and "agentrt worker" in result.stderr


def test_cancel_a_queued_run(fresh_env: Deployment) -> None:
    run = as_json(cli(*submit_args("t1", "r.basic", [reply()]), "--json"))
    cancelled = as_json(cli("runs", "cancel", run["runId"], "--actor", "ops", "--json"))
    assert cancelled["status"] == "cancelled" and cancelled["stopReason"] == "cancelled:ops"
    again = cli("runs", "cancel", run["runId"])
    assert again.exit_code == 1 and "is cancelled" in again.stderr


# --- runs list / show, trace ---------------------------------------------------------


@pytest.fixture
def finished_run(cli_env: Deployment) -> str:
    run = cli_env.submit_script(
        [search("shipping"), update("T-cli-1"), reply("ok")], tenant="t3", route="r.basic"
    )
    assert cli_env.svc.wait(run.run_id, timeout=120).status == "succeeded"
    return run.run_id


def test_runs_list_json_and_table(cli_env: Deployment, finished_run: str) -> None:
    runs = as_json(cli("runs", "list", "--tenant", "t3", "--status", "succeeded", "--json"))
    assert runs and all(r["tenantId"] == "t3" and r["status"] == "succeeded" for r in runs)
    assert finished_run in [r["runId"] for r in runs]
    assert set(runs[0]) >= CONTRACT_KEYS

    table = cli("runs", "list", "--tenant", "t3", "--route", "r.basic", "--limit", "5")
    assert table.exit_code == 0 and finished_run in table.stdout
    bad = cli("runs", "list", "--status", "done")
    assert bad.exit_code == 2 and "done" in bad.output


def test_runs_show_json_has_contract_steps_decisions_effects_and_spend(
    cli_env: Deployment, finished_run: str
) -> None:
    shown = as_json(cli("runs", "show", finished_run, "--json"))
    assert set(shown) == {"run", "steps", "policyDecisions", "sideEffects", "spend"}
    assert set(shown["run"]) >= CONTRACT_KEYS and shown["run"]["runId"] == finished_run
    assert [(s["step"], s["kind"], s["tool"]) for s in shown["steps"]] == [
        (0, "tool_call", "kb.search"),
        (1, "tool_call", "tickets.update"),
        (2, "reply", None),
    ]
    assert [d["decision"] for d in shown["policyDecisions"]] == ["allow", "allow"]
    assert [(e["tool"], e["status"]) for e in shown["sideEffects"]] == [
        ("tickets.update", "succeeded")
    ]
    spend = shown["spend"]
    assert spend["tokens"] == 360 and spend["modelCalls"] == 3 and spend["toolCalls"] == 2
    assert spend["costUsd"] == pytest.approx(spend["costMicroUsd"] / 1e6)

    people = cli("runs", "show", finished_run)
    assert people.exit_code == 0
    assert "tickets.update" in people.stdout and "stop reason" in people.stdout


def test_unknown_run_exits_1(cli_env: Deployment) -> None:
    for command in (["runs", "show"], ["trace"]):
        result = cli(*command, "0" * 32)
        assert result.exit_code == 1 and "no run with id" in result.stderr


def test_trace_json_and_timeline(cli_env: Deployment, finished_run: str) -> None:
    events = as_json(cli("trace", finished_run, "--json"))
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "admission" and kinds[-2:] == ["checkpoint", "budget_settle"]
    for kind in ("policy_decision", "lock_acquired", "tool_start", "tool_end", "stop"):
        assert kind in kinds
    offsets = [e["offsetS"] for e in events]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert {"runId", "traceId", "step", "seq", "at", "kind", "data"} <= set(events[0])

    timeline = cli("trace", finished_run)
    assert timeline.exit_code == 0
    text = timeline.stdout
    assert re.search(
        r"\+\d+\.\d{3}s step 0\s+policy_decision\s+allow kb\.search \(default_allow\)", text
    )
    assert re.search(r"step 1\s+lock_acquired\s+ticket:T-cli-1 fence=\d+", text)
    assert re.search(r"stop\s+completed \(succeeded\)", text)


# --- config check --------------------------------------------------------------------


def test_config_check_a_good_file() -> None:
    result = cli("config", "check", str(ROOT / "config" / "runtime.yaml"))
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "tenants 3: acme, globex, initech" in out and "pol-2026-11-29" in out
    summary = as_json(cli("config", "check", str(ROOT / "config" / "runtime.yaml"), "--json"))
    assert summary["ok"] is True and summary["policyVersion"] == "pol-2026-11-29"
    assert set(summary["routes"]) >= {TRIAGE, REFUNDS, COUNTER}


def _write_config(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load((ROOT / "config" / "runtime.yaml").read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_check_names_every_bad_key(tmp_path: Path) -> None:
    def break_two_routes(data: dict[str, Any]) -> None:
        data["routes"][TRIAGE]["risk_class"] = "extreme"
        data["routes"][REFUNDS]["max_steps"] = 0

    path = _write_config(tmp_path / "bad.yaml", break_two_routes)
    result = cli("config", "check", str(path))
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    assert "routes.support.triage.risk_class: Input should be 'low', 'medium' or 'high'" in err
    assert "routes.billing.refunds.max_steps: Input should be greater than 0" in err
    assert json.loads(cli("config", "check", str(path), "--json").stdout)["ok"] is False


def test_config_check_imports_tool_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_config(
        tmp_path / "extra-tool.yaml", lambda data: data["tools"].update({"crm.lookup": {}})
    )
    # with no PATH argument, AGENTRT_CONFIG names the file
    monkeypatch.setenv("AGENTRT_CONFIG", str(path))
    result = cli("config", "check")
    assert result.exit_code == 1
    assert "tools.crm.lookup: no tool module registers it" in " ".join(result.stderr.split())


# --- worker and flower: exec'd Celery, signals reach it directly -----------------------


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli.main", *args],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_worker_execs_celery_and_stops_on_sigterm(
    fresh_deployment: Deployment, spawned: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = _spawn(["worker", "--pool", "solo", "--nice", "7"], fresh_deployment.env, log)
    spawned.append(proc)
    wait_for(lambda: " ready." in log.read_text() or proc.poll() is not None, 60, message="worker")
    assert proc.poll() is None, log.read_text()
    # the CLI became the worker: same pid, Celery's command line
    assert b"celery" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    # --nice: the worker runs 7 below this process's priority (field 19 of stat: nice)
    stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(") ", 1)[1].split()
    assert int(stat[16]) == min(19, os.nice(0) + 7)

    run = fresh_deployment.submit_script([search(), reply()])
    assert fresh_deployment.svc.wait(run.run_id, timeout=120).status == "succeeded"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert "Warm shutdown" in log.read_text()


def test_worker_with_a_bad_config_fails_cleanly(
    tmp_path: Path, redis_url: str, spawned: list[subprocess.Popen[bytes]]
) -> None:
    env = {
        "AGENTRT_REDIS_URL": redis_url,
        "AGENTRT_HOME": str(tmp_path),
        "AGENTRT_CONFIG": str(tmp_path / "missing.yaml"),
    }
    proc = _spawn(["worker"], env, tmp_path / "log")
    spawned.append(proc)
    assert proc.wait(timeout=120) == 1
    text = (tmp_path / "log").read_text()
    assert "missing.yaml" in text and "file not found" in text and "Traceback" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flower_serves_on_the_deployment_broker(
    fresh_deployment: Deployment, spawned: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "flower.log"
    proc = _spawn(["flower", "--port", str(port)], fresh_deployment.env, log)
    spawned.append(proc)

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(healthy, 60, interval=0.2, message="flower")
    text = log.read_text()
    assert f"http://127.0.0.1:{port}" in text and fresh_deployment.settings.namespace in text
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


# --- the demo ------------------------------------------------------------------------


def test_demo_runs_the_workload_end_to_end(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTRT_TASK_EVENTS", "false")
    monkeypatch.setenv("COLUMNS", "200")

    result = cli("demo", "--timeout", "60")
    assert result.exit_code == 0, result.output
    text = result.stdout

    # every run the demo submitted is finished, in the SQLite file under AGENTRT_HOME
    svc = Runtime.from_settings(Settings(redis_url=redis_url, home=tmp_path))
    try:
        runs = svc.list_runs(limit=1000)
        canary = [svc.store.get_run(r.run_id) for r in runs if r.goal.endswith("(canary)")]
    finally:
        svc.close()
    assert len(runs) >= 27 and all(r.status.value in FINISHED for r in runs)
    assert {(r.tenant_id, r.route) for r in runs} >= {
        (t, r) for t in TENANTS for r in (TRIAGE, COUNTER)
    }
    reasons = {r.stop_reason or "" for r in runs}
    for expected in (
        "completed",
        "policy_denied:refund_cap",
        "approval_denied:demo:reviewer",
        "budget_exhausted:tool_calls",
        "invalid_proposal:invalid_args",
        "failed:backend_unavailable",
        "refused:tenant_not_in_scope",
    ):
        assert expected in reasons
        assert expected in text  # the stop-reason table

    # the summary: spend per tenant, exactly-once counter, how to look closer
    assert "Spend per tenant" in text and all(t in text for t in TENANTS)
    match = re.search(
        r"counter 'demo' = (\d+); succeeded counter.increment side effects = (\d+)", text
    )
    assert match and match.group(1) == match.group(2) != "0"
    # one approval approved (its refund ran), one denied, and their latency
    assert "Approvals (decided by the demo's reviewer)" in text
    assert re.search(r"approval latency \(request -> decision\): p50 \d+ ms, p95 \d+ ms", text)
    approved = [r for r in runs if r.goal == "Refund 250 EUR"]
    assert [r.stop_reason for r in approved] == ["completed"]
    denied = next(r for r in runs if r.stop_reason == "policy_denied:refund_cap")
    assert f"agentrt trace {denied.run_id}" in text
    assert "agentrt flower" in text
    # the rollout act: a canary recorded on every run, a lever, a gated promotion
    assert len(canary) == 16 and all(r["stop_reason"] == "completed" for r in canary)
    assert {r["release"] for r in canary} <= {"refunds-2026-11", "refunds-2026-12"}
    disabled = [r for r in runs if r.goal.endswith("(tool disabled)")]
    assert [r.stop_reason for r in disabled] == ["policy_denied:tool_disabled"] * 2
    assert "ops disable-tool payments.refund" in text and "0 executions" in text
    assert "promote refunds-relaxed" in text and "refused" in text
    assert "active: refunds-2026-12" in text
    # the knowledge act: a retrieval with evidence (never another tenant's document), a
    # memory write resting on it, a delegation whose reply came back, the memory read back
    research = [r for r in runs if r.route == "support.research"]
    assert [r.status.value for r in research] == ["succeeded", "succeeded"]
    children = [r for r in runs if r.route == "support.summarize"]
    assert [r.status.value for r in children] == ["succeeded"]
    knowledge = re.search(r"retrieval: (\d+) evidence references", text)
    assert knowledge and int(knowledge.group(1)) >= 1
    assert "other tenants' documents shown: 0" in text
    assert re.search(r"memory write: mem_\S+ \(customers, 30d\) resting on [1-9]", text)
    assert f"delegation: child {children[0].run_id} on support.summarize succeeded" in text
    assert "child's reply, returned to the parent: 'Good news" in text
    assert re.search(r"a later run read [1-9]\d* memories through the memory source", text)
    # the demo stopped its workers
    assert "stopped 2 demo processes" in result.stderr


def test_demo_refuses_a_config_without_its_tenants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTRT_CONFIG", str(ROOT / "tests" / "config" / "runtime.yaml"))
    result = cli("demo")
    assert result.exit_code == 1
    assert "tenants.acme" in " ".join(result.stderr.split())
