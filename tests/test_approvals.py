"""Approvals bound to the exact action, with real workers (both SQL backends).

A write on the ``r.approve*`` routes waits for a human (tests/config/runtime.yaml,
``writes_need_approval``; ``big_increment_escalates`` escalates to ``ops-billing``).
``counter.increment`` counts what really ran (its journal makes it exactly-once per
idempotency key), so every test asserts on the effect, not on what the runtime believes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from runtime.approvals import ApprovalView
from runtime.cli.main import app
from runtime.contract import RunView
from runtime.errors import (
    ApprovalClosed,
    ApprovalForbidden,
    ApprovalNotFound,
    InvalidRequest,
    RunNotFound,
)
from runtime.scheduling.scheduler import Ops, item_of
from runtime.store.db import utcnow
from runtime.store.tables import approvals_t, runs_t
from tests.support import Deployment, Hold, wait_for

SUBMITTER = "user:sub"
APPROVER = "ops:ann"
REPLY = {"type": "reply", "text": "done"}


def inc(key: str, by: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "by": by}}


def key() -> str:
    return f"a{uuid.uuid4().hex[:10]}"


def submit(dep: Deployment, script: list[Any], route: str = "r.approve", **kw: Any) -> RunView:
    return dep.submit_script(script, route=route, actor=kw.pop("actor", SUBMITTER), **kw)


def waiting(dep: Deployment, run_id: str, approval_id: str | None = None) -> RunView:
    """Wait until the run waits for an approval (another one than ``approval_id``)."""

    def ready() -> RunView | None:
        view = dep.svc.get(run_id)
        assert view.status.value not in ("succeeded", "failed", "refused", "cancelled"), view
        if view.status.value == "waiting" and view.approval_id != approval_id:
            return view
        return None

    found: RunView = wait_for(ready, timeout=90, message=f"run {run_id} waiting for approval")
    return found


def finished(dep: Deployment, run_id: str) -> RunView:
    def done() -> RunView | None:
        view = dep.svc.get(run_id)
        return view if view.status.value in ("succeeded", "failed", "refused") else None

    found: RunView = wait_for(done, timeout=90, message=f"run {run_id} to finish")
    return found


def set_pending(dep: Deployment, run_id: str, change: Any) -> None:
    """Change a waiting run's kept call in SQL (as a tampering hand would)."""
    with dep.svc.store.engine.begin() as conn:
        pending = conn.execute(
            sa.select(runs_t.c.pending_proposal).where(runs_t.c.run_id == run_id)
        ).scalar_one()
        change(pending)
        conn.execute(
            sa.update(runs_t).where(runs_t.c.run_id == run_id).values(pending_proposal=pending)
        )


def effects(dep: Deployment, run_id: str) -> list[dict[str, Any]]:
    return dep.svc.store.side_effects(run_id=run_id)


# --- an approved action runs exactly once ---------------------------------------------


