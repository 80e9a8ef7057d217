"""Flower tells the truth: the Celery task events a real worker sends (what Flower shows)
say what the runtime did with each step - FAILURE for a dead-lettered step, RETRY for a
call the runtime retries, SUCCESS otherwise - with the run id and stop reason readable.

The events are captured as Flower captures them: ``app.events.Receiver`` in a thread.
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
from celery import signals
from celery.exceptions import Retry

from runtime.errors import StepDeadLettered, StepFailed, StepRetrying
from runtime.scheduling.scheduler import Item, item_of
from runtime.step.state import StepResult
from runtime.store.dead_letters import DeadLetterFilter
from tasks import verdicts
from tasks.app import AgentrtCelery, create_app
from tasks.messages import STEP_TASK, task_id
from tests.conftest import TEST_CONFIG, _database_url
from tests.support import Deployment, wait_for
from tests.test_chaining import chain_deployment

REPLY = {"type": "reply", "text": "done"}


def flaky(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "probe.flaky", "args": {"key": key, "by": 1}}


class EventLog:
    """Every event the workers send, in the order received (Flower's capture loop)."""

    def __init__(self, app: AgentrtCelery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._conn = app.connection_for_read()
        self._recv = app.events.Receiver(self._conn, handlers={"*": self._on})
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        self._recv.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        self._thread.start()
        # pub/sub keeps nothing for a late subscriber: ready once it hears its own event
        marker = uuid.uuid4().hex
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, enabled=True)

            def heard() -> bool:
                dispatcher.send("test-ready", marker=marker)
                return any(e.get("marker") == marker for e in self.snapshot())

            wait_for(heard, timeout=30, interval=0.2, message="the event receiver")

    def stop(self) -> None:
        self._recv.should_stop = True
        self._thread.join(timeout=10)
        self._conn.release()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def of_run(self, run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(type, task id, event) of the run's step tasks, in order."""
        return [
            (e["type"], e["uuid"], e)
            for e in self.snapshot()
            if str(e.get("uuid", "")).startswith(f"{run_id}-")
        ]


@pytest.fixture(scope="module")
def flower_dep(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Deployment, EventLog, AgentrtCelery]]:
    """A deployment whose worker sends task events (as one Flower watches), with a
    receiver capturing them."""
    tmp: Path = tmp_path_factory.mktemp(f"flower-{backend}")
    dep = Deployment.create(
        name=f"fl{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=TEST_CONFIG,
        home=tmp,
        extra_env={"AGENTRT_TASK_EVENTS": "true"},
    )
    app = create_app(dep.settings)
    log = EventLog(app)
    try:
        log.start()
        dep.start_worker(concurrency=2)
        yield dep, log, app
    finally:
        log.stop()
        dep.close()


def finished(log: EventLog, run_id: str, steps: int) -> bool:
    """Every step task of the run has ended (succeeded, failed or retried)."""
    ended = {t for kind, t, _ in log.of_run(run_id) if kind in _ENDS}
    return ended >= {task_id(run_id, n) for n in range(steps)}


_ENDS = {"task-succeeded", "task-failed", "task-retried"}


def ends(log: EventLog, run_id: str) -> list[tuple[str, str]]:
    return [(kind, t) for kind, t, _ in log.of_run(run_id) if kind in _ENDS]


def started_once(log: EventLog, run_id: str) -> None:
    """Each step task ran once: Celery re-sent nothing (a raised Retry publishes nothing)."""
    started = [t for kind, t, _ in log.of_run(run_id) if kind == "task-started"]
    assert len(started) == len(set(started)), started


def unacked(app: AgentrtCelery, dep: Deployment) -> int:
    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return int(client.hlen(dep.svc.keys.broker_prefix() + "unacked"))
    finally:
        client.close()


def calls(dep: Deployment, key: str) -> int:
    return int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"flaky:{key}:calls")) or 0)


