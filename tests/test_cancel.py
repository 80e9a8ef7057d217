"""Cancellation and pause/resume against real workers, real Redis and real SQL.

A cancel is fenced in SQL (``cancel_requested``): a side effect's claim and a step's
checkpoint read it, so nothing commits after the cancel however late the worker notices.
The slow write (``cancel.slow_write``, tests/cancel_tools.py) stays inside while the test
holds its key, so each test decides when the tool reaches its commit point instead of
betting on a sleep.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from runtime.cancellation import CancelFilter
from runtime.cli.main import app
from runtime.errors import CancelRequested, InvalidRequest, InvalidTransition, RunNotFound
from runtime.scheduling.scheduler import Item, Ops, item_of, now_ms
from runtime.statuses import RunStatus
from runtime.store.db import utcnow
from runtime.store.runs import Checkpoint
from tests.support import Deployment, wait_for

USAGE = {"input_tokens": 100, "output_tokens": 20}
DEADLINE_S = 90


def reply(text: str = "done") -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


def slow(key: str, poll: bool = False) -> dict[str, Any]:
    args = {"key": key, "poll": poll}
    return {"type": "tool_call", "tool": "cancel.slow_write", "args": args, "usage": USAGE}


def incr(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key}, "usage": USAGE}


def flaky(key: str, by: int) -> dict[str, Any]:
    args = {"key": key, "by": by}
    return {"type": "tool_call", "tool": "probe.flaky", "args": args, "usage": USAGE}


def new_key() -> str:
    return uuid.uuid4().hex[:12]


class Slow:
    """The test's side of ``cancel.slow_write`` with one key."""

    def __init__(self, dep: Deployment) -> None:
        self.dep, self.key = dep, new_key()

    def _k(self, name: str) -> str:
        return self.dep.svc.keys.demo(f"slow:{self.key}:{name}")

    def hold(self) -> None:
        self.dep.svc.tool_redis.set(self._k("hold"), 1)

    def release(self) -> None:
        self.dep.svc.tool_redis.delete(self._k("hold"))

    def count(self, name: str) -> int:
        return int(self.dep.svc.tool_redis.get(self._k(name)) or 0)

    def journal(self) -> list[bytes]:
        return list(self.dep.svc.tool_redis.lrange(self._k("journal"), 0, -1))

    def wait_entered(self, n: int = 1) -> None:
        wait_for(lambda: self.count("entered") >= n, DEADLINE_S, message="the slow write inside")


def wait_status(dep: Deployment, run_id: str, status: str) -> Any:
    return wait_for(
        lambda: (v := dep.svc.get(run_id)).status == status and v,
        DEADLINE_S,
        message=f"run {run_id} {status}",
    )


def steps_of(dep: Deployment, run_id: str) -> list[dict[str, Any]]:
    return dep.svc.store.steps(run_id)


def spend_steps(dep: Deployment, run_id: str) -> set[int]:
    return {
        s["step_no"]
        for s in steps_of(dep, run_id)
        if dep.svc.store.step_spend(run_id, s["step_no"])
    }


def no_budget_held(dep: Deployment, run_id: str, steps: int = 4) -> bool:
    svc = dep.svc
    holds = [svc.redis.exists(svc.keys.budget_hold(run_id, n)) for n in range(steps)]
    reserved = [v["reserved"] for v in svc.ledger.balance(svc.keys.budget_run(run_id)).values()]
    return not any(holds) and not any(reserved)


def known(dep: Deployment, run_id: str) -> bool:
    run = dep.svc.store.get_run(run_id)
    return dep.svc.scheduler.known([item_of(run, int(run["next_step"]))])[0]


# --- immediate ---------------------------------------------------------------------------