def test_an_approved_action_runs_once_and_its_approval_is_spent(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k, 5), REPLY])
    view = waiting(deployment, run.run_id)
    assert view.stop_reason == "needs_approval:writes_need_approval"
    assert view.workflow_step == "awaiting:counter.increment"
    approval = svc.approvals.get(str(view.approval_id))
    # what the approver is shown: the validated arguments, defaults applied
    assert approval.args == {"key": k, "by": 5, "delay_ms": 0, "after_ms": 0}
    assert (approval.status, approval.rule, approval.effect) == (
        "pending",
        "writes_need_approval",
        "require_approval",
    )
    assert (approval.run_id, approval.step, approval.tool) == (run.run_id, 0, "counter.increment")
    assert len(approval.digest) == 64 and approval.submitted_by == SUBMITTER
    assert approval.expires_at > approval.requested_at
    assert deployment.counter(k) == 0  # nothing ran while it waited

    decided = svc.approvals.approve(approval.approval_id, APPROVER, reason="looks right")
    assert (decided.status, decided.decided_by, decided.reason) == (
        "approved",
        APPROVER,
        "looks right",
    )
    assert decided.latency_ms is not None and decided.latency_ms >= 0

    done = finished(deployment, run.run_id)
    assert (done.status.value, done.stop_reason) == ("succeeded", "completed")
    assert deployment.counter(k) == 5
    spent = svc.approvals.get(approval.approval_id)
    assert spent.status == "consumed" and spent.consumed_by == f"{run.run_id}:1:0"
    assert [(e["status"], e["step_no"]) for e in effects(deployment, run.run_id)] == [
        ("succeeded", 1)
    ]
    # the call ran on the approval: its decision says so
    decisions = {d["step_no"]: d for d in svc.store.policy_decisions(run.run_id)}
    assert decisions[0]["decision"] == "require_approval"
    assert decisions[1]["decision"] == "allow"
    assert f"approved:{approval.approval_id}" in decisions[1]["reason_codes"]

    # the same approval presented again does nothing
    for decide in (svc.approvals.approve, svc.approvals.deny):
        with pytest.raises(ApprovalClosed, match="consumed"):
            decide(approval.approval_id, APPROVER, "again")
    assert deployment.counter(k) == 5
    assert svc.get(run.run_id).status.value == "succeeded"


def test_a_resumed_run_does_not_repeat_earlier_side_effects(deployment: Deployment) -> None:
    svc, first, second = deployment.svc, key(), key()
    run = submit(deployment, [inc(first), inc(second), REPLY])
    one = waiting(deployment, run.run_id)
    svc.approvals.approve(str(one.approval_id), APPROVER)
    two = waiting(deployment, run.run_id, one.approval_id)
    assert deployment.counter(first) == 1 and deployment.counter(second) == 0
    svc.approvals.approve(str(two.approval_id), APPROVER)
    assert finished(deployment, run.run_id).status.value == "succeeded"
    # each call ran once: the step before each pause never ran again
    assert (deployment.counter(first), deployment.counter(second)) == (1, 1)
    assert [e["step_no"] for e in effects(deployment, run.run_id)] == [1, 3]
    statuses = [a.status for a in svc.approvals.list(status=None, route="r.approve", limit=1000)
                if a.run_id == run.run_id]  # fmt: skip
    assert statuses == ["consumed", "consumed"]


# --- the approval is bound to the exact action ----------------------------------------


def test_a_changed_action_is_refused_and_needs_a_new_approval(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k, 5), REPLY])
    asked = waiting(deployment, run.run_id)
    # the kept call is changed after the approver saw it (by 5 -> by 7)
    set_pending(deployment, run.run_id, lambda p: p["args"].update(by=7))
    svc.approvals.approve(str(asked.approval_id), APPROVER)

    # the resumed step finds another digest: the call does not run, it asks again
    again = waiting(deployment, run.run_id, asked.approval_id)
    assert deployment.counter(k) == 0
    old = svc.approvals.get(str(asked.approval_id))
    new = svc.approvals.get(str(again.approval_id))
    assert old.status == "approved" and old.consumed_by is None  # never spent
    assert new.status == "pending" and new.args["by"] == 7 and new.step == 1
    assert new.digest != old.digest
    assert any(e.kind == "approval_mismatch" for e in svc.trace(run.run_id))

    # the old approval cannot be presented for it again; the new one runs exactly that
    with pytest.raises(ApprovalClosed):
        svc.approvals.approve(old.approval_id, APPROVER)
    svc.approvals.approve(new.approval_id, APPROVER)
    assert finished(deployment, run.run_id).status.value == "succeeded"
    assert deployment.counter(k) == 7