def test_flower_sees_success_retry_and_dead_letter(
    flower_dep: tuple[Deployment, EventLog, AgentrtCelery],
) -> None:
    dep, log, app = flower_dep
    svc = dep.svc

    # a normal run: SUCCESS, its result names the run, the step and the stop reason
    plain = dep.submit_script([REPLY], route="r.retry")
    assert svc.wait(plain.run_id, timeout=60).status == "succeeded"
    wait_for(lambda: finished(log, plain.run_id, 1), message="the plain run's events")
    assert ends(log, plain.run_id) == [("task-succeeded", task_id(plain.run_id, 0))]
    (result,) = [e["result"] for k, _, e in log.of_run(plain.run_id) if k == "task-succeeded"]
    assert f"'run_id': '{plain.run_id}'" in result and "'stop_reason': 'completed'" in result

    # a call that fails once: its step ends in RETRY (not a new SUCCESS); the runtime's
    # retry, the next step, succeeds and the effect happened once
    once = f"o{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail_once:{once}"), "1")
    retried = dep.submit_script([flaky(once), REPLY], route="r.retry")
    assert svc.wait(retried.run_id, timeout=60).status == "succeeded"
    wait_for(lambda: finished(log, retried.run_id, 2), message="the retried run's events")
    r0, r1 = task_id(retried.run_id, 0), task_id(retried.run_id, 1)
    got = ends(log, retried.run_id)
    assert got[:2] == [("task-retried", r0), ("task-succeeded", r1)], got
    assert ("task-succeeded", r0) not in got and ("task-failed", r0) not in got
    events = {(k, t): e for k, t, e in log.of_run(retried.run_id)}
    why = events[("task-retried", r0)]["exception"]
    assert why.startswith("StepRetrying(") and retried.run_id in why
    assert "tool_retry:backend_unavailable" in why
    assert "'outcome': 'tool_succeeded'" in events[("task-succeeded", r1)]["result"]
    assert calls(dep, once) == 2 and dep.counter(once) == 1
    started_once(log, retried.run_id)

    # a call that keeps failing: two RETRYs, then the dead-lettered step ends in FAILURE
    # with our exception; the run and its DLQ entry are as before, nothing ran twice
    down = f"d{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{down}"), "1")
    parked = dep.submit_script([flaky(down), REPLY], route="r.retry")
    done = svc.wait(parked.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "dead_lettered:exhausted"
    wait_for(lambda: finished(log, parked.run_id, 3), message="the dead-lettered run's events")
    ids = [task_id(parked.run_id, n) for n in range(3)]
    assert ends(log, parked.run_id) == [
        ("task-retried", ids[0]),
        ("task-retried", ids[1]),
        ("task-failed", ids[2]),
    ]
    failed = {(k, t): e for k, t, e in log.of_run(parked.run_id)}[("task-failed", ids[2])]
    assert failed["exception"].startswith("StepDeadLettered(")
    assert parked.run_id in failed["exception"] and "dead_lettered:exhausted" in failed["exception"]
    assert calls(dep, down) == 3 and dep.counter(down) == 0
    started_once(log, parked.run_id)
    # the task_failure handler saw our own exception and filed nothing more
    entries = svc.dead_letters.find(DeadLetterFilter(run_id=parked.run_id), limit=None)
    assert [(e["dl_class"], e["error_type"]) for e in entries] == [
        ("exhausted", "backend_unavailable")
    ]
    # a message that is no step (its run does not exist): FAILURE, kept as poison, never run
    poison_id = uuid.uuid4().hex
    svc.publisher.app.send_task(  # type: ignore[attr-defined]
        STEP_TASK, kwargs={"run_id": uuid.uuid4().hex, "step": 0}, task_id=poison_id
    )

    def poison_failed() -> str | None:
        return next(
            (
                e["exception"]
                for e in log.snapshot()
                if e.get("uuid") == poison_id and e["type"] == "task-failed"
            ),
            None,
        )

    shown = wait_for(poison_failed, message="the poison message's task-failed event")
    assert shown.startswith("MessagePoisoned(") and "unknown_run" in shown
    (entry,) = [
        e
        for e in svc.dead_letters.find(DeadLetterFilter(dl_class="poison"), limit=None)
        if e["task_id"] == poison_id
    ]
    assert entry["id"] in shown
    # every message was acked (FAILURE and RETRY too): none waits to be redelivered
    # (well within the visibility timeout, after which an unacked one would come back)
    wait_for(lambda: unacked(app, dep) == 0, timeout=20, message="no unacked step message")
    svc.tool_redis.delete(svc.keys.demo(f"fail:{down}"))


def test_a_step_kept_for_a_chain_is_published_when_the_task_ends_in_retry_or_failure(
    redis_url: str, tmp_path: Path
) -> None:
    dep = chain_deployment(redis_url, tmp_path, chain_window_s=20, chain_max_steps=3)
    try:
        # Given runs queued before one worker process runs them, each call failing for good
        # (two RETRYs then a FAILURE per run), so a task that ends in RETRY or FAILURE has
        # often had the next run's step dispatched into the slot it freed, for it to keep
        keys = [f"k{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for key in keys:
            dep.svc.tool_redis.set(dep.svc.keys.demo(f"fail:{key}"), "1")
        runs = [dep.submit_script([flaky(key), REPLY], route="r.retry") for key in keys]
        worker = dep.start_worker(concurrency=1)
        done = dep.wait_all([r.run_id for r in runs], timeout=120)
        assert {v.stop_reason for v in done.values()} == {"dead_lettered:exhausted"}
        # Then the kept step was published before the task ended, and ran at once: never
        # left to wait until its slot's lease expired
        log = worker.log()
        assert "(kept for this task) before ending as Retry" in log, log[-3000:]
        assert "expired: queued again" not in log
        for key, run in zip(keys, runs, strict=True):
            assert calls(dep, key) == 3  # each attempt once
            steps = [e.step for e in dep.svc.trace(run.run_id) if e.kind == "step_started"]
            assert steps == [0, 1, 2], steps
    finally:
        dep.close()


def test_the_failure_handler_files_a_real_failure_and_skips_our_own(
    fresh_deployment: Deployment,
) -> None:
    # no worker: the runs stay queued at step 0, and the handler is called as Celery does
    dep, svc = fresh_deployment, fresh_deployment.svc
    app = create_app(dep.settings)
    try:
        step_task = app.tasks[STEP_TASK]
        real, ours = dep.submit_script([REPLY]), dep.submit_script([REPLY])
        for run_id, exc in (
            (real.run_id, RuntimeError("a bug escaped")),
            (ours.run_id, StepDeadLettered(ours.run_id, 0, "dead_lettered:exhausted", "x")),
        ):
            signals.task_failure.send(
                sender=step_task,
                task_id=task_id(run_id, 0),
                exception=exc,
                kwargs={"run_id": run_id, "step": 0},
            )
        # a real failure ends its run in the dead-letter queue (the handler is live) ...
        assert svc.get(real.run_id).stop_reason == "dead_lettered:exhausted"
        (entry,) = svc.dead_letters.find(DeadLetterFilter(run_id=real.run_id), limit=None)
        assert entry["error_type"] == "RuntimeError"
        # ... our own exception says the runtime handled the step already: nothing is filed
        assert svc.get(ours.run_id).status == "queued"
        assert svc.dead_letters.find(DeadLetterFilter(run_id=ours.run_id), limit=None) == []
    finally:
        app.runtime_service().close()


def test_a_step_under_an_unknown_release_says_its_run_failed(
    fresh_deployment: Deployment,
) -> None:
    # no worker: the step runs here; the run names a release no config defines
    dep, svc = fresh_deployment, fresh_deployment.svc
    run = dep.submit_script([REPLY])
    with svc.store.engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE runs SET release = 'gone' WHERE run_id = :r"), {"r": run.run_id}
        )
    try:
        result = svc.steps.run(item_of(svc.store.get_run(run.run_id), 0))
        again = svc.steps.run(item_of(svc.store.get_run(run.run_id), 0))
    finally:
        # this process ran a step: its heartbeat thread goes before the deployment does
        svc.leases.liveness.stop()
    assert (result.outcome, result.run_status, result.stop_reason) == (
        "unknown_release",
        "failed",
        "failed:unknown_release",
    )
    assert svc.get(run.run_id).stop_reason == "failed:unknown_release"
    failed = verdicts.ending(item_of(svc.store.get_run(run.run_id), 0), result)
    assert type(failed) is StepFailed and failed.stop_reason == "failed:unknown_release"
    # a copy delivered again finds the step done: it decides nothing, so it is no failure
    assert again.run_status is None and verdicts.ending(ITEM, again) is None


# --- the mapping, without a worker ----------------------------------------------------------

ITEM = Item("a" * 32, 4, "t1", "r.retry", "normal")


def test_a_run_that_ended_failed_ends_the_task_in_failure() -> None:
    parked = verdicts.ending(
        ITEM,
        StepResult(
            "dead_lettered:exhausted", run_status="failed", stop_reason="dead_lettered:exhausted"
        ),
    )
    assert isinstance(parked, StepDeadLettered)
    assert (parked.run_id, parked.step, parked.failure_class) == ("a" * 32, 4, "exhausted")
    assert (
        str(parked) == f"run {'a' * 32} step 4: dead_lettered:exhausted (failure class exhausted)"
    )
    failed = verdicts.ending(
        ITEM, StepResult("tool_failed:x", run_status="failed", stop_reason="failed:x")
    )
    assert type(failed) is StepFailed and failed.failure_class == "x"
    timed = verdicts.ending(
        ITEM, StepResult("timed_out", run_status="failed", stop_reason="timed_out")
    )
    assert type(timed) is StepFailed and timed.failure_class == "timed_out"
    # a pool process hands its exception back pickled: it comes back the same
    again = pickle.loads(pickle.dumps(parked))
    assert type(again) is StepDeadLettered and str(again) == str(parked)


def test_a_retried_call_ends_the_task_in_retry_and_the_rest_in_success() -> None:
    retry = verdicts.ending(
        ITEM,
        StepResult("tool_retry:boom", next_step=5, run_status="running", countdown_s=0.5),
    )
    assert isinstance(retry, Retry) and retry.when == 0.5
    assert isinstance(retry.exc, StepRetrying) and retry.exc.next_step == 5
    assert "step 4: tool_retry:boom; retried as step 5" in str(retry)
    again = pickle.loads(pickle.dumps(retry))
    assert isinstance(again.exc, StepRetrying) and str(again.exc) == str(retry.exc)
    # a deferral (rate limit, lock) holds the same call: not a failure, not a retry
    for result in (
        StepResult("rate_limited:model", next_step=5, run_status="running", countdown_s=1.0),
        StepResult("completed", run_status="succeeded", stop_reason="completed"),
        StepResult("policy_denied:r", run_status="refused", stop_reason="policy_denied:r"),
        StepResult("duplicate_skipped"),
    ):
        assert verdicts.ending(ITEM, result) is None, result
    assert verdicts.summary(ITEM, StepResult("completed", stop_reason="completed")) == {
        "outcome": "completed",
        "run_id": "a" * 32,
        "step": 4,
        "stop_reason": "completed",
        "next_step": None,
    }