def test_immediate_cancel_during_a_slow_write_commits_nothing_and_spends_nothing_more(
    deployment: Deployment,
) -> None:
    svc, tool = deployment.svc, Slow(deployment)
    after = new_key()
    tool.hold()
    run = deployment.submit_script([slow(tool.key), incr(after), reply()], route="r.cancel")
    tool.wait_entered()

    # When an operator cancels while the write is inside the tool
    requested = svc.cancel(run.run_id, actor="ops:ann")
    # Then the cancel is visible at once and names its actor; the step in flight ends it
    assert requested.status == "cancel_requested"
    assert requested.stop_reason == "cancelled:ops:ann"
    assert requested.workflow_step == "cancelling:immediate"
    tool.release()  # the tool reaches its commit point after the cancel

    done = wait_status(deployment, run.run_id, "cancelled")
    assert done.stop_reason == "cancelled:ops:ann"
    # its side effect did not commit: no journal entry, the record says failed (cancelled)
    assert tool.journal() == []
    [effect] = svc.store.side_effects(run.run_id)
    assert effect["status"] == "failed" and "cancelled" in (effect["error"] or "")
    # nothing after the cancel ran or was charged: one step (the interrupted one), the next
    # tool never ran, spend recorded for that step only
    steps = steps_of(deployment, run.run_id)
    assert [(s["step_no"], s["outcome"]) for s in steps] == [(0, "cancelled")]
    assert deployment.counter(after) == 0
    assert spend_steps(deployment, run.run_id) == {0}
    spent = svc.store.spend(run.run_id)
    assert spent["model_calls"] == 1 and spent["tool_calls"] == 1
    # the ledger agrees, and the run holds no budget any more
    used = svc.ledger.balance(svc.keys.budget_run(run.run_id))
    assert used["tool_calls"]["used"] == 1 and used["model_calls"]["used"] == 1
    assert no_budget_held(deployment, run.run_id)
    trace = svc.trace(run.run_id)
    assert "cancel_requested" in [e.kind for e in trace]
    assert [e.data["reason"] for e in trace if e.kind == "stop"] == ["cancelled:ops:ann"]


def test_a_tool_polling_ctx_cancelled_stops_at_once(deployment: Deployment) -> None:
    svc, tool = deployment.svc, Slow(deployment)
    tool.hold()
    try:
        run = deployment.submit_script([slow(tool.key, poll=True), reply()], route="r.cancel")
        tool.wait_entered()
        svc.cancel(run.run_id, actor="ops")
        # the hold stays on: only the cancel gets the tool out
        done = wait_status(deployment, run.run_id, "cancelled")
        assert done.stop_reason == "cancelled:ops"
        assert tool.count("stopped") == 1 and tool.journal() == []
        assert no_budget_held(deployment, run.run_id)
    finally:
        tool.release()


def test_immediate_cancel_takes_a_queued_step_out_of_the_scheduler(
    fresh_deployment: Deployment,
) -> None:
    # no worker: the first step waits in its tenant's ready queue
    dep = fresh_deployment
    run = dep.submit_script([reply()], route="r.cancel")
    assert known(dep, run.run_id)
    cancelled = dep.svc.cancel(run.run_id, actor="ops")
    # no step was in flight: it ends at once, and its step is gone from the scheduler
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled:ops"
    assert not known(dep, run.run_id)
    assert dep.svc.scheduler.depth("t1", "r.cancel") == (0, 0)
    assert steps_of(dep, run.run_id) == []


@pytest.mark.parametrize("mode", ["immediate", "drain"])
def test_cancel_takes_a_delayed_step_out_of_the_scheduler(
    fresh_deployment: Deployment, mode: str
) -> None:
    dep = fresh_deployment
    run = dep.submit_script([reply()], route="r.cancel")
    item = Item(run.run_id, 0, "t1", "r.cancel", run.priority)
    # the step waits for a backoff, far in the future
    dep.svc.schedule(Ops().drop(item).delay(item, now_ms() + 600_000))
    assert known(dep, run.run_id)
    cancelled = dep.svc.cancel(run.run_id, actor="ops", mode=mode)
    assert cancelled.status == "cancelled"
    assert not known(dep, run.run_id)


# --- drain -------------------------------------------------------------------------------


def test_drain_lets_the_running_step_finish_and_starts_nothing_new(
    deployment: Deployment,
) -> None:
    svc, tool = deployment.svc, Slow(deployment)
    after = new_key()
    tool.hold()
    run = deployment.submit_script([slow(tool.key), incr(after), reply()], route="r.cancel")
    tool.wait_entered()
    requested = svc.cancel(run.run_id, actor="ops", mode="drain")
    assert requested.status == "cancel_requested"
    assert requested.workflow_step == "cancelling:drain"
    tool.release()

    done = wait_status(deployment, run.run_id, "cancelled")
    assert done.stop_reason == "cancelled:ops"
    # the step in flight finished: its effect committed and is recorded as such
    assert len(tool.journal()) == 1
    [effect] = svc.store.side_effects(run.run_id)
    assert effect["status"] == "succeeded"
    # and nothing new started
    assert [s["step_no"] for s in steps_of(deployment, run.run_id)] == [0]
    assert deployment.counter(after) == 0
    assert no_budget_held(deployment, run.run_id)