def test_an_approval_for_one_run_cannot_be_spent_on_another(deployment: Deployment) -> None:
    svc, kx, ky = deployment.svc, key(), key()
    x = submit(deployment, [inc(kx, 3), REPLY])
    y = submit(deployment, [inc(ky, 3), REPLY])
    x_wait, y_wait = waiting(deployment, x.run_id), waiting(deployment, y.run_id)
    x_approval = svc.approvals.get(str(x_wait.approval_id))

    # Y's kept call is pointed at X's approval, which is then approved, and Y is resumed
    set_pending(
        deployment, y.run_id, lambda p: p.update(approval={"id": x_approval.approval_id, "step": 0})
    )
    svc.approvals.approve(x_approval.approval_id, APPROVER)
    with svc.store.engine.begin() as conn:
        conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.run_id == y.run_id)
            .values(status="running", approval_id=x_approval.approval_id)
        )
    y_row = svc.store.get_run(y.run_id)
    svc.dispatch.schedule(Ops().enqueue(item_of(y_row, int(y_row["next_step"]))).dispatch(1))

    # X runs on its approval; Y asks for one of its own and runs nothing
    assert finished(deployment, x.run_id).status.value == "succeeded"
    y_again = waiting(deployment, y.run_id, x_approval.approval_id)
    assert y_again.approval_id not in (x_approval.approval_id, y_wait.approval_id)
    assert (deployment.counter(kx), deployment.counter(ky)) == (3, 0)
    spent = svc.approvals.get(x_approval.approval_id)
    assert spent.status == "consumed" and spent.consumed_by == f"{x.run_id}:1:0"
    assert effects(deployment, y.run_id) == []


# --- deny, expiry ----------------------------------------------------------------------


def test_a_denied_action_never_runs(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY])
    asked = waiting(deployment, run.run_id)
    approval_id = str(asked.approval_id)
    for reason in (None, "", "   "):
        with pytest.raises(InvalidRequest, match="reason"):
            svc.approvals.deny(approval_id, APPROVER, reason)  # type: ignore[arg-type]
    assert svc.approvals.get(approval_id).status == "pending"

    denied = svc.approvals.deny(approval_id, APPROVER, "not this customer")
    assert (denied.status, denied.decided_by, denied.reason) == (
        "denied",
        APPROVER,
        "not this customer",
    )
    done = svc.get(run.run_id)
    assert (done.status.value, done.stop_reason) == ("refused", f"approval_denied:{APPROVER}")
    with pytest.raises(ApprovalClosed, match="denied"):
        svc.approvals.approve(approval_id, APPROVER)
    assert deployment.counter(k) == 0 and effects(deployment, run.run_id) == []
    assert svc.get(run.run_id).status.value == "refused"


def test_cancelling_a_waiting_run_withdraws_its_approval(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY])
    approval_id = str(waiting(deployment, run.run_id).approval_id)

    svc.cancel(run.run_id, actor="ops:bob")

    # the run is gone: its approval is no longer pending, listed or decidable
    assert svc.get(run.run_id).status.value == "cancelled"
    assert svc.approvals.get(approval_id).status == "withdrawn"
    assert approval_id not in {a.approval_id for a in svc.approvals.list()}
    with pytest.raises(ApprovalClosed):
        svc.approvals.approve(approval_id, APPROVER)
    assert deployment.counter(k) == 0 and effects(deployment, run.run_id) == []


def test_a_denial_is_told_to_the_model_on_tell_model_routes(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    search = {"type": "tool_call", "tool": "kb.search", "args": {"query": "refunds"}}
    run = submit(deployment, [inc(k, 2), search, REPLY], route="r.approve_tell")
    asked = waiting(deployment, run.run_id)
    svc.approvals.deny(str(asked.approval_id), APPROVER, "use the knowledge base")
    done = finished(deployment, run.run_id)
    assert (done.status.value, done.stop_reason) == ("succeeded", "completed")
    assert deployment.counter(k) == 0
    steps = svc.store.steps(run.run_id)
    told = steps[1]
    assert (told["kind"], told["outcome"]) == ("refused", f"approval_denied:{APPROVER}")
    assert told["observation"]["error"] == "approval_denied"
    assert "use the knowledge base" in told["observation"]["detail"]
    # the model proposed something else, which ran
    assert steps[2]["proposal"]["tool"] == "kb.search" and steps[2]["kind"] == "tool_call"


def test_an_expired_approval_cannot_resume_the_run(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY], route="r.approve_brief")  # approval_ttl_s: 1
    asked = waiting(deployment, run.run_id)
    approval = svc.approvals.get(str(asked.approval_id))
    wait_for(lambda: utcnow() > approval.expires_at, timeout=30, message="the expiry to pass")
    # whoever comes first - this decision or the reconciler's round - expires it
    with pytest.raises(ApprovalClosed, match="expired"):
        svc.approvals.approve(approval.approval_id, APPROVER)
    done = finished(deployment, run.run_id)
    assert (done.status.value, done.stop_reason) == ("failed", "approval_expired")
    assert svc.approvals.get(approval.approval_id).status == "expired"
    assert deployment.counter(k) == 0


