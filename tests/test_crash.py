"""SIGKILL workers in the middle of steps: nothing lost, no side effect twice.

``counter.increment`` is a bare INCR; only the runtime's idempotency (the side-effect
record plus the journal written in the same Redis transaction as the INCR) keeps it
exactly-once when a step is delivered again.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import Deployment, Hold, wait_for


def increment(key: str, **kw: Any) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, **kw}}


def started_effects(dep: Deployment, run_ids: list[str]) -> list[dict[str, Any]]:
    return [e for e in dep.svc.store.side_effects(status="started") if e["run_id"] in run_ids]


def assert_exactly_once(dep: Deployment, key: str, run_ids: list[str], per_run: int) -> None:
    effects = [
        e for e in dep.svc.store.side_effects(tool="counter.increment") if e["run_id"] in run_ids
    ]
    succeeded = [e for e in effects if e["status"] == "succeeded"]
    assert len(succeeded) == per_run * len(run_ids), effects
    # every accepted call happened once: the counter equals the succeeded records
    assert dep.counter(key) == len(succeeded)
    assert len({e["idempotency_key"] for e in succeeded}) == len(succeeded)


@pytest.mark.slow
def test_killed_pool_processes_redeliver_steps_without_repeating_effects(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    for _ in range(2):
        dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    # Given runs whose increments are slow before the write, and slow after it
    runs = [
        dep.submit_script(
            [
                increment(key, delay_ms=1200),
                increment(key, after_ms=1200),
                {"type": "reply", "text": "ok"},
            ]
        )
        for _ in range(8)
    ]
    run_ids = [r.run_id for r in runs]

    # When every pool process is SIGKILLed while steps are mid-call, three times over
    def kill_mid_call() -> list[int]:
        # (the pool processes killed last round must have been replaced first); checked and
        # killed in one go, so a pool process replaced in between is not a failure
        if not (started_effects(dep, run_ids) and all(w.children() for w in dep.workers)):
            return []
        return [pid for w in dep.workers for pid in w.kill_children()]

    for _ in range(3):
        assert wait_for(kill_mid_call, timeout=60, message="a step mid-call to kill")

    # Then every run completes and each increment happened exactly once
    done = dep.wait_all(run_ids, timeout=120)
    assert {v.status for v in done.values()} == {"succeeded"}, {
        v.stop_reason for v in done.values()
    }
    assert_exactly_once(dep, key, run_ids, per_run=2)
    kinds = {e.kind for run_id in run_ids for e in dep.svc.trace(run_id)}
    assert "tool_retry_unknown" in kinds  # some step was re-run after dying mid-call
    retried = dep.svc.store.spend(tenant_id="t1")["retries"]
    assert retried >= 1  # redeliveries are counted in the budget's retries dimension


@pytest.mark.slow
def test_killed_worker_main_process_steps_move_to_another_worker(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    doomed = dep.start_worker(concurrency=2)
    key = f"k{uuid.uuid4().hex[:8]}"
    runs = [
        dep.submit_script([increment(key, delay_ms=2500), {"type": "reply", "text": "ok"}])
        for _ in range(2)
    ]
    run_ids = [r.run_id for r in runs]
    wait_for(
        lambda: len(started_effects(dep, run_ids)) == 2, timeout=60, message="both steps mid-call"
    )

    # When the whole worker (main process and pool) is SIGKILLed, its unacked messages
    # come back after the visibility timeout and a second worker finishes the runs
    doomed.kill_all()
    dep.start_worker(concurrency=2)
    done = dep.wait_all(run_ids, timeout=150)
    assert {v.status for v in done.values()} == {"succeeded"}
    assert_exactly_once(dep, key, run_ids, per_run=1)


@pytest.mark.slow
def test_irreversible_call_with_unknown_outcome_is_not_repeated(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    worker = dep.start_worker(concurrency=1)
    # Given an irreversible call that stays inside until the test lets it go (so the kill
    # lands mid-call however late it comes)
    hold = Hold(dep)
    hold.on()
    try:
        run = dep.submit_script([hold.step("probe.held_irreversible"), {"type": "reply",
                                 "text": "refunded"}], route="r.held")  # fmt: skip
        wait_for(lambda: hold.entered() == 1, message="the irreversible call mid-call")
        # When its pool process is SIGKILLed there
        worker.kill_children()
    finally:
        hold.off()

    done = dep.svc.wait(run.run_id, timeout=60)
    # Then the runtime, which cannot know whether the call took effect, stops instead of
    # calling it twice
    assert done.status == "failed" and done.stop_reason == "failed:side_effect_unknown"
    (effect,) = dep.svc.store.side_effects(run_id=run.run_id)
    assert effect["status"] == "unknown"
    assert hold.entered() == 1