# --- compensate --------------------------------------------------------------------------


def test_compensate_undoes_succeeded_effects_newest_first(deployment: Deployment) -> None:
    svc, tool = deployment.svc, Slow(deployment)
    key = new_key()
    tool.hold()
    script = [flaky(key, 1), flaky(key, 10), slow(tool.key), reply()]
    run = deployment.submit_script(script, route="r.cancel")
    tool.wait_entered()
    assert deployment.counter(key) == 11
    svc.cancel(run.run_id, actor="ops", compensate=True)
    tool.release()

    wait_status(deployment, run.run_id, "cancelled")
    undone = svc.tool_redis.lrange(svc.keys.demo(f"undone:{key}"), 0, -1)
    wait_for(
        lambda: len(svc.tool_redis.lrange(svc.keys.demo(f"undone:{key}"), 0, -1)) == 2,
        DEADLINE_S,
        message="both effects undone",
    )
    undone = [u.decode() for u in svc.tool_redis.lrange(svc.keys.demo(f"undone:{key}"), 0, -1)]
    # newest first: step 1's effect, then step 0's
    assert undone == [f"{run.run_id}:1:0:compensate", f"{run.run_id}:0:0:compensate"]
    assert deployment.counter(key) == 0
    # the interrupted write never succeeded: nothing to undo there. (The tool records its
    # undo before the compensation records it in SQL: wait for the last record.)
    expected = {0: "compensated", 1: "compensated", 2: "failed"}

    def statuses() -> dict[int, str]:
        return {e["step_no"]: e["status"] for e in svc.store.side_effects(run.run_id)}

    wait_for(lambda: statuses() == expected, DEADLINE_S, message=f"effects {expected}")
    assert statuses() == expected


# --- the fence, at the store -------------------------------------------------------------


def test_a_cancel_request_fences_claims_and_checkpoints_in_sql(
    fresh_deployment_on: Deployment,
) -> None:
    """Whatever a worker has noticed, the store refuses a side effect's claim and a
    step's checkpoint of a run in ``cancel_requested`` (mode immediate)."""
    dep = fresh_deployment_on
    store = dep.svc.store
    run = dep.submit_script([reply()], route="r.cancel")  # no worker: it stays queued
    assert store.request_cancel(
        run.run_id, "t1", RunStatus.QUEUED,
        stop_reason="cancelled:ops", subject="immediate", events=[],
    )  # fmt: skip
    effect = {
        "idempotency_key": f"{run.run_id}:0:0",
        "run_id": run.run_id,
        "tenant_id": "t1",
        "step_no": 0,
        "tool": "cancel.slow_write",
        "side_effect_class": "write",
        "status": "started",
        "args_digest": "d",
        "args": {},
        "started_at": utcnow(),
    }
    with pytest.raises(CancelRequested) as refused:
        store.claim_effect(effect, [], [])
    assert refused.value.stop_reason == "cancelled:ops"
    assert store.side_effects(run.run_id) == []

    step = {
        "run_id": run.run_id, "tenant_id": "t1", "step_no": 0, "kind": "reply",
        "proposal": None, "outcome": "completed", "observation": None,
        "started_at": utcnow(), "finished_at": utcnow(), "duration_ms": 0,
    }  # fmt: skip
    going_on = Checkpoint(run.run_id, 0, RunStatus.RUNNING, {"workflow_step": "after"}, step)
    with pytest.raises(CancelRequested):
        store.checkpoint(going_on)
    assert store.steps(run.run_id) == []
    assert store.get_run(run.run_id)["status"] == "cancel_requested"

    # a drain lets the step in flight claim its effect
    assert store.set_cancel_subject(run.run_id, "drain")
    assert store.claim_effect(effect, [], []).fresh
    # and its checkpoint ends the run cancelled (the checkpointer commits this instead)
    ending = Checkpoint(run.run_id, 0, RunStatus.CANCELLED, {"stop_reason": "cancelled:ops"}, step)
    store.checkpoint(ending)
    assert store.get_run(run.run_id)["status"] == "cancelled"


