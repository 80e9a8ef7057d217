"""The admission boundary (issue 8), on real Redis, real workers, SQLite and PostgreSQL.

* tenant isolation on writes: a cancel for another tenant's run, an unknown run or a
  finished run is refused before anything is written, in SQL or in Redis;
* request ids and idempotency keys: the same payload returns the same run, another payload
  is a conflict naming the fields; ids are never truncated; a stored refusal never holds
  its request id; a race of identical submits yields one run;
* every field is checked before anything is stored; refusals are stored bounded; deep or
  huge JSON is refused with a reason code, never a RecursionError; bad rows never break a
  read.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, text

from runtime import admission
from runtime.cli import render
from runtime.contract import RunStatus, RunView
from runtime.errors import (
    AdmissionRefused,
    InvalidRequest,
    InvalidTransition,
    RunNotFound,
    SchemaOutOfDate,
)
from runtime.service import RuntimeService
from runtime.store.db import make_engine
from runtime.store.dead_letters import DeadLetterFilter
from runtime.store.runs import RunStore, events_t, runs_t
from tests.support import Deployment, wait_for

USAGE = {"input_tokens": 10, "output_tokens": 5}
REPLY = {"type": "reply", "text": "done", "usage": USAGE}
SLOW = {
    "type": "tool_call",
    "tool": "reports.generate",
    "args": {"topic": "q", "delay_ms": 800},
    "usage": USAGE,
}


def rid(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def rows_for(svc: RuntimeService, tenant: str, request_id: str) -> list[dict[str, Any]]:
    query = select(runs_t).where(runs_t.c.tenant_id == tenant, runs_t.c.request_id == request_id)
    with svc.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def count_runs(svc: RuntimeService) -> tuple[int, int]:
    """(runs, admission events) in the whole store: what a submit writes (workers busy with
    earlier runs add other events meanwhile)."""
    with svc.store.engine.connect() as conn:
        runs = conn.execute(select(func.count()).select_from(runs_t)).scalar_one()
        events = conn.execute(
            select(func.count()).select_from(events_t).where(events_t.c.kind == "admission")
        ).scalar_one()
    return int(runs), int(events)


def cancel_flag(svc: RuntimeService, run_id: str) -> bool:
    return bool(svc.redis.exists(svc.keys.run_cancelled(run_id)))


# --- tenant isolation on writes ------------------------------------------------------


def test_cancel_for_another_tenant_writes_nothing(deployment: Deployment) -> None:
    svc = deployment.svc
    # Given tenant t1's run, busy in a slow tool
    run = deployment.submit_script([SLOW, REPLY], tenant="t1")
    wait_for(lambda: svc.store.statuses([run.run_id])[run.run_id] != "queued", message="start")
    events_before = len(svc.store.trace(run.run_id))

    # When tenant t2 cancels it
    with pytest.raises(RunNotFound):
        svc.cancel(run.run_id, actor="mallory", tenant="t2")

    # Then nothing was written: no cancel flag, no stop event, and the run still succeeds
    assert not cancel_flag(svc, run.run_id)
    done = svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded" and done.stop_reason == "completed"
    assert not cancel_flag(svc, run.run_id)
    kinds = [e.kind for e in svc.trace(run.run_id)]
    assert len(kinds) >= events_before
    assert not any(
        e.kind == "stop" and e.data.get("actor") == "mallory" for e in svc.trace(run.run_id)
    )
    # and t2 cannot read it either
    with pytest.raises(RunNotFound):
        svc.get(run.run_id, tenant="t2")


def test_cancel_of_an_unknown_run_writes_nothing(deployment: Deployment) -> None:
    svc = deployment.svc
    ghost = uuid.uuid4().hex
    before = count_runs(svc)
    with pytest.raises(RunNotFound):
        svc.cancel(ghost, actor="ops")
    with pytest.raises(RunNotFound):
        svc.cancel(ghost, actor="ops", tenant="t1")
    assert not cancel_flag(svc, ghost)
    assert svc.store.trace(ghost) == []
    assert count_runs(svc)[0] == before[0]


def test_cancel_of_a_finished_run_is_invalid_and_writes_nothing(deployment: Deployment) -> None:
    svc = deployment.svc
    run = deployment.submit_script([REPLY])
    done = svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded"
    events = len(svc.store.trace(run.run_id))

    with pytest.raises(InvalidTransition) as exc:
        svc.cancel(run.run_id, actor="ops", tenant="t1")

    assert exc.value.from_status == "succeeded"
    assert not cancel_flag(svc, run.run_id)
    assert len(svc.store.trace(run.run_id)) == events
    assert svc.get(run.run_id).stop_reason == "completed"


def test_cancel_by_its_tenant_cancels_then_flags(fresh_deployment_on: Deployment) -> None:
    svc = fresh_deployment_on.svc  # no worker: the run stays queued
    run = fresh_deployment_on.submit_script([REPLY], tenant="t1")
    cancelled = svc.cancel(run.run_id, actor="ops", tenant="t1")
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled:ops"
    assert cancel_flag(svc, run.run_id)
    # a malformed actor is refused before anything is looked up or written
    other = fresh_deployment_on.submit_script([REPLY], tenant="t1")
    for actor in ["x" * 191, "ops\n", "", 7]:
        with pytest.raises(InvalidRequest):
            svc.cancel(other.run_id, actor=actor, tenant="t1")  # type: ignore[arg-type]
    assert svc.get(other.run_id).status == "queued" and not cancel_flag(svc, other.run_id)


# --- request ids and idempotency keys -------------------------------------------------


def test_same_request_id_same_payload_returns_the_run(deployment: Deployment) -> None:
    svc = deployment.svc
    request_id = rid()
    args = ("t1", "r.basic", "g", {"script": [REPLY], "n": 1.5})
    first = svc.submit(*args, actor="alice", request_id=request_id, priority="high")
    # the same payload, its input keys in another order
    again = svc.submit(
        "t1",
        "r.basic",
        "g",
        {"n": 1.5, "script": [REPLY]},
        actor="alice",
        request_id=request_id,
        priority="high",
    )
    assert again.run_id == first.run_id
    assert len(rows_for(svc, "t1", request_id)) == 1


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"route": "r.lenient"}, ("route",)),
        ({"goal": "another goal"}, ("goal",)),
        ({"input": {"script": [REPLY], "n": 2}}, ("input",)),
        ({"actor": "bob"}, ("actor",)),
        ({"priority": "low"}, ("priority",)),
        ({"idempotency_key": "k-other"}, ("idempotency_key",)),
        ({"goal": "x", "actor": "bob"}, ("goal", "actor")),
    ],
)
def test_request_id_reused_with_another_payload_is_a_conflict(
    deployment: Deployment, change: dict[str, Any], fields: tuple[str, ...]
) -> None:
    svc = deployment.svc
    request_id = rid()
    base: dict[str, Any] = {
        "tenant": "t1",
        "route": "r.basic",
        "goal": "g",
        "input": {"script": [REPLY], "n": 1},
        "actor": "alice",
        "request_id": request_id,
        "priority": None,
    }
    first = svc.submit(**base)
    before = count_runs(svc)

    with pytest.raises(AdmissionRefused) as exc:
        svc.submit(**{**base, **change})

    assert exc.value.code == "idempotency_conflict"
    assert str(exc.value).startswith("refused:idempotency_conflict")
    assert exc.value.fields == fields and exc.value.run_id == first.run_id
    for field in fields:
        assert field in exc.value.detail
    # nothing was stored for the conflicting request
    assert count_runs(svc)[0] == before[0]
    assert [r["run_id"] for r in rows_for(svc, "t1", request_id)] == [first.run_id]


def test_idempotency_key_reused_with_another_payload_is_a_conflict(
    deployment: Deployment,
) -> None:
    key = rid("order")
    first = deployment.submit_script([REPLY], idempotency_key=key, request_id=rid())
    # another request id, the same payload: the same run
    again = deployment.submit_script([REPLY], idempotency_key=key, request_id=rid())
    assert again.run_id == first.run_id
    # another goal: a conflict naming it
    with pytest.raises(AdmissionRefused) as exc:
        deployment.submit_script([REPLY], idempotency_key=key, goal="other")
    assert exc.value.code == "idempotency_conflict" and exc.value.fields == ("goal",)
    # a request id of one run and the key of another: a conflict naming both
    other = deployment.submit_script([REPLY], request_id=rid())
    with pytest.raises(AdmissionRefused) as exc:
        deployment.submit_script([REPLY], idempotency_key=key, request_id=other.request_id)
    assert exc.value.fields == ("request_id", "idempotency_key")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_id", "r" * 201),
        ("idempotency_key", "k" * 201),
        ("actor", "a" * 201),
        ("tenant", "t" * 101),
        ("route", "r" * 101),
        ("request_id", "has space"),
        ("request_id", ""),
        ("idempotency_key", "tab\tkey"),
        ("actor", "user\x1b[31m"),
        ("tenant", "t1; drop"),
        ("route", "r/basic"),
        ("tenant", 7),
        ("request_id", 12345),
        ("actor", None),
    ],
)
def test_malformed_identity_is_refused_and_stores_nothing(
    deployment: Deployment, field: str, value: Any
) -> None:
    svc = deployment.svc
    args: dict[str, Any] = {
        "tenant": "t1",
        "route": "r.basic",
        "goal": "g",
        "input": {"script": [REPLY]},
        "actor": "alice",
        "request_id": rid(),
    }
    before = count_runs(svc)
    with pytest.raises(AdmissionRefused) as exc:
        svc.submit(**{**args, field: value})
    assert exc.value.code == "invalid_request" and exc.value.fields == (field,)
    assert str(exc.value).startswith(f"refused:invalid_request: {field}")
    assert count_runs(svc) == before


def test_ids_are_never_truncated(deployment: Deployment) -> None:
    svc = deployment.svc
    # two ids identical in their first 200 characters are refused, not merged into one run
    prefix = uuid.uuid4().hex * 7  # 224 characters
    for suffix in ("a", "b"):
        with pytest.raises(AdmissionRefused) as exc:
            deployment.submit_script([REPLY], request_id=prefix[:200] + suffix)
        assert "at most 200" in exc.value.detail
    # ids of exactly 200 characters that differ in the last one are two runs, stored whole
    a = deployment.submit_script([REPLY], request_id=prefix[:199] + "a")
    b = deployment.submit_script([REPLY], request_id=prefix[:199] + "b")
    assert a.run_id != b.run_id
    assert svc.get(a.run_id).request_id == prefix[:199] + "a"
    actor = "user:" + "é" * 195
    c = deployment.submit_script([REPLY], actor=actor, idempotency_key=rid()[:200])
    assert svc.get(c.run_id).actor_id == actor


def test_a_refusal_does_not_hold_its_request_id(deployment: Deployment) -> None:
    svc = deployment.svc
    request_id = rid()
    # Given a request refused because its route is stopped (the caller should retry)
    svc.redis.set(svc.keys.route_stopped("r.lenient"), "1")
    try:
        refused = deployment.submit_script([REPLY], route="r.lenient", request_id=request_id)
        assert refused.stop_reason == "refused:route_stopped"
        # a retry while it is still stopped is refused again, and stored again
        again = deployment.submit_script([REPLY], route="r.lenient", request_id=request_id)
        assert again.stop_reason == "refused:route_stopped" and again.run_id != refused.run_id
    finally:
        svc.redis.delete(svc.keys.route_stopped("r.lenient"))

    # When the caller retries with the same request id
    admitted = deployment.submit_script([REPLY], route="r.lenient", request_id=request_id)

    # Then it is admitted and runs; a repeat returns the admitted run
    assert admitted.status == "queued" and admitted.run_id != refused.run_id
    assert svc.wait(admitted.run_id, timeout=60).status == "succeeded"
    repeat = deployment.submit_script([REPLY], route="r.lenient", request_id=request_id)
    assert repeat.run_id == admitted.run_id
    # and every refusal is still on record under the request id
    rows = rows_for(svc, "t1", request_id)
    assert sorted((r["admitted"], r["status"]) for r in rows) == [
        (False, "refused"),
        (False, "refused"),
        (True, "succeeded"),
    ]
    assert svc.get(refused.run_id).stop_reason == "refused:route_stopped"


def test_after_queue_full_the_retry_it_was_told_to_make_is_admitted(
    fresh_deployment_on: Deployment,
) -> None:
    dep = fresh_deployment_on  # no worker yet: tenant tq's queue (max_queued 3) fills up
    backlog = [dep.submit_script([REPLY], tenant="tq") for _ in range(3)]
    assert {r.status for r in backlog} == {RunStatus.QUEUED}
    request_id = rid()
    refused = dep.submit_script([REPLY], tenant="tq", request_id=request_id)
    assert refused.stop_reason == "refused:queue_full" and refused.retry_after_s
    # When the queue drains and the caller retries with the same request id
    dep.start_worker(concurrency=1)
    dep.wait_all([r.run_id for r in backlog], timeout=60)
    retry = dep.submit_script([REPLY], tenant="tq", request_id=request_id)
    # Then the retry is a new, admitted run that runs (not the stored refusal)
    assert retry.run_id != refused.run_id and retry.status == RunStatus.QUEUED
    assert dep.svc.wait(retry.run_id, timeout=60).status == "succeeded"
    assert dep.svc.get(refused.run_id).stop_reason == "refused:queue_full"


def test_a_refused_unknown_route_then_the_right_route_is_admitted(
    deployment: Deployment,
) -> None:
    svc = deployment.svc
    request_id, key = rid(), rid("key")
    wrong = deployment.submit_script(
        [REPLY], route="r.nope", request_id=request_id, idempotency_key=key
    )
    assert wrong.stop_reason == "refused:unknown_route"
    right = deployment.submit_script([REPLY], request_id=request_id, idempotency_key=key)
    assert right.status == "queued"
    assert svc.wait(right.run_id, timeout=60).status == "succeeded"
    # the refusal's payload differs, but it holds nothing: a repeat of it is refused again
    again = deployment.submit_script(
        [REPLY], route="r.nope", request_id=rid(), idempotency_key=rid("key")
    )
    assert again.stop_reason == "refused:unknown_route"


def _race(n: int, submit: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = submit(i)
        except Exception as exc:  # collected and asserted on
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_identical_submits_racing_make_one_run(deployment: Deployment) -> None:
    svc = deployment.svc
    request_id, key = rid(), rid("key")
    results = _race(
        6,
        lambda i: deployment.submit_script(
            [REPLY], request_id=request_id if i % 2 else rid(), idempotency_key=key
        ),
    )
    assert all(isinstance(r, RunView) for r in results), results
    assert len({r.run_id for r in results}) == 1
    assert svc.wait(results[0].run_id, timeout=60).status == "succeeded"
    with svc.store.engine.connect() as conn:
        admitted = conn.execute(
            select(func.count())
            .select_from(runs_t)
            .where(runs_t.c.tenant_id == "t1", runs_t.c.idempotency_key == key)
        ).scalar_one()
    assert admitted == 1


def test_conflicting_submits_racing_make_one_run_and_conflicts(
    deployment: Deployment,
) -> None:
    svc = deployment.svc
    request_id = rid()
    results = _race(
        6, lambda i: deployment.submit_script([REPLY], request_id=request_id, goal=f"goal {i}")
    )
    runs = [r for r in results if isinstance(r, RunView)]
    conflicts = [r for r in results if isinstance(r, AdmissionRefused)]
    assert len(runs) == 1 and len(conflicts) == 5, results
    assert all(c.code == "idempotency_conflict" and c.fields == ("goal",) for c in conflicts)
    assert [r["run_id"] for r in rows_for(svc, "t1", request_id)] == [runs[0].run_id]


# --- every field checked before anything is stored ------------------------------------


@pytest.mark.parametrize("priority", ["urgent", -1, 10**9, 1.5, ["high"], "", "HIGH"])
def test_invalid_priority_is_refused_and_lists_still_work(
    deployment: Deployment, priority: Any
) -> None:
    svc = deployment.svc
    run = deployment.submit_script([REPLY], priority=priority, tenant="t2")
    assert run.status == "refused" and run.stop_reason == "refused:invalid_priority"
    stored = rows_for(svc, "t2", run.request_id)[0]
    assert stored["priority"] == "normal"  # the route's, never the invalid value
    assert "priority" in run.output["detail"]
    listed = svc.list_runs(tenant="t2", limit=200)
    assert run.run_id in {v.run_id for v in listed}
    render.runs_view(listed, 120)  # what `agentrt runs list` prints


def test_a_huge_goal_is_refused_and_stored_bounded(deployment: Deployment) -> None:
    svc = deployment.svc
    goal = "g" * (5 * 1024 * 1024)
    run = deployment.submit_script([REPLY], goal=goal)
    assert run.stop_reason == "refused:input_too_large"
    stored = svc.get(run.run_id)
    assert len(stored.goal) == admission.REFUSED_GOAL_CHARS and goal.startswith(stored.goal)
    note = stored.output["goal"]
    assert note["chars"] == len(goal) and note["bytes"] == len(goal.encode())
    assert note["sha256"] == hashlib.sha256(goal.encode()).hexdigest()
    # the trace holds the bounded detail only
    assert len(json.dumps([e.data for e in svc.trace(run.run_id)])) < 10_000


def test_an_oversized_input_is_withheld_with_its_size_and_digest(
    deployment: Deployment,
) -> None:
    svc = deployment.svc
    run_input = {"script": [REPLY], "blob": "x" * (5 * 1024 * 1024)}
    run = svc.submit("t1", "r.basic", "g", run_input, actor="a")
    assert run.stop_reason == "refused:input_too_large"
    stored = svc.get(run.run_id)
    canonical = json.dumps(
        run_input, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert stored.input is None
    assert stored.output["input"] == {
        "bytes": len(canonical),
        "sha256": hashlib.sha256(canonical).hexdigest(),
    }


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("run_input", "code", "in_detail"),
    [
        ({"script": [], "deep": nested(5000)}, "invalid_input", "input.deep.a.a"),
        ({"script": [nested(5000)]}, "invalid_input", "input.script[0].a"),
        ({"script": [], "n": 2**64}, "invalid_input", "input.n"),
        ({"script": [], "n": float("nan")}, "invalid_input", "input.n"),
        ({"script": [], 3: "int key"}, "invalid_input", "not a string"),
        ({"script": [], "s": {1, 2}}, "invalid_input", "input.s"),
        ({"script": [], "s": "\ud800"}, "invalid_input", "Unicode"),
        (["not", "an", "object"], "invalid_input", "JSON object"),
    ],
)
def test_invalid_input_is_refused_with_its_path(
    deployment: Deployment, run_input: Any, code: str, in_detail: str
) -> None:
    svc = deployment.svc
    run = svc.submit("t1", "r.basic", "g", run_input, actor="a")
    assert run.status == "refused" and run.stop_reason == f"refused:{code}"
    stored = svc.get(run.run_id)
    assert in_detail in stored.output["detail"] and stored.input is None
    assert "withheld" in stored.output["input"]


def test_deep_or_odd_goals_are_refused_not_raised(deployment: Deployment) -> None:
    svc = deployment.svc
    cases = {
        "deep": (nested(100_000), "invalid_input"),
        "blank": ("   ", "invalid_input"),
        "nul": ("a\x00b", "invalid_input"),
        "surrogate": ("a\udc80", "invalid_input"),
        "none": (None, "invalid_input"),
    }
    for name, (goal, code) in cases.items():
        run = svc.submit("t1", "r.basic", goal, {"script": []}, actor="a")
        assert run.stop_reason == f"refused:{code}", name
        svc.get(run.run_id)  # stored, readable
    # a deep priority too
    run = svc.submit("t1", "r.basic", "g", {"script": []}, actor="a", priority=nested(100_000))
    assert run.stop_reason == "refused:invalid_priority"


def test_a_request_that_raises_leaves_nothing_written(deployment: Deployment) -> None:
    svc = deployment.svc
    before = count_runs(svc)
    for bad in [
        {"tenant": "t" * 500},
        {"request_id": "x" * 5000, "input": {"deep": nested(5000)}},
        {"actor": "\x00"},
    ]:
        with pytest.raises(AdmissionRefused):
            svc.submit(
                **{
                    "tenant": "t1",
                    "route": "r.basic",
                    "goal": "g",
                    "input": {"script": []},
                    "actor": "a",
                    **bad,
                }
            )
    assert count_runs(svc) == before


# --- reads never break on a bad row ---------------------------------------------------


def test_a_bad_row_never_breaks_a_read(fresh_deployment_on: Deployment, backend: str) -> None:
    svc = fresh_deployment_on.svc
    good = fresh_deployment_on.submit_script([REPLY], tenant="t1")
    # Given rows written by hand (or by another version) with values this one cannot read
    bad_ids = []
    for values in [
        {"status": "paused_v2"},
        {"priority": "urgent"},
        {"status": "unknown", "risk_class": "extreme", "version_set": {}},
        {"allowed_tools": [1, 2], "autonomy_level": "rogue", "input": ["not", "a", "dict"]},
    ]:
        row = svc._new_row("t1", "r.basic", "g", {"script": []}, "hand", None, None, None, None)
        row.update(values)
        with svc.store._write() as conn:
            conn.execute(insert(runs_t), [row])
        bad_ids.append(row["run_id"])
    if backend == "sqlite":  # SQLite stores anything: corrupt JSON and timestamps too
        row = svc._new_row("t1", "r.basic", "g", {"script": []}, "hand", None, None, None, None)
        with svc.store._write() as conn:
            conn.execute(insert(runs_t), [row])
            conn.execute(
                text(
                    "UPDATE runs SET input = 'not json{', output = '{', "
                    "updated_at = 'yesterday', next_step = 'many' WHERE run_id = :id"
                ),
                {"id": row["run_id"]},
            )
        bad_ids.append(row["run_id"])

    # When anyone lists or reads runs
    views = svc.list_runs(limit=100)

    # Then every row is listed, the bad ones with marked values and their raw values kept
    by_id = {v.run_id: v for v in views}
    assert set(bad_ids) | {good.run_id} <= set(by_id)
    assert by_id[good.run_id].unreadable_fields is None
    unknown = by_id[bad_ids[0]]
    assert unknown.status is RunStatus.UNKNOWN
    assert unknown.unreadable_fields == {"status": "paused_v2"}
    assert by_id[bad_ids[1]].priority == "unknown"
    assert by_id[bad_ids[1]].unreadable_fields == {"priority": "urgent"}
    third = by_id[bad_ids[2]]
    assert third.status is RunStatus.UNKNOWN and third.risk_class == "high"
    assert set(third.unreadable_fields or {}) == {"status", "risk_class", "version_set"}
    fourth = by_id[bad_ids[3]]
    assert fourth.allowed_tools == [] and fourth.autonomy_level == "advisory"
    assert set(fourth.unreadable_fields or {}) == {"allowed_tools", "autonomy_level", "input"}
    assert (fourth.unreadable_fields or {})["input"] == "not a JSON object (list, not shown)"
    if backend == "sqlite":
        corrupt = by_id[bad_ids[4]]
        assert corrupt.input is None and corrupt.output is None
        assert set(corrupt.unreadable_fields or {}) == {"input", "output", "updated_at", "steps"}
        # the raw input is never echoed (it may hold secrets): only what is wrong with it
        assert corrupt.unreadable_fields["input"] == "not JSON (9 characters, not shown)"
        assert corrupt.unreadable_fields["output"] == "{"
    for run_id in bad_ids:
        svc.get(run_id)
    # a status filter finds exactly the rows with an unknown status
    assert {v.run_id for v in svc.list_runs(status="unknown")} == {bad_ids[0], bad_ids[2]}
    # and what the CLI prints is built from them without an error
    render.runs_view(views, 120)
    json.dumps([render.run_json(v) for v in views])


def test_list_limit_is_bounded(deployment: Deployment) -> None:
    for limit in [0, -1, 10**9, True, "5"]:
        with pytest.raises(InvalidRequest):
            deployment.svc.list_runs(limit=limit)  # type: ignore[arg-type]


# --- the property: admit, refuse (stored), or AdmissionRefused - nothing else ---------

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TOKEN = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` five times in six: most examples get past the checks before this one."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: good if ok else bad)


#: well-formed ids (often repeated, so conflicts happen), sometimes not
IDS = mostly(
    st.none() | TOKEN | st.sampled_from(["req-1", "req-2", "r" * 200]),
    st.sampled_from(["r" * 201, "", "a b", "é", 7]) | st.text(max_size=210),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tenant=st.sampled_from(["t1"] * 12 + ["t2", "nobody", "dormant", "", "t" * 101, "a b", 5]),
    route=st.sampled_from(["r.basic"] * 8 + ["r.lenient", "r.nope", "r.stopped", "r/x", None]),
    goal=mostly(st.sampled_from(["triage", "refund T-1"]), st.text(max_size=40) | JSONISH),
    extra=st.dictionaries(st.text(max_size=8), JSONISH, max_size=4),
    run_input=st.none() | JSONISH,
    use_extra=mostly(st.just(True), st.just(False)),
    actor=st.sampled_from(["alice"] * 8 + ["user:42", "", "a\nb", 3]),
    request_id=IDS,
    idempotency_key=st.none() | st.none() | IDS,
    priority=mostly(st.sampled_from([None, "high", "low"]), st.just("urgent") | JSONISH),
)
def test_submit_admits_refuses_or_raises_admission_refused(
    deployment: Deployment,
    tenant: Any,
    route: Any,
    goal: Any,
    extra: dict[str, Any],
    run_input: Any,
    use_extra: bool,
    actor: Any,
    request_id: Any,
    idempotency_key: Any,
    priority: Any,
) -> None:
    svc = deployment.svc
    submitted_input = {"script": [], **extra} if use_extra else run_input
    try:
        view = svc.submit(
            tenant,
            route,
            goal,
            submitted_input,
            actor=actor,
            request_id=request_id,
            idempotency_key=idempotency_key,
            priority=priority,
        )
    except AdmissionRefused as exc:
        assert exc.code in ("invalid_request", "idempotency_conflict")
        event(f"raised {exc.code}")
        return
    event(f"returned {view.stop_reason or view.status.value}")
    # a new run is queued or refused; a repeated request id may return an older run
    assert view.status is not RunStatus.UNKNOWN
    if view.status == RunStatus.REFUSED:
        assert (view.stop_reason or "").startswith(("refused:", "policy_denied:", "invalid_"))
    stored = svc.get(view.run_id)
    assert stored.unreadable_fields is None
    # under its request id, or the run its idempotency key names (whatever its request id)
    assert request_id in (None, stored.request_id) or (
        idempotency_key is not None and stored.idempotency_key == idempotency_key
    )


# --- dead-letter retries stay within the entry's tenant -------------------------------


def test_a_dead_letter_entry_never_resumes_another_tenants_run(
    fresh_deployment_on: Deployment,
) -> None:
    svc = fresh_deployment_on.svc  # no worker: the run waits in its queue
    run = fresh_deployment_on.submit_script([REPLY], tenant="t1")
    entry_id = svc.dead_letters.dead_letter_step(
        run.run_id, 0, "exhausted", error_type="Boom", error="boom"
    )
    assert entry_id is not None
    # Given an entry filed under tenant t2 that names t1's dead-lettered run
    forged = dict(svc.dead_letters.show(entry_id), id=uuid.uuid4().hex, tenant_id="t2")
    svc.dead_letters.store.insert(forged)

    # When an operator scoped to t2 retries t2's entries
    outcome = svc.dead_letters.retry(DeadLetterFilter(tenant="t2"), "ops-t2")

    # Then the entry is skipped and t1's run stays where it was
    assert outcome.retried == [] and "tenant 't2'" in outcome.skipped[forged["id"]]
    assert svc.get(run.run_id).stop_reason == "dead_lettered:exhausted"
    assert svc.dead_letters.show(forged["id"])["status"] == "open"
    # while t1's own entry resumes it
    assert svc.dead_letters.retry(DeadLetterFilter(tenant="t1"), "ops").retried == [entry_id]
    assert svc.get(run.run_id).status == "queued"


def test_an_older_runs_table_is_refused_at_start_up(tmp_path: Path) -> None:
    # Given a runs table of the layout before issue 8 (unique request ids for every row)
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE runs (run_id VARCHAR(40) PRIMARY KEY, tenant_id VARCHAR(100), "
                "request_id VARCHAR(200), idempotency_key VARCHAR(200), "
                "CONSTRAINT uq_runs_tenant_request UNIQUE (tenant_id, request_id), "
                "CONSTRAINT uq_runs_tenant_idem UNIQUE (tenant_id, idempotency_key))"
            )
        )
    # Then start-up refuses it, naming the upgrade, instead of failing at the first submit
    # (tests/test_migrations.py upgrades a whole database of that layout)
    with pytest.raises(SchemaOutOfDate) as exc:
        RunStore(engine).create_schema()
    assert "agentrt db upgrade" in str(exc.value)
