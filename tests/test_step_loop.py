"""The step loop end to end, with real workers, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.support import Deployment, Hold, wait_for

USAGE = {"input_tokens": 100, "output_tokens": 50}


def search(query: str = "refund", **kw: Any) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "tool": "kb.search",
        "args": {"query": query, **kw},
        "usage": USAGE,
    }


def reply(text: str = "done") -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


def test_run_completes_with_contract_and_trace(deployment: Deployment) -> None:
    # Given a two-step script, when it runs
    run = deployment.submit_script([search(), reply("all good")], actor="alice")
    assert run.status == "queued"
    done = deployment.svc.wait(run.run_id, timeout=60)

    # Then the run succeeded with the whole contract recorded before the first model call
    assert done.status == "succeeded" and done.stop_reason == "completed"
    assert done.output == {"text": "all good"}
    assert done.actor_id == "alice" and done.tenant_id == "t1" and done.route == "r.basic"
    assert done.version_set.model == "scripted-test" and done.version_set.tool_schema.startswith(
        "ts-"
    )
    assert done.policy_version == "pol-test-1" and done.budget_policy_version == "bp-test-1"
    assert done.started_at is not None and done.finished_at is not None
    kinds = [e.kind for e in deployment.svc.trace(run.run_id)]
    for kind in (
        "admission",
        "budget_reserve",
        "proposal",
        "policy_decision",
        "validation",
        "tool_start",
        "tool_end",
        "checkpoint",
        "budget_settle",
        "stop",
    ):
        assert kind in kinds, kind
    assert kinds.index("policy_decision") < kinds.index("tool_start")
    # and spend was recorded per step and settled into the ledger
    spend = deployment.svc.store.spend(run_id=run.run_id)
    assert spend["tokens"] == 300 and spend["model_calls"] == 2 and spend["tool_calls"] == 1
    balance = deployment.svc.ledger.balance(deployment.svc.keys.budget_run(run.run_id))
    assert balance["tokens"] == {"used": 300, "reserved": 0}


def test_invalid_arguments_are_refused_and_never_executed(deployment: Deployment) -> None:
    bad = {
        "type": "tool_call",
        "tool": "tickets.update",
        "args": {"ticket_id": "no spaces allowed", "status": "exploded"},
    }
    run = deployment.submit_script([bad, reply()])
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "refused"
    assert done.stop_reason == "invalid_proposal:invalid_args"
    assert deployment.svc.store.side_effects(run_id=run.run_id) == []
    assert not deployment.svc.redis.exists(deployment.svc.keys.demo("ticket:no spaces allowed"))
    events = deployment.svc.trace(run.run_id)
    assert not any(e.kind == "tool_start" for e in events)
    refusal = next(e for e in events if e.kind == "validation")
    assert refusal.data["code"] == "invalid_args"
    assert {err["loc"] for err in refusal.data["errors"]} == {"ticket_id", "status"}


def test_unknown_and_disallowed_tools_are_denied(deployment: Deployment) -> None:
    unknown = deployment.submit_script(
        [{"type": "tool_call", "tool": "shell.exec", "args": {"cmd": "rm -rf /"}}]
    )
    not_allowed = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "payments.refund",
                "args": {"customer_id": "cus_1", "amount": 5},
            }
        ]
    )
    runs = deployment.wait_all([unknown.run_id, not_allowed.run_id])
    assert runs[unknown.run_id].stop_reason == "policy_denied:unknown_tool"
    assert runs[not_allowed.run_id].stop_reason == "policy_denied:tool_not_allowed"
    for run_id in (unknown.run_id, not_allowed.run_id):
        assert runs[run_id].status == "refused"
        decisions = deployment.svc.store.policy_decisions(run_id)
        assert len(decisions) == 1 and decisions[0]["decision"] == "deny"
        assert decisions[0]["policy_version"] == "pol-test-1"
        assert deployment.svc.store.side_effects(run_id=run_id) == []
    assert deployment.svc.redis.llen(deployment.svc.keys.demo("refunds")) == 0


def test_malformed_proposals_are_refused(deployment: Deployment) -> None:
    runs = [
        deployment.submit_script([{"type": "launch_missiles"}]),
        deployment.submit_script(["not even an object"]),
        deployment.submit_script(
            [{"type": "tool_call", "tool": "kb.search", "args": {"query": "x"}, "sudo": True}]
        ),
    ]
    done = deployment.wait_all([r.run_id for r in runs])
    assert {v.stop_reason for v in done.values()} == {"invalid_proposal:malformed"}


def test_refusals_are_fed_back_while_the_route_tolerates_them(deployment: Deployment) -> None:
    bad = {"type": "tool_call", "tool": "kb.search", "args": {"query": ""}}
    failing = {
        "type": "tool_call",
        "tool": "reports.generate",
        "args": {"topic": "q3", "fail": True},
    }
    run = deployment.submit_script([bad, failing, search(), reply("recovered")], route="r.lenient")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded" and done.output == {"text": "recovered"}
    outcomes = [s["outcome"] for s in deployment.svc.store.steps(run.run_id)]
    assert outcomes == [
        "refused:invalid_args",
        "tool_failed:backend_unavailable",
        "tool_succeeded",
        "completed",
    ]


def test_failing_tool_fails_the_run(deployment: Deployment) -> None:
    run = deployment.submit_script(
        [{"type": "tool_call", "tool": "reports.generate", "args": {"topic": "q3", "fail": True}}]
    )
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "failed:backend_unavailable"


def test_tool_timeout_is_enforced(deployment: Deployment) -> None:
    # reports.generate has timeout_s 2 in the manifest; it asks for 9 s of work (within the
    # route's 10 s step timeout, so only the tool timeout can cut it)
    run = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "reports.generate",
                "args": {"topic": "slow", "delay_ms": 9000},
            }
        ]
    )
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.stop_reason == "failed:tool_timeout"
    end = next(e for e in deployment.svc.trace(run.run_id) if e.kind == "tool_end")
    # the call was cut at its timeout, not waited out: it ended before the tool's own 9 s
    # of work could have (a comparison of two sleeps, not of the machine's speed: a timer
    # that fires up to 7 s late still passes)
    assert 1900 <= end.data["duration_ms"] < 9000


def test_policy_rules_deny_and_require_approval(deployment: Deployment) -> None:
    small = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "payments.refund",
                "args": {"customer_id": "cus_a", "amount": 20},
            },
            reply(),
        ],
        route="r.refunds",
    )
    big = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "payments.refund",
                "args": {"customer_id": "cus_b", "amount": 500},
            }
        ],
        route="r.refunds",
    )
    huge = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "payments.refund",
                "args": {"customer_id": "cus_c", "amount": 5000},
            }
        ],
        route="r.refunds",
    )
    close = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "tickets.update",
                "args": {"ticket_id": "T-9", "status": "closed"},
            }
        ],
        route="r.refunds",
    )
    done = deployment.wait_all([small.run_id, big.run_id, huge.run_id, close.run_id])
    assert done[small.run_id].status == "succeeded"
    assert done[big.run_id].status == "waiting"
    assert done[big.run_id].stop_reason == "needs_approval:refund_needs_approval"
    assert done[big.run_id].approval_id
    assert done[huge.run_id].stop_reason == "policy_denied:refund_cap"
    assert done[close.run_id].stop_reason == "escalated:no_closing_high_risk"
    refunds = deployment.svc.redis.lrange(deployment.svc.keys.demo("refunds"), 0, -1)
    assert [r.decode().split(":")[-2] for r in refunds if small.run_id in r.decode()] == ["cus_a"]
    for run_id in (big.run_id, huge.run_id, close.run_id):
        assert not any(small.run_id not in r.decode() and run_id in r.decode() for r in refunds)
        assert deployment.svc.store.side_effects(run_id=run_id) == []


def test_step_limit_stops_the_run(deployment: Deployment) -> None:
    run = deployment.submit_script([search(f"q{i}") for i in range(10)])
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "step_limit"
    assert done.steps == 7  # six proposals (max_steps) plus the step that stopped it


def test_run_budget_exhaustion_stops_the_run(deployment: Deployment) -> None:
    # r.tiny: per-run 2500 tokens and 1 tool call, 1000 tokens reserved per step
    run = deployment.submit_script([search(), search(), search()], route="r.tiny")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "budget_exhausted:tool_calls"
    spend = deployment.svc.store.spend(run_id=run.run_id)
    assert spend["tool_calls"] == 1


def test_lock_contention_waits_then_proceeds(deployment: Deployment) -> None:
    # two runs write under the same lock; the second waits for it and gets a newer fence
    hold = Hold(deployment)
    hold.on()
    try:
        # Given a run inside its call, holding the lock until the test lets it go
        first = deployment.submit_script([hold.step(), reply()], route="r.held")
        wait_for(lambda: hold.entered() == 1, message="the first run to hold the lock")
        # When a second run comes for the same lock, it finds it busy (a state the test
        # waits for, however long the second run takes to start)
        second = deployment.submit_script([hold.step(), reply()], route="r.held")
        wait_for(
            lambda: any(e.kind == "lock_busy" for e in deployment.svc.trace(second.run_id)),
            timeout=60,
            message="the second run to find the lock busy",
        )
        assert hold.entered() == 1
    finally:
        hold.off()
    # Then once the first lets go, the second gets the lock and both complete
    done = deployment.wait_all([first.run_id, second.run_id])
    assert all(v.status == "succeeded" for v in done.values())
    assert hold.entered() == 2
    effects = {
        e["run_id"]: e
        for e in deployment.svc.store.side_effects(tool="probe.held")
        if e["run_id"] in done
    }
    assert len(effects) == 2
    assert effects[first.run_id]["fencing_token"] < effects[second.run_id]["fencing_token"]
    assert not any(e.kind == "lock_busy" for e in deployment.svc.trace(first.run_id))


def test_submit_is_idempotent(deployment: Deployment) -> None:
    first = deployment.submit_script([reply()], request_id="req-dup-1")
    again = deployment.submit_script([reply()], request_id="req-dup-1")
    keyed = deployment.submit_script([reply()], idempotency_key="order-77")
    keyed_again = deployment.submit_script(
        [reply()], idempotency_key="order-77", request_id="other"
    )
    assert first.run_id == again.run_id and keyed.run_id == keyed_again.run_id
    assert len(deployment.svc.store.find_duplicate("t1", "req-dup-1", None) or {}) > 0
    other_tenant = deployment.submit_script([reply()], tenant="t2", request_id="req-dup-1")
    assert other_tenant.run_id != first.run_id


def test_admission_refuses_with_reason_codes(deployment: Deployment) -> None:
    svc = deployment.svc
    cases = {
        "unknown_tenant": svc.submit("nobody", "r.basic", "g", {"script": []}),
        "tenant_disabled": svc.submit("dormant", "r.basic", "g", {"script": []}),
        "unknown_route": svc.submit("t1", "r.nope", "g", {"script": []}),
        "tenant_not_in_scope": svc.submit("t3", "r.refunds", "g", {"script": []}),
        "route_stopped": svc.submit("t1", "r.stopped", "g", {"script": []}),
        "input_too_large": svc.submit("t1", "r.basic", "g", {"script": [], "blob": "x" * 5000}),
        "invalid_input": svc.submit("t1", "r.basic", "g", {"no_script": True}),
    }
    for code, run in cases.items():
        assert run.status == "refused", code
        assert run.stop_reason == f"refused:{code}", code
        stored = svc.get(run.run_id)
        assert stored.stop_reason == f"refused:{code}"
        assert [e.kind for e in svc.trace(run.run_id)] == ["admission", "stop"]
    # an oversized input is not stored
    assert svc.get(cases["input_too_large"].run_id).input is None


def test_live_route_stop_refuses_new_runs(deployment: Deployment) -> None:
    svc = deployment.svc
    svc.redis.set(svc.keys.route_stopped("r.lenient"), "1")
    try:
        run = deployment.submit_script([reply()], route="r.lenient")
        assert run.stop_reason == "refused:route_stopped"
    finally:
        svc.redis.delete(svc.keys.route_stopped("r.lenient"))


def test_cancel_stops_a_waiting_run(deployment: Deployment) -> None:
    run = deployment.submit_script(
        [
            {
                "type": "tool_call",
                "tool": "payments.refund",
                "args": {"customer_id": "cus_z", "amount": 300},
            }
        ],
        route="r.refunds",
    )
    assert deployment.svc.wait(run.run_id, timeout=60).status == "waiting"
    cancelled = deployment.svc.cancel(run.run_id, actor="ops")
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled:ops"


def test_secrets_never_reach_the_trace(deployment: Deployment) -> None:
    leaky = {
        "type": "tool_call",
        "tool": "kb.search",
        "args": {"query": "my key is sk-abcdefghijklmnopqrstuvwx"},
        "api_key": "x",
    }
    run = deployment.submit_script([leaky, reply("Bearer abcdefghijklmnop")], route="r.lenient")
    deployment.svc.wait(run.run_id, timeout=60)
    dump = repr([e.data for e in deployment.svc.trace(run.run_id)])
    dump += repr(deployment.svc.store.steps(run.run_id))
    assert "sk-abcdefghijklmnopqrstuvwx" not in dump
    assert "Bearer abcdefghijklmnop" not in dump


def test_allow_decision_is_stored_before_the_tool_runs(deployment: Deployment) -> None:
    # Given a write tool that stays inside until the test lets it go
    hold = Hold(deployment)
    hold.on()
    try:
        run = deployment.submit_script([hold.step(), reply()], route="r.held")
        wait_for(lambda: hold.entered() == 1, timeout=60, message="the call to start")
        # Then while the tool is running (no step checkpointed yet) its allow decision is
        # already in the store
        decisions = deployment.svc.store.policy_decisions(run.run_id)
        assert deployment.svc.store.steps(run.run_id) == []
        assert hold.entered() == 1
    finally:
        hold.off()
    assert decisions and decisions[0]["decision"] == "allow"
    assert decisions[0]["tool"] == "probe.held"
    assert deployment.svc.wait(run.run_id, timeout=60).status == "succeeded"