def test_the_reconciler_expires_waits_nobody_decided(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY], route="r.approve_brief")
    asked = waiting(deployment, run.run_id)
    # nobody decides: the workers' reconciler stops the run (a round every 5 s)
    done = finished(deployment, run.run_id)
    assert (done.status.value, done.stop_reason) == ("failed", "approval_expired")
    assert svc.approvals.get(str(asked.approval_id)).status == "expired"
    kinds = [e.kind for e in svc.trace(run.run_id)]
    assert "approval_expired" in kinds
    with pytest.raises(ApprovalClosed):
        svc.approvals.approve(str(asked.approval_id), APPROVER)
    assert deployment.counter(k) == 0


# --- waiting holds nothing ---------------------------------------------------------------


def test_a_waiting_run_holds_no_slot_lease_or_budget(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY])  # r.approve: concurrency_limit 1
    asked = waiting(deployment, run.run_id)
    row = svc.store.get_run(run.run_id)
    step = int(row["next_step"])
    assert not svc.redis.exists(svc.keys.run_lease(run.run_id))
    assert not svc.redis.exists(svc.keys.budget_hold(run.run_id, step - 1))
    assert svc.scheduler.known([item_of(row, step)]) == [False]
    # the route's one slot is free: another run on it goes all the way while this one waits
    other = submit(
        deployment, [{"type": "tool_call", "tool": "kb.search", "args": {"query": "x"}}, REPLY]
    )
    assert finished(deployment, other.run_id).status.value == "succeeded"
    assert svc.get(run.run_id).status.value == "waiting"
    svc.approvals.approve(str(asked.approval_id), APPROVER)
    assert finished(deployment, run.run_id).status.value == "succeeded"
    assert deployment.counter(k) == 1


# --- who may decide, and whose approvals one sees ---------------------------------------


def test_the_submitter_may_not_decide_their_own_run_on_a_high_risk_route(
    deployment: Deployment,
) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY], actor="user:self")
    asked = waiting(deployment, run.run_id)
    approval = svc.approvals.get(str(asked.approval_id))
    assert approval.approvers == {"owner": None, "not": ["user:self"]}
    with pytest.raises(ApprovalForbidden, match="submitter"):
        svc.approvals.approve(approval.approval_id, "user:self")
    with pytest.raises(ApprovalForbidden):
        svc.approvals.deny(approval.approval_id, "user:self", "mine")
    assert svc.approvals.get(approval.approval_id).status == "pending"
    assert svc.get(run.run_id).status.value == "waiting"
    # on a low-risk route the submitter may
    low = submit(deployment, [inc(k), REPLY], route="r.approve_tell", actor="user:self")
    low_wait = waiting(deployment, low.run_id)
    svc.approvals.approve(str(low_wait.approval_id), "user:self")
    assert finished(deployment, low.run_id).status.value == "succeeded"
    svc.approvals.approve(approval.approval_id, APPROVER)
    assert finished(deployment, run.run_id).status.value == "succeeded"
    assert deployment.counter(k) == 2


