"""Every process agrees on the config: it has one owner, and nobody else changes it.

Before, every process published its own file's limits at start-up: a read-only CLI
command with another file wiped a route's limit, and a web app with a newer file raised
the workers' limit of 2 to 7 concurrent steps. Now only ``agentrt config apply`` (or a
worker started with ``--apply-config``, or a deployment's first worker) publishes; other
processes with another file say so and enforce the applied config; a worker whose file
differs refuses to start; running workers follow a newly applied config at their next
step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.config import config_digest, load_config
from runtime.wiring import Runtime
from tests.conftest import TEST_CONFIG
from tests.support import ROOT, Deployment, Gate, wait_for


def write_config(path: Path, change: Any = None) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    if change is not None:
        change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wider(data: dict[str, Any]) -> None:
    """A newer file: r.limited allows 8 at once, tenant tcap has no cap."""
    data["version"] = "test-wider"
    data["routes"]["r.limited"]["concurrency_limit"] = 8
    data["tenants"]["tcap"] = {}


@pytest.fixture
def owned(redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment.create(
        name=f"o{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=write_config(tmp_path / "applied.yaml"),
        home=tmp_path,
    )
    try:
        yield dep
    finally:
        dep.close()


def published(dep: Deployment) -> dict[str, Any]:
    r, p = dep.svc.redis, dep.svc.keys.sched()
    return {
        "config": r.hgetall(dep.svc.keys.published_config()),
        "rlimit": r.hgetall(f"{p}:rlimit"),
        "tcap": r.hgetall(f"{p}:tcap"),
    }


def cli(
    dep: Deployment, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **dep.env}
    if config is not None:
        env["AGENTRT_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_processes_with_another_file_publish_nothing(owned: Deployment, tmp_path: Path) -> None:
    dep = owned
    before = published(dep)
    other = write_config(tmp_path / "other.yaml", wider)
    # a read-only command and a command that builds the whole runtime, both with another file
    assert cli(dep, "runs", "list", config=other).returncode == 0
    assert cli(dep, "queues", config=other).returncode == 0
    submit = cli(dep, "submit", "--tenant", "t1", "--route", "r.basic", "--goal", "drift",
                 "-i", '{"script": []}', config=other)  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    assert "config drift" in submit.stderr and "test-wider" in submit.stderr
    # a web app with the newer file
    app = Runtime.from_settings(dep.settings.model_copy(update={"config": other}))
    try:
        assert app.drift is not None and app.drift.file_version == "test-wider"
        # it enforces the applied config, not its own file
        assert app.config.routes["r.limited"].concurrency_limit == 2
    finally:
        app.close()
    # the published limits are what was applied, untouched
    assert published(dep) == before
    assert before["rlimit"][b"r.limited"] == b"2" and before["tcap"][b"tcap"] == b"1"


@pytest.mark.slow
def test_a_web_app_with_a_newer_file_cannot_raise_the_workers_limit(
    owned: Deployment, tmp_path: Path
) -> None:
    dep = owned
    dep.start_worker(concurrency=4)
    app = Runtime.from_settings(
        dep.settings.model_copy(update={"config": write_config(tmp_path / "new.yaml", wider)})
    )
    key = f"w{uuid.uuid4().hex[:6]}"
    probe = {"type": "tool_call", "tool": "probe.work", "args": {"key": key, "ms": 200}}
    try:
        runs = [app.submit("t1", "r.limited", "limit test", {"script": [probe, probe]},
                           actor="web") for _ in range(8)]  # fmt: skip
    finally:
        app.close()
    done = dep.wait_all([r.run_id for r in runs], timeout=120)
    assert {v.status.value for v in done.values()} == {"succeeded"}
    # measured inside the tool: never more than the applied limit of 2
    assert int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"probe:{key}:max")) or 0) == 2


def worker_cmd() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-c", "1",
            "--without-mingle", "--without-gossip"]  # fmt: skip


def test_a_worker_with_another_file_refuses_to_start(owned: Deployment, tmp_path: Path) -> None:
    dep = owned
    other = write_config(tmp_path / "other.yaml", wider)
    env = {**os.environ, **dep.env, "AGENTRT_CONFIG": str(other)}
    done = subprocess.run(worker_cmd(), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config drift" in done.stderr and "--apply-config" in done.stderr
    assert published(dep)["rlimit"][b"r.limited"] == b"2"


@pytest.mark.slow
def test_a_worker_told_to_take_over_applies_its_file(owned: Deployment, tmp_path: Path) -> None:
    dep = owned
    other = write_config(tmp_path / "other.yaml", wider)
    dep.env["AGENTRT_CONFIG"] = str(other)
    dep.env["AGENTRT_APPLY_CONFIG"] = "1"
    dep.start_worker(concurrency=1)
    digest = config_digest(load_config(other))
    assert published(dep)["config"][b"digest"] == digest.encode()
    assert published(dep)["rlimit"][b"r.limited"] == b"8"
    applied = dep.svc.deployments.applied()
    assert applied is not None and applied.digest == digest
    assert applied.actor.startswith("worker:")


def test_config_apply_records_and_publishes(owned: Deployment, tmp_path: Path) -> None:
    dep = owned
    other = write_config(tmp_path / "other.yaml", wider)
    first = cli(dep, "config", "apply", str(other), "--actor", "ops:ann")
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout and "test-wider" in first.stdout
    assert published(dep)["rlimit"][b"r.limited"] == b"8"
    applied = dep.svc.deployments.applied()
    assert applied is not None and applied.actor == "ops:ann"
    again = cli(dep, "config", "apply", str(other))
    assert again.returncode == 0 and "already applied" in again.stdout
    # a file that does not pass the checks is not applied, and nothing changes
    broken = tmp_path / "broken.yaml"
    broken.write_text(other.read_text().replace("concurrency_limit: 8", "concurrency_limit: -1"))
    refused = cli(dep, "config", "apply", str(broken))
    assert refused.returncode == 1 and "concurrency_limit" in refused.stderr
    assert published(dep)["rlimit"][b"r.limited"] == b"8"


@pytest.mark.slow
def test_running_workers_follow_a_newly_applied_config_at_the_next_step(
    owned: Deployment, tmp_path: Path
) -> None:
    dep = owned
    worker = dep.start_worker(concurrency=2)
    gate = Gate(dep)
    gate.close_after(0)
    key = f"r{uuid.uuid4().hex[:6]}"
    probe = {"type": "tool_call", "tool": "probe.work", "args": {"key": key, "ms": 10}}
    # Given a run held at a gate, whose next step calls probe.work
    run = dep.submit_script([gate.step(), probe, {"type": "reply", "text": "ok"}], route="r.open")
    wait_for(lambda: gate.held() == 1, timeout=60, message="the run at the gate")

    # When a config that disables probe.work is applied while the worker runs
    def disable(data: dict[str, Any]) -> None:
        data["version"] = "test-no-probe"
        data["tools"]["probe.work"]["enabled"] = False

    applied = cli(dep, "config", "apply", str(write_config(tmp_path / "v2.yaml", disable)))
    assert applied.returncode == 0, applied.stderr
    gate.open()
    # Then the run's next step already runs under it: the call is refused, never executed
    done = dep.wait_all([run.run_id], timeout=60)[run.run_id]
    assert done.status.value == "refused" and done.stop_reason == "policy_denied:tool_disabled"
    assert dep.svc.tool_redis.llen(dep.svc.keys.demo(f"probe:{key}:starts")) == 0
    # by the same worker, without a restart
    assert worker.proc.poll() is None
    assert "now enforces config test-no-probe" in worker.log()


@pytest.mark.slow
def test_runs_submitted_before_the_first_worker_start_without_waiting(
    redis_url: str, tmp_path: Path
) -> None:
    # Given a new deployment nobody applied a config to, and runs submitted before any
    # worker ever started (they are stored in SQL; the state does not exist yet)
    dep = Deployment.create(
        name=f"n{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=write_config(tmp_path / "file.yaml"),
        home=tmp_path,
        apply_config=False,
    )
    try:
        runs = [dep.submit_script([{"type": "reply", "text": "hi"}]) for _ in range(3)]
        assert {r.status.value for r in runs} == {"queued"}
        assert dep.svc.deployments.applied() is None
        # When the first worker starts, it applies its file and builds the state at once: no
        # step can have been in flight in a deployment that never had a state
        worker = dep.start_worker(concurrency=1)
        done = dep.wait_all([r.run_id for r in runs], timeout=60)
        assert {v.status.value for v in done.values()} == {"succeeded"}
        assert "for steps in flight" not in worker.log()
        applied = dep.svc.deployments.applied()
        assert applied is not None and applied.actor.startswith("worker:")
    finally:
        dep.close()