# --- who may cancel ----------------------------------------------------------------------


def test_another_tenant_or_an_unknown_run_changes_nothing(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    svc = dep.svc
    run = dep.submit_script([reply()], route="r.cancel")
    events = len(svc.trace(run.run_id))
    ghost = uuid.uuid4().hex
    attempts = [
        lambda: svc.cancel(run.run_id, actor="mallory", tenant="t2"),
        lambda: svc.cancel(run.run_id, actor="mallory", tenant="t2", mode="drain", compensate=True),
        lambda: svc.pause(run.run_id, actor="mallory", tenant="t2"),
        lambda: svc.resume(run.run_id, actor="mallory", tenant="t2"),
        lambda: svc.cancel(ghost, actor="ops"),
        lambda: svc.pause(ghost, actor="ops"),
        lambda: svc.resume(ghost, actor="ops"),
    ]
    for attempt in attempts:
        with pytest.raises(RunNotFound):
            attempt()
    for run_id in (run.run_id, ghost):
        assert not svc.redis.exists(svc.keys.run_cancelled(run_id))
        assert not svc.redis.exists(svc.keys.run_paused(run_id))
    assert svc.get(run.run_id).status == "queued"
    assert len(svc.trace(run.run_id)) == events
    assert known(dep, run.run_id)
    # bad requests are refused before anything is read
    with pytest.raises(InvalidRequest):
        svc.cancel(run.run_id, actor="ops", mode="now")
    with pytest.raises(InvalidRequest):
        svc.cancel(run.run_id, actor="x" * 191)
    assert svc.get(run.run_id).status == "queued"


# --- bulk --------------------------------------------------------------------------------


def test_bulk_cancel_dry_run_counts_and_a_filter_cancels_exactly_its_runs(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    svc = dep.svc
    mine = [dep.submit_script([reply()], route="r.cancel").run_id for _ in range(3)]
    others = [dep.submit_script([reply()], tenant="t2", route="r.cancel").run_id for _ in range(2)]
    others.append(dep.submit_script([reply()], route="r.basic").run_id)
    chosen = CancelFilter(tenant="t1", route="r.cancel")

    preview = svc.cancel_many(chosen, "ops", dry_run=True)
    assert preview.matched == 3 and sorted(preview.cancelled) == sorted(mine)
    assert {svc.get(r).status for r in mine + others} == {"queued"}
    assert (
        svc.cancel_many(CancelFilter(tenant="t1", older_than_s=3600), "ops", dry_run=True).matched
        == 0
    )

    report = svc.cancel_many(chosen, "ops")
    assert report.matched == 3 and sorted(report.cancelled) == sorted(mine)
    assert {svc.get(r).stop_reason for r in mine} == {"cancelled:ops"}
    assert {svc.get(r).status for r in others} == {"queued"}
    # nothing left to match
    assert svc.cancel_many(chosen, "ops", dry_run=True).matched == 0
    with pytest.raises(InvalidRequest):
        svc.cancel_many(CancelFilter(), "ops")
    with pytest.raises(InvalidRequest):
        svc.cancel_many(CancelFilter(status="succeeded"), "ops")


# --- pause and resume --------------------------------------------------------------------


def test_pause_finishes_the_step_holds_no_slot_and_resume_completes(
    deployment: Deployment,
) -> None:
    svc, tool = deployment.svc, Slow(deployment)
    later = new_key()
    tool.hold()
    # r.pause runs one step at a time (concurrency_limit 1)
    run = deployment.submit_script([slow(tool.key), incr(later), reply()], route="r.pause")
    tool.wait_entered()
    asked = svc.pause(run.run_id, actor="ops")
    assert asked.status == "running"  # the step in flight finishes first
    tool.release()

    paused = wait_status(deployment, run.run_id, "waiting")
    assert paused.stop_reason == "paused:ops" and paused.workflow_step == "paused:ops"
    # the current step finished (its effect committed), the next one did not start
    assert len(tool.journal()) == 1
    assert [s["step_no"] for s in steps_of(deployment, run.run_id)] == [0]
    assert not known(deployment, run.run_id)
    # it holds no slot: another run of the route runs meanwhile
    other = deployment.submit_script([incr(new_key()), reply()], route="r.pause")
    assert wait_status(deployment, other.run_id, "succeeded")
    assert svc.get(run.run_id).status == "waiting"
    assert deployment.counter(later) == 0

    resumed = svc.resume(run.run_id, actor="ops")
    assert resumed.status == "running" and resumed.workflow_step == "resumed:ops"
    assert wait_status(deployment, run.run_id, "succeeded")
    assert deployment.counter(later) == 1
    kinds = [e.kind for e in svc.trace(run.run_id)]
    assert kinds.index("pause_requested") < kinds.index("paused") < kinds.index("resumed")


def test_a_queued_run_pauses_at_once_and_a_paused_run_cancels_at_once(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    svc = dep.svc
    run = dep.submit_script([reply()], route="r.cancel")  # no worker: queued
    paused = svc.pause(run.run_id, actor="ops")
    assert paused.status == "waiting" and paused.stop_reason == "paused:ops"
    assert not known(dep, run.run_id)
    with pytest.raises(InvalidTransition):
        svc.pause(run.run_id, actor="ops")  # already waiting

    resumed = svc.resume(run.run_id, actor="ops")
    assert resumed.status == "running" and known(dep, run.run_id)
    with pytest.raises(InvalidTransition):
        svc.resume(run.run_id, actor="ops")  # not paused

    svc.pause(run.run_id, actor="ops")
    cancelled = svc.cancel(run.run_id, actor="ops")
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled:ops"
    assert steps_of(dep, run.run_id) == [] and not known(dep, run.run_id)
    # a finished run can be neither paused nor resumed nor cancelled again
    for action in (svc.pause, svc.resume, svc.cancel):
        with pytest.raises(InvalidTransition):
            action(run.run_id, "ops")


# --- the command line --------------------------------------------------------------------


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def cli_env(fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A private deployment with no worker: runs stay where the commands put them."""
    for name, value in fresh_deployment.env.items():
        monkeypatch.setenv(name, value)
    return fresh_deployment


def test_cli_cancel_pause_resume_and_bulk(cli_env: Deployment) -> None:
    dep = cli_env
    one = dep.submit_script([reply()], route="r.cancel").run_id
    shown = as_json(cli("runs", "cancel", one, "--mode", "drain", "--actor", "ops", "--json"))
    assert shown["status"] == "cancelled" and shown["stopReason"] == "cancelled:ops"
    again = cli("runs", "cancel", one)
    assert again.exit_code == 1 and "is cancelled" in again.stderr
    bad = cli("runs", "cancel", one, "--mode", "soon")
    assert bad.exit_code == 2

    two = dep.submit_script([reply()], route="r.cancel").run_id
    paused = as_json(cli("runs", "pause", two, "--actor", "ops", "--json"))
    assert paused["status"] == "waiting" and paused["stopReason"] == "paused:ops"
    resumed = as_json(cli("runs", "resume", two, "--actor", "ops", "--json"))
    assert resumed["status"] == "running"
    finished = cli("runs", "pause", one)
    assert (
        finished.exit_code == 1 and "only queued or running runs can be paused" in finished.stderr
    )

    runs = [dep.submit_script([reply()], tenant="t2", route="r.cancel").run_id for _ in range(2)]
    flt = ["--tenant", "t2", "--route", "r.cancel"]
    counted = as_json(cli("runs", "cancel", *flt, "--dry-run", "--json"))
    assert counted["matched"] == 2 and counted["dryRun"] is True
    assert {dep.svc.get(r).status for r in runs} == {"queued"}
    refused = cli("runs", "cancel", *flt)  # no terminal to confirm on, no --yes
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert {dep.svc.get(r).status for r in runs} == {"queued"}
    done = as_json(cli("runs", "cancel", *flt, "--yes", "--json", "--actor", "ops"))
    assert done["cancelled"] == 2 and sorted(done["runIds"]) == sorted(runs)
    assert {dep.svc.get(r).status for r in runs} == {"cancelled"}
    assert dep.svc.get(two).status == "running"  # another tenant's run: untouched
    both = cli("runs", "cancel", two, "--route", "r.cancel")
    assert both.exit_code == 2