def test_another_tenants_approval_is_not_found_and_nothing_changes(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k), REPLY], tenant="t1")
    approval_id = str(waiting(deployment, run.run_id).approval_id)
    for attempt in (
        lambda: svc.approvals.approve(approval_id, APPROVER, tenant="t2"),
        lambda: svc.approvals.deny(approval_id, APPROVER, "no", tenant="t2"),
        lambda: svc.approvals.get(approval_id, tenant="t2"),
        lambda: svc.approvals.approve("0" * 32, APPROVER),
    ):
        with pytest.raises(RunNotFound):
            attempt()
    with pytest.raises(ApprovalNotFound):
        svc.approvals.get(approval_id, tenant="t2")
    assert approval_id not in {a.approval_id for a in svc.approvals.list(tenant="t2", limit=1000)}
    assert approval_id in {a.approval_id for a in svc.approvals.list(tenant="t1", limit=1000)}
    assert svc.approvals.get(approval_id).status == "pending"
    assert svc.get(run.run_id).status.value == "waiting"
    svc.approvals.approve(approval_id, APPROVER, tenant="t1")
    assert finished(deployment, run.run_id).status.value == "succeeded"


def test_escalations_name_their_owner_and_are_listed_by_it(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    run = submit(deployment, [inc(k, 500), REPLY])
    asked = waiting(deployment, run.run_id)
    assert asked.stop_reason == "escalated:big_increment_escalates"
    approval = svc.approvals.get(str(asked.approval_id))
    assert (approval.effect, approval.owner) == ("escalate", "ops-billing")
    owned = svc.approvals.list(owner="ops-billing", limit=1000)
    assert approval.approval_id in {a.approval_id for a in owned}
    assert all(a.owner == "ops-billing" for a in owned)
    assert approval.approval_id not in {
        a.approval_id for a in svc.approvals.list(owner="ops-other", limit=1000)
    }
    svc.approvals.approve(approval.approval_id, "ops:billing-lead")
    assert finished(deployment, run.run_id).status.value == "succeeded"
    assert deployment.counter(k) == 500


def test_bad_arguments_are_refused_before_anything_is_read(deployment: Deployment) -> None:
    svc = deployment.svc
    for call, field in (
        (lambda: svc.approvals.get("not an id!"), "approval_id"),
        (lambda: svc.approvals.approve("a" * 41, APPROVER), "approval_id"),
        (lambda: svc.approvals.approve("abc", "x\x00y"), "actor"),
        (lambda: svc.approvals.approve("abc", "a" * 181), "actor"),
        (lambda: svc.approvals.deny("abc", APPROVER, "r" * 2001), "reason"),
        (lambda: svc.approvals.list(status="maybe"), "status"),
        (lambda: svc.approvals.list(limit=0), "limit"),
        (lambda: svc.approvals.list(owner="no spaces"), "owner"),
    ):
        with pytest.raises(InvalidRequest) as exc:
            call()
        assert exc.value.fields == (field,)


def test_stats_give_latency_per_route_and_the_pending_backlog(deployment: Deployment) -> None:
    svc, k = deployment.svc, key()
    done = submit(deployment, [inc(k), REPLY])
    svc.approvals.approve(str(waiting(deployment, done.run_id).approval_id), APPROVER)
    pending = submit(deployment, [inc(k), REPLY], tenant="t2")
    waiting(deployment, pending.run_id)
    stats = svc.approvals.stats()
    route = next(r for r in stats["routes"] if r["route"] == "r.approve")
    assert route["decided"] >= 1 and route["p50_ms"] is not None
    assert route["p95_ms"] >= route["p50_ms"] >= 0
    assert route["pending"] >= 1 and route["oldest_pending_age_s"] >= 0
    assert stats["pending"] >= 1
    t2 = svc.approvals.stats(tenant="t2")
    assert sum(r["pending"] for r in t2["routes"]) >= 1


# --- the command line ---------------------------------------------------------------


def cli(dep: Deployment, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={**dep.env, "COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_lists_shows_approves_and_denies(deployment: Deployment) -> None:
    ka, kd = key(), key()
    approve_run = submit(deployment, [inc(ka), REPLY], tenant="t2")
    deny_run = submit(deployment, [inc(kd), REPLY], tenant="t2")
    a_id = str(waiting(deployment, approve_run.run_id).approval_id)
    d_id = str(waiting(deployment, deny_run.run_id).approval_id)

    code, out, _ = cli(deployment, "approvals", "list", "--tenant", "t2", "--json")
    assert code == 0
    listed = {a["approval_id"]: a for a in json.loads(out)}
    assert {a_id, d_id} <= set(listed)
    assert listed[a_id]["status"] == "pending" and listed[a_id]["run_id"] == approve_run.run_id
    code, out, _ = cli(deployment, "approvals", "list", "--tenant", "t2")
    assert code == 0 and a_id[:12] in out

    code, out, _ = cli(deployment, "approvals", "show", a_id, "--json")
    assert code == 0
    shown = ApprovalView.model_validate(json.loads(out))
    assert shown.args == {"key": ka, "by": 1, "delay_ms": 0, "after_ms": 0}
    code, out, _ = cli(deployment, "approvals", "show", a_id, "--tenant", "t1")
    assert code == 1
    # `runs show` names the real approval id
    code, out, _ = cli(deployment, "runs", "show", approve_run.run_id, "--json")
    assert json.loads(out)["run"]["approvalId"] == a_id

    code, out, err = cli(deployment, "approvals", "deny", d_id, "--actor", APPROVER)
    assert code == 2 and "reason" in err
    code, out, _ = cli(
        deployment, "approvals", "deny", d_id, "--actor", APPROVER, "--reason", "no", "--json"
    )
    assert code == 0 and json.loads(out)["status"] == "denied"
    code, out, _ = cli(deployment, "approvals", "approve", a_id, "--actor", APPROVER, "--json")
    assert code == 0
    decided = json.loads(out)
    # (a fast worker may already have spent it by the time the command reads it back)
    assert decided["status"] in ("approved", "consumed") and decided["decided_by"] == APPROVER
    code, out, err = cli(deployment, "approvals", "approve", a_id, "--actor", APPROVER)
    assert code == 1 and "a decision is final" in err  # decided once
    assert finished(deployment, approve_run.run_id).status.value == "succeeded"
    assert deployment.counter(ka) == 1 and deployment.counter(kd) == 0

    code, out, _ = cli(deployment, "approvals", "stats", "--tenant", "t2", "--json")
    assert code == 0 and any(r["route"] == "r.approve" for r in json.loads(out)["routes"])
    code, out, _ = cli(deployment, "approvals", "stats")
    assert code == 0 and "p95" in out


# --- a crash right after the approval ----------------------------------------------------


def test_a_worker_killed_during_the_approved_call_runs_it_exactly_once(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    worker = dep.start_worker(concurrency=1)
    hold = Hold(dep)
    hold.on()
    run = submit(dep, [hold.step("probe.held_count"), REPLY])
    asked = waiting(dep, run.run_id)
    dep.svc.approvals.approve(str(asked.approval_id), APPROVER)
    # the approved call is inside: its effect made, not yet recorded by the runtime
    wait_for(lambda: hold.entered() >= 1, timeout=60, message="the approved call to start")
    worker.kill_all()
    dep.start_worker(concurrency=1)
    hold.off()
    done = finished(dep, run.run_id)
    assert (done.status.value, done.stop_reason) == ("succeeded", "completed")
    count = dep.svc.tool_redis.get(dep.svc.keys.demo(f"probe:{hold.key}:count"))
    assert int(count or 0) == 1  # executed exactly once
    assert hold.entered() == 2  # the call ran again, under the same idempotency key
    [effect] = effects(dep, run.run_id)
    assert (effect["status"], effect["attempts"]) == ("succeeded", 2)
    approval = dep.svc.approvals.get(str(asked.approval_id))
    assert approval.status == "consumed" and approval.consumed_by == effect["idempotency_key"]
    with dep.svc.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sa.func.count())
            .select_from(approvals_t)
            .where(approvals_t.c.run_id == run.run_id)
        ).scalar_one()
    assert rows == 1  # no second approval was asked for
