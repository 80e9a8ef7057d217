"""The ``sync`` execution mode (``runtime.sync_runs``): the caller's process runs its run's
steps with the worker's step runner, under the route's ``sync_timeout_s``, through the
scheduler's slots; past the deadline the rest runs on workers, each step once. Real Redis,
SQL (SQLite and PostgreSQL), a Celery worker and, over HTTP, a uvicorn server."""

from __future__ import annotations

import concurrent.futures
import copy
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import report_context
from runtime.contract import RunView
from tests.api_support import Api, serve
from tests.schedule_tools import base_config, schedule_deployment
from tests.support import Deployment, WorkerProcess, wait_for

REPLY = {"type": "reply", "text": "done"}
#: long enough that a slow machine still finishes a short run in time
GENEROUS_S = 60
#: shorter than the first step of a slow run (``work(ms=SLOW_MS)``)
SHORT_S = 0.3
SLOW_MS = 1000


def work(key: str, ms: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "probe.work", "args": {"key": key, "ms": ms}}


def sync_config() -> dict[str, Any]:
    """``r.limited`` (concurrency 2) may run sync with a generous timeout; ``r.quick`` is
    sync by default with a timeout shorter than one slow step."""
    data = base_config()
    limited = data["routes"]["r.limited"]
    limited.update(execution_modes_allowed=["sync"], sync_timeout_s=GENEROUS_S)
    quick = copy.deepcopy(limited)
    quick.update(execution_mode="sync", execution_modes_allowed=[], sync_timeout_s=SHORT_S)
    data["routes"]["r.quick"] = quick
    return data


