"""Retries, circuit breakers, dead letters and compensation, on real workers.

``probe.flaky`` (tests/probe_tools.py) adds to a counter exactly once per idempotency key and
fails while a Redis key says so, so a test can break a dependency and then fix it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runtime.store.dead_letters import DeadLetterFilter
from tests.support import Deployment, Hold, wait_for


def flaky(key: str, by: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "probe.flaky", "args": {"key": key, "by": by}}


REPLY = {"type": "reply", "text": "done"}


def calls(dep: Deployment, key: str) -> int:
    return int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"flaky:{key}:calls")) or 0)


def entries_of(dep: Deployment, run_id: str, status: str | None = "open") -> list[dict[str, Any]]:
    return dep.svc.dead_letters.find(DeadLetterFilter(run_id=run_id, status=status), limit=None)


def test_exhausted_retries_dead_letter_and_an_operator_retry_completes_the_run(
    deployment: Deployment,
) -> None:
    dep, svc = deployment, deployment.svc
    key = f"f{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")

    # Given a dependency that is down, a run's call is tried max_attempts times, then parked
    run = dep.submit_script([flaky(key, by=5), REPLY], route="r.retry")
    done = svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "dead_lettered:exhausted"
    assert calls(dep, key) == 3  # quick: max_attempts 3
    (entry,) = entries_of(dep, run.run_id)
    assert entry["dl_class"] == "exhausted" and entry["error_type"] == "backend_unavailable"
    assert entry["tenant_id"] == "t1" and entry["route"] == "r.retry"
    assert entry["attempt_count"] == 3 and len(entry["attempts"]) == 3
    assert entry["version_set"]["model"] and entry["trace_id"] == run.trace_id
    assert entry["first_failed_at"] <= entry["last_failed_at"]
    kinds = [e.kind for e in svc.trace(run.run_id)]
    assert kinds.count("retry_scheduled") == 2 and "retries_exhausted" in kinds
    assert "dead_lettered" in kinds
    # one call, one idempotency key, however many attempts
    (effect,) = svc.store.side_effects(run_id=run.run_id)
    assert effect["status"] == "failed" and effect["attempts"] == 3
    assert svc.store.spend(run_id=run.run_id)["retries"] == 2  # the retries dimension
    assert dep.counter(key) == 0

    # When the dependency is fixed and an operator retries the entry
    svc.tool_redis.delete(svc.keys.demo(f"fail:{key}"))
    outcome = svc.dead_letters.retry(DeadLetterFilter(ids=(entry["id"],)), "ops:alice")
    assert outcome.retried == [entry["id"]]

    # Then the run resumes at the failed call and completes; the effect happened once
    done = svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    assert dep.counter(key) == 5
    (effect,) = svc.store.side_effects(run_id=run.run_id)
    assert effect["status"] == "succeeded" and effect["idempotency_key"].endswith(":0")
    assert svc.dead_letters.show(entry["id"])["status"] == "retried"
    audit = svc.dead_letters.store.audit_log(20)
    assert any(a["action"] == "dlq.retry" and a["actor"] == "ops:alice" for a in audit)
    # a second retry of the same entry is refused with a reason, nothing runs again
    again = svc.dead_letters.retry(DeadLetterFilter(ids=(entry["id"],), status=None), "ops:bob")
    assert again.retried == [] and entry["id"] in again.skipped


def test_a_non_retryable_error_is_not_retried(deployment: Deployment) -> None:
    dep, svc = deployment, deployment.svc
    key = f"f{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"reject:{key}"), "1")
    run = dep.submit_script([flaky(key), REPLY], route="r.retry")
    done = svc.wait(run.run_id, timeout=60)
    # bad_request is listed in quick.non_retryable: no retry, the route's error rule applies
    # (max_tool_errors 0: the run fails), and nothing waits in the dead-letter queue
    assert calls(dep, key) == 1
    assert done.status == "failed" and done.stop_reason == "failed:bad_request"
    assert not entries_of(dep, run.run_id)


def test_purge_marks_entries_and_leaves_an_audit_record(deployment: Deployment) -> None:
    dep, svc = deployment, deployment.svc
    key = f"f{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")
    run = dep.submit_script([flaky(key), REPLY], route="r.retry")
    svc.wait(run.run_id, timeout=60)
    (entry,) = entries_of(dep, run.run_id)
    f = DeadLetterFilter(ids=(entry["id"],))
    dry = svc.dead_letters.purge(f, "ops:carol", dry_run=True)
    assert dry.purged == [entry["id"]] and svc.dead_letters.show(entry["id"])["status"] == "open"
    done = svc.dead_letters.purge(f, "ops:carol")
    assert done.purged == [entry["id"]]
    assert svc.dead_letters.show(entry["id"])["status"] == "purged"
    assert not entries_of(dep, run.run_id)
    audit = svc.dead_letters.store.audit_log(20)
    assert any(
        a["action"] == "dlq.purge" and a["actor"] == "ops:carol" and entry["id"] in a["ids"]
        for a in audit
    )


def test_open_model_breaker_falls_back_to_the_next_model(fresh_deployment: Deployment) -> None:
    dep, svc = fresh_deployment, fresh_deployment.svc
    dep.start_worker(concurrency=2)
    script = {"script": [REPLY] * 4}
    # Given a route whose model fails every call (breaker: 2 failures open it)
    first = svc.submit("t1", "r.fallback", "g", script, actor="tester")
    done = svc.wait(first.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    kinds = [e.kind for e in svc.trace(first.run_id)]
    assert kinds.count("proposer_error") == 2 and "breaker_opened" in kinds
    assert "breaker_open" in kinds and "fallback" in kinds
    assert svc.breakers.state("model:broken-openai") == "open"

    # Then later runs go straight to the fallback while the breaker is open
    second = svc.submit("t1", "r.fallback", "g", script, actor="tester")
    assert svc.wait(second.run_id, timeout=60).status == "succeeded"
    kinds = [e.kind for e in svc.trace(second.run_id)]
    assert "proposer_error" not in kinds and "fallback" in kinds


def test_a_failed_run_compensates_its_side_effects_newest_first(deployment: Deployment) -> None:
    dep, svc = deployment, deployment.svc
    a, b, c = (f"c{uuid.uuid4().hex[:8]}" for _ in range(3))
    svc.tool_redis.set(svc.keys.demo(f"fail:{c}"), "1")
    # Given a run that changes a and b, then dead-letters on c
    run = dep.submit_script([flaky(a, 5), flaky(b, 7), flaky(c), REPLY], route="r.compensate")
    done = svc.wait(run.run_id, timeout=60)
    assert done.stop_reason == "dead_lettered:exhausted"

    # Then both changes are undone, b before a, and recorded
    def statuses() -> dict[str, str]:
        return {e["args"]["key"]: e["status"] for e in svc.store.side_effects(run_id=run.run_id)}

    # the compensating tool undoes the change before its record says so: wait for both
    wait_for(lambda: dep.counter(a) == 0 and dep.counter(b) == 0
             and statuses()[a] == statuses()[b] == "compensated", timeout=60,
             message="compensation")  # fmt: skip
    effects = {e["args"]["key"]: e for e in svc.store.side_effects(run_id=run.run_id)}
    assert effects[a]["status"] == effects[b]["status"] == "compensated"
    assert effects[c]["status"] == "failed"
    events = [e for e in svc.trace(run.run_id) if e.kind == "compensated"]
    assert [e.data["idempotency_key"] for e in events] == [
        effects[b]["idempotency_key"],
        effects[a]["idempotency_key"],
    ]


def test_a_failing_compensation_is_dead_lettered_and_can_be_retried(
    deployment: Deployment,
) -> None:
    dep, svc = deployment, deployment.svc
    a, c = (f"c{uuid.uuid4().hex[:8]}" for _ in range(2))
    svc.tool_redis.set(svc.keys.demo(f"fail:{c}"), "1")
    svc.tool_redis.set(svc.keys.demo(f"fail_undo:{a}"), "1")
    run = dep.submit_script([flaky(a, 3), flaky(c), REPLY], route="r.compensate")
    svc.wait(run.run_id, timeout=60)
    wait_for(lambda: len(entries_of(dep, run.run_id)) == 2, timeout=60, message="two entries")
    by_class = {e["dl_class"]: e for e in entries_of(dep, run.run_id)}
    comp = by_class["compensation"]
    assert comp["error_type"] == "RuntimeError" and "undo endpoint" in comp["error_message"]
    assert dep.counter(a) == 3
    (effect,) = [e for e in svc.store.side_effects(run_id=run.run_id) if e["args"]["key"] == a]
    assert effect["status"] == "compensation_failed"

    # When the undo endpoint is back and the operator retries the compensation entry
    svc.tool_redis.delete(svc.keys.demo(f"fail_undo:{a}"))
    outcome = svc.dead_letters.retry(DeadLetterFilter(ids=(comp["id"],)), "ops:dan")
    assert outcome.retried == [comp["id"]]
    assert dep.counter(a) == 0
    (effect,) = [e for e in svc.store.side_effects(run_id=run.run_id) if e["args"]["key"] == a]
    assert effect["status"] == "compensated"


#: AGENTRT_WORKER_LOST_RETRIES in the test deployment (the default)
WORKER_LOST_RETRIES = 3


@pytest.mark.slow
def test_a_step_whose_worker_keeps_dying_is_dead_lettered_as_worker_lost(
    fresh_deployment: Deployment,
) -> None:
    dep, svc = fresh_deployment, fresh_deployment.svc
    worker = dep.start_worker(concurrency=1)
    # Given a write call that stays inside (held by the test) however often it is re-sent:
    # every kill lands mid-call, before the call could finish
    hold = Hold(dep)
    hold.on()
    run = dep.submit_script([hold.step(), REPLY], route="r.held")
    task_id = svc.dead_letters.messages.task_id(run.run_id, 0)
    kills = 0

    def inside_again_or_over() -> bool:
        # the step was re-sent and came inside its call again, or the run stopped
        over = svc.get(run.run_id).status.value in ("failed", "succeeded")
        return over or hold.entered() > kills

    try:
        # kill every copy that comes inside, past the limit: a copy after the
        # (retries + 1)th death would be killed too, and counted
        while kills < WORKER_LOST_RETRIES + 3:
            wait_for(inside_again_or_over, timeout=60, message="the step inside its call")
            if hold.entered() <= kills:
                break  # the run stopped
            worker.kill_children()
            kills += 1
        done = svc.wait(run.run_id, timeout=60)
        # a run submitted after the dead-letter runs behind any copy of the step sent before
        # it (one queue, one process): once it is done, no copy of the step is left to come
        after = dep.submit_script([REPLY])
        assert svc.wait(after.run_id, timeout=60).status == "succeeded"
    finally:
        hold.off()
    log = worker.log()
    assert done.stop_reason == "dead_lettered:worker_lost", (kills, done.stop_reason, log[-4000:])
    # dead-lettered on exactly the (retries + 1)th death, each one inside the call, and no
    # copy came inside after it
    assert kills == WORKER_LOST_RETRIES + 1, (kills, hold.entered(), log[-4000:])
    assert hold.entered() == kills
    # every death seen once, by the hand-back (the last one dead-letters instead of
    # re-sending); one message per death: the first and one hand-back for each of the first
    # `retries` deaths; Celery re-sent none
    assert log.count("handed back: its owner instance is dead") == kills, log[-4000:]
    assert log.count(f"[{task_id}] received") == kills and "Retry in" not in log
    (entry,) = entries_of(dep, run.run_id)
    assert entry["dl_class"] == "worker_lost" and entry["error_type"] == "WorkerLostError"
    assert f"died {kills} times" in (entry["error_message"] or "")
    assert [e["status"] for e in svc.store.side_effects(run_id=run.run_id)] != ["succeeded"]

    # When an operator retries it (the call no longer holds), the run completes: nothing lost
    outcome = svc.dead_letters.retry(DeadLetterFilter(ids=(entry["id"],)), "ops:wl")
    assert outcome.retried == [entry["id"]]
    done = svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    assert hold.entered() == kills + 1
    assert [e["status"] for e in svc.store.side_effects(run_id=run.run_id)] == ["succeeded"]


@pytest.mark.slow
def test_a_step_past_its_hard_time_limit_is_dead_lettered_as_timeout(
    deployment: Deployment,
) -> None:
    dep, svc = deployment, deployment.svc
    # r.hang: step_timeout_s 2, so the hard limit is 2 + hard_limit_grace_s (4) = 6 s; the
    # call sleeps five times that (only the hard limit can end it first, however late)
    hang = {"type": "tool_call", "tool": "probe.hang", "args": {"ms": 30_000}}
    run = dep.submit_script([hang, REPLY], route="r.hang")
    done = svc.wait(run.run_id, timeout=90)
    assert done.stop_reason == "dead_lettered:timeout", done.stop_reason
    (entry,) = entries_of(dep, run.run_id)
    assert entry["error_type"] == "TimeLimitExceeded" and entry["step_no"] == 0
    # the pool process was replaced: the worker goes on
    after = dep.submit_script([REPLY])
    assert svc.wait(after.run_id, timeout=60).status == "succeeded"


def test_an_open_tool_breaker_makes_the_call_wait_then_probe(
    fresh_deployment: Deployment,
) -> None:
    dep, svc = fresh_deployment, fresh_deployment.svc
    dep.start_worker(concurrency=2)
    key = f"g{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")
    call = {"type": "tool_call", "tool": "probe.guarded", "args": {"key": key}}
    # Given a tool whose breaker opens after 2 failures (for 5 s: the third attempt comes
    # well within that: it finds the breaker open without racing a 1 s window)
    run = dep.submit_script([call, REPLY], route="r.retry")
    done = svc.wait(run.run_id, timeout=60)
    assert done.stop_reason == "dead_lettered:exhausted"
    kinds = [e.kind for e in svc.trace(run.run_id)]
    # the second failure opened it; the third attempt waited (no slot held), then probed
    assert "breaker_opened" in kinds and "breaker_open" in kinds
    assert calls(dep, key) == 3
    assert svc.breakers.state("tool:probe.guarded") == "open"

    # When the backend is back, the retried call is the probe that closes the breaker
    svc.tool_redis.delete(svc.keys.demo(f"fail:{key}"))
    (entry,) = entries_of(dep, run.run_id)
    svc.dead_letters.retry(DeadLetterFilter(ids=(entry["id"],)), "ops:erin")
    assert svc.wait(run.run_id, timeout=60).status == "succeeded"
    assert svc.breakers.state("tool:probe.guarded") == "closed"


def test_a_compensation_left_unfinished_by_a_dead_worker_is_run_again(
    deployment: Deployment,
) -> None:
    dep, svc = deployment, deployment.svc
    a = f"c{uuid.uuid4().hex[:8]}"
    run = dep.submit_script([flaky(a, 4), REPLY], route="r.retry")
    assert svc.wait(run.run_id, timeout=60).status == "succeeded"
    (effect,) = svc.store.side_effects(run_id=run.run_id)
    # a worker took the effect for compensation, then died before it finished
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    assert svc.store.set_effect_status(
        effect["id"], "succeeded", "compensating", compensation_started_at=long_ago
    )
    # the reconciler's pass: effects compensating for longer than the grace run again
    resumed = svc.compensations.resume_stuck(datetime.now(UTC) - timedelta(seconds=30))
    assert resumed == [effect["idempotency_key"]]
    assert dep.counter(a) == 0
    (effect,) = svc.store.side_effects(run_id=run.run_id)
    assert effect["status"] == "compensated"
    kinds = [e.kind for e in svc.trace(run.run_id)]
    assert "compensation_resumed" in kinds and "compensated" in kinds
    assert svc.compensations.resume_stuck(datetime.now(UTC)) == []
