"""Pools that cannot stop a tool call are refused: a call that outlives its timeout would
keep running after its slot, lock and bulkhead place were given back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tasks.app import unstoppable_pool
from tests.support import ROOT, Deployment


def test_a_worker_refuses_a_pool_that_cannot_stop_a_call(fresh_deployment: Deployment) -> None:
    pool = "threads"
    cmd = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-P", pool, "-c", "2",
           "--without-mingle", "--without-gossip"]  # fmt: skip
    env = {**os.environ, **fresh_deployment.env}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"the {pool} pool cannot stop a tool call" in done.stderr
    assert "ready." not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("module", "refused"),
    [
        ("celery.concurrency.thread", "threads"),
        ("celery.concurrency.gevent", "gevent"),
        ("celery.concurrency.eventlet", "eventlet"),
        ("celery.concurrency.prefork", None),
        ("celery.concurrency.solo", None),
    ],
)
def test_which_pools_are_refused(module: str, refused: str | None) -> None:
    # gevent and eventlet are not installed here: their pool classes are named by module
    pool_cls = type("TaskPool", (), {"__module__": module})
    assert unstoppable_pool(pool_cls) == refused


def test_the_cli_offers_only_pools_that_can_stop_a_call() -> None:
    from typer.testing import CliRunner

    from runtime.cli.main import app

    result = CliRunner().invoke(app, ["worker", "--pool", "threads"])
    assert result.exit_code == 2
    assert "threads" in result.output and "prefork" in result.output