@pytest.fixture
def dep(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    with schedule_deployment(request, backend, redis_url, tmp_path, sync_config()) as d:
        yield d


def start_worker(dep: Deployment, concurrency: int) -> WorkerProcess:
    """A worker whose capacity the scheduler knows. Dispatching is bounded by the live
    capacity workers report (their first heartbeat comes just after Celery's "ready."):
    a step admitted before it stays queued, and the worker's pump, not the caller, then
    runs it. These tests are about where each step runs, so they wait for it."""
    worker = dep.start_worker(concurrency=concurrency)
    wait_for(
        lambda: dep.svc.scheduler.capacity() >= concurrency,
        timeout=60,
        message="the worker's capacity in the scheduler",
    )
    return worker


def submit(dep: Deployment, script: list[Any], route: str = "r.limited", **kw: Any) -> RunView:
    return dep.svc.submit(
        "t1", route, "sync test", {"script": script}, actor="tester",
        request_id=uuid.uuid4().hex, **kw,
    )  # fmt: skip


def starts(dep: Deployment, run_id: str) -> list[tuple[int | None, Any]]:
    """(step, the instance that ran it in-process or None) of each ``step_started``."""
    return [(e.step, e.data.get("sync")) for e in dep.svc.trace(run_id) if e.kind == "step_started"]


def probe_max(dep: Deployment, key: str) -> int:
    return int(dep.svc.redis.get(dep.svc.keys.demo(f"probe:{key}:max")) or 0)


def test_a_sync_run_on_a_fast_route_completes_in_the_callers_process(dep: Deployment) -> None:
    worker = start_worker(dep, 1)
    key = uuid.uuid4().hex[:8]
    run = submit(dep, [work(key), work(key), REPLY], execution_mode="sync")
    # returned terminal, every step run by this process (no Celery task for any of them)
    assert run.status == "succeeded" and run.execution_mode == "sync", run
    me = dep.svc.leases.liveness.instance()
    assert starts(dep, run.run_id) == [(0, me), (1, me), (2, me)]
    checkpoints = [e.step for e in dep.svc.trace(run.run_id) if e.kind == "checkpoint"]
    assert checkpoints == [0, 1, 2]
    # the steps' error-report notes ended with them: this thread serves other requests next
    assert report_context.tags() == {} and report_context.secrets() == ()
    # the worker runs other runs' steps, never this one's
    other = submit(dep, [REPLY])
    assert dep.svc.wait(other.run_id, timeout=60).status == "succeeded"
    assert other.run_id in worker.log() and run.run_id not in worker.log()


def test_a_sync_run_past_its_timeout_returns_and_finishes_on_the_worker(dep: Deployment) -> None:
    key = uuid.uuid4().hex[:8]
    worker = start_worker(dep, 1)
    # the first step alone outlasts the route's sync_timeout_s: no further step starts here
    run = submit(dep, [work(key, SLOW_MS), work(key), work(key), REPLY], route="r.quick")
    assert run.execution_mode == "sync"
    assert run.status in ("queued", "running"), run
    done = dep.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded"
    started = starts(dep, run.run_id)
    # each step started exactly once: the first here, the rest on the worker
    assert Counter(step for step, _ in started) == {0: 1, 1: 1, 2: 1, 3: 1}, started
    me = dep.svc.leases.liveness.instance()
    assert started[0] == (0, me)
    assert [who for _, who in started[1:]] == [None, None, None]
    assert f"{run.run_id}-0" not in worker.log()


def test_a_sync_run_admitted_past_its_timeout_still_starts_its_first_step_here(
    dep: Deployment,
) -> None:
    """Admission on a loaded database may take the whole ``sync_timeout_s``: the step the
    caller was given still starts here (one step past the timeout, as documented) and the
    rest goes to the worker, each step once."""
    key = uuid.uuid4().hex[:8]
    start_worker(dep, 1)
    sync_runs = dep.svc.sync_runs
    reads = iter([0.0])
    # the first reading fixes the deadline; every later one is long past it
    sync_runs.clock = lambda: next(reads, 1e9)
    try:
        run = submit(dep, [work(key), work(key), REPLY], route="r.quick")
    finally:
        sync_runs.clock = time.monotonic
    assert dep.svc.wait(run.run_id, timeout=60).status == "succeeded"
    me = dep.svc.leases.liveness.instance()
    assert starts(dep, run.run_id) == [(0, me), (1, None), (2, None)]


def test_route_concurrency_holds_with_sync_and_worker_runs_together(dep: Deployment) -> None:
    key = uuid.uuid4().hex[:8]
    script = [work(key, 150), work(key, 150), work(key, 150), REPLY]
    start_worker(dep, 2)
    starts_key = dep.svc.keys.demo(f"probe:{key}:starts")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # three sync callers on a route of 2 slots: two take theirs at admission
        calls = [pool.submit(submit, dep, script, execution_mode="sync") for _ in range(3)]
        wait_for(lambda: dep.svc.redis.llen(starts_key) >= 1, timeout=60, message="a sync step")
        # ...and worker runs compete for the same slots while they run
        queued = [submit(dep, script) for _ in range(4)]
        synced = [call.result(timeout=120) for call in calls]
    run_ids = [r.run_id for r in queued + synced]
    done = dep.wait_all(run_ids, timeout=120)
    assert {v.status.value for v in done.values()} == {"succeeded"}
    # never more than the route's 2 steps at once, measured inside the tool, across the
    # worker's processes and the three sync callers
    assert 1 <= probe_max(dep, key) <= 2
    for run_id in run_ids:
        counts = Counter(step for step, _ in starts(dep, run_id))
        assert counts == {0: 1, 1: 1, 2: 1, 3: 1}, (run_id, counts)
    me = dep.svc.leases.liveness.instance()
    here = [step for r in synced for step, who in starts(dep, r.run_id) if who == me]
    assert here, "no sync step ran in the caller's process"
    # a worker run's steps never run in a sync caller
    assert all(who is None for r in queued for _, who in starts(dep, r.run_id))


def test_http_answers_200_with_the_terminal_run_or_202_with_the_run(dep: Deployment) -> None:
    start_worker(dep, 1)
    key = uuid.uuid4().hex[:8]
    with serve(dep) as api:
        c = client(api)
        fast = {"route": "r.limited", "goal": "g", "execution_mode": "sync",
                "input": {"script": [work(key), REPLY]}}  # fmt: skip
        answer = c.post("/v1/runs", json=fast)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "succeeded"
        assert answer.headers["Location"] == f"/v1/runs/{answer.json()['runId']}"
        slow = {"route": "r.quick", "goal": "g",
                "input": {"script": [work(key, SLOW_MS), work(key), REPLY]}}  # fmt: skip
        answer = c.post("/v1/runs", json=slow)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] in ("queued", "running") and body["executionMode"] == "sync"
        assert answer.headers["Location"] == f"/v1/runs/{body['runId']}"

        def finished() -> Any:
            run = c.get(f"/v1/runs/{body['runId']}").json()
            return run if run["status"] == "succeeded" else None

        wait_for(finished, timeout=60, message="the rest of the sync run on the worker")
        # a mode the route does not allow is refused, as for submit
        bad = c.post("/v1/runs", json={**fast, "route": "r.basic"})
        assert bad.status_code >= 400 and bad.json()["reason"].endswith(
            "execution_mode_not_allowed"
        ), bad.text


def client(api: Api) -> Any:
    return api.client(api.key("t1"))
