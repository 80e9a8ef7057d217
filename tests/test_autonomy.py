"""Autonomy levels enforced by the runtime, and budget extensions (``on_budget_exhausted:
ask``), end to end with real workers on SQLite and PostgreSQL.

The same script runs on one route per level (tests/config/runtime.yaml ``r.level.*``): a
read (``kb.search``), a write (``counter.increment``, counted in Redis, exactly once per
execution), then a reply. Which calls ran is read from what they left behind: the
counter, the side-effect rows, the ``tool_start`` trace events.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from runtime.errors import ApprovalClosed, InvalidRequest, NotWaitingForBudget, RunNotFound
from tests.support import Deployment

USAGE = {"input_tokens": 100, "output_tokens": 50}


def search(query: str = "refund policy") -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": query}, "usage": USAGE}


def increment(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key}, "usage": USAGE}


def reply(text: str = "done") -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


def script(key: str) -> list[dict[str, Any]]:
    return [search(), increment(key), reply("all done")]


def started_tools(dep: Deployment, run_id: str) -> list[str]:
    return [e.data["tool"] for e in dep.svc.trace(run_id) if e.kind == "tool_start"]


def decisions(dep: Deployment, run_id: str) -> list[tuple[str, str, str | None]]:
    return [
        (d["tool"], d["decision"], d["rule_id"]) for d in dep.svc.store.policy_decisions(run_id)
    ]


def run_row(dep: Deployment, run_id: str) -> dict[str, Any]:
    return dep.svc.store.get_run(run_id)


# --- autonomy levels -----------------------------------------------------------------------


def test_each_autonomy_level_runs_records_or_holds_the_same_script(
    deployment: Deployment,
) -> None:
    # Given the same script (a read, a write, a reply) on a route of each level
    keys = {level: f"auto-{level}-{uuid.uuid4().hex[:8]}" for level in LEVEL_ROUTES}
    runs = {
        level: deployment.submit_script(script(keys[level]), route=route).run_id
        for level, route in LEVEL_ROUTES.items()
    }

    # When they run as far as they may
    done = deployment.wait_all(list(runs.values()), timeout=120)

    # Then advisory: nothing ran, not even the read; the run completed with the proposals
    advisory = done[runs["advisory"]]
    assert advisory.status == "succeeded" and advisory.stop_reason == "completed"
    assert advisory.output["text"] == "all done"
    proposals = advisory.output["proposals"]
    assert [(p["step"], p["tool"]) for p in proposals] == [
        (0, "kb.search"),
        (1, "counter.increment"),
    ]
    assert proposals[0]["args"]["query"] == "refund policy"
    assert proposals[1]["args"]["key"] == keys["advisory"]
    assert started_tools(deployment, advisory.run_id) == []
    assert deployment.counter(keys["advisory"]) == 0
    assert deployment.svc.store.side_effects(run_id=advisory.run_id) == []
    steps = deployment.svc.store.steps(advisory.run_id)
    assert [(s["kind"], s["outcome"]) for s in steps] == [
        ("proposed", "proposed"),
        ("proposed", "proposed"),
        ("reply", "completed"),
    ]
    # the model was told each call was recorded, not run
    assert steps[0]["observation"]["executed"] is False
    assert decisions(deployment, advisory.run_id) == [
        ("kb.search", "record_only", "autonomy:advisory"),
        ("counter.increment", "record_only", "autonomy:advisory"),
    ]
    recorded = [e for e in deployment.svc.trace(advisory.run_id) if e.kind == "proposal_recorded"]
    assert [e.data["tool"] for e in recorded] == ["kb.search", "counter.increment"]
    assert deployment.svc.store.spend(run_id=advisory.run_id)["tool_calls"] == 0

    # drafts_for_review: the read ran; the write became a draft waiting for approval
    drafts = done[runs["drafts"]]
    assert drafts.status == "waiting"
    assert drafts.stop_reason == "needs_approval:autonomy:drafts_for_review"
    assert drafts.approval_id
    assert started_tools(deployment, drafts.run_id) == ["kb.search"]
    assert deployment.counter(keys["drafts"]) == 0
    assert deployment.svc.store.side_effects(run_id=drafts.run_id) == []
    assert decisions(deployment, drafts.run_id) == [
        ("kb.search", "allow", None),
        ("counter.increment", "require_approval", "autonomy:drafts_for_review"),
    ]
    pending = run_row(deployment, drafts.run_id)["pending_proposal"]
    assert pending["tool"] == "counter.increment" and pending["args"]["key"] == keys["drafts"]

    # executes_after_approval: the read ran; the write waits, though a rule allows it
    gated = done[runs["approval"]]
    assert gated.status == "waiting"
    assert gated.stop_reason == "needs_approval:autonomy:executes_after_approval"
    assert started_tools(deployment, gated.run_id) == ["kb.search"]
    assert deployment.counter(keys["approval"]) == 0
    assert deployment.svc.store.side_effects(run_id=gated.run_id) == []
    assert decisions(deployment, gated.run_id) == [
        ("kb.search", "allow", None),
        ("counter.increment", "require_approval", "autonomy:executes_after_approval"),
    ]
    rows = deployment.svc.store.policy_decisions(gated.run_id)
    # the rule that said allow is on record, and so is the level that overrode it
    assert rows[1]["reason_codes"] == ["counter_allowed", "autonomy:executes_after_approval"]
    events = [e for e in deployment.svc.trace(gated.run_id) if e.kind == "policy_decision"]
    assert events[1].data["rule"] == "autonomy:executes_after_approval"
    assert events[1].data["effect"] == "require_approval"

    # bounded_autonomous: policy decides (the allow rule): everything ran, once
    free = done[runs["autonomous"]]
    assert free.status == "succeeded" and free.output == {"text": "all done"}
    assert started_tools(deployment, free.run_id) == ["kb.search", "counter.increment"]
    assert deployment.counter(keys["autonomous"]) == 1
    effects = deployment.svc.store.side_effects(run_id=free.run_id)
    assert [(e["tool"], e["status"]) for e in effects] == [("counter.increment", "succeeded")]
    assert decisions(deployment, free.run_id) == [
        ("kb.search", "allow", None),
        ("counter.increment", "allow", "counter_allowed"),
    ]


LEVEL_ROUTES = {
    "advisory": "r.level.advisory",
    "drafts": "r.level.drafts",
    "approval": "r.level.approval",
    "autonomous": "r.level.autonomous",
}


@pytest.mark.parametrize("route", ["r.level.drafts", "r.level.approval"])
def test_a_call_the_level_holds_runs_once_when_approved(deployment: Deployment, route: str) -> None:
    # Given a write the route's level holds for approval
    key = f"lvl-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), route=route)
    held = deployment.svc.wait(run.run_id, timeout=60)
    assert held.status == "waiting" and held.approval_id
    approval = deployment.svc.approvals.get(str(held.approval_id))
    assert approval.rule.startswith("autonomy:") and approval.tool == "counter.increment"

    # When it is approved
    deployment.svc.approvals.approve(str(held.approval_id), actor="ops:ann")

    # Then the call ran exactly once (the level asks again on resume; the approval covers
    # that exact call) and the run completed; the approval is spent
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    assert deployment.counter(key) == 1
    assert started_tools(deployment, run.run_id) == ["kb.search", "counter.increment"]
    assert deployment.svc.approvals.get(str(held.approval_id)).status == "consumed"


def test_advisory_run_that_proposes_nothing_completes_with_an_empty_list(
    deployment: Deployment,
) -> None:
    run = deployment.submit_script([reply("nothing to do")], route="r.level.advisory")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded"
    assert done.output == {"text": "nothing to do", "proposals": []}


# --- budget extensions ---------------------------------------------------------------------


def test_ask_waits_for_an_extension_then_resumes_the_kept_call_once(
    deployment: Deployment,
) -> None:
    # Given a route whose runs may make one tool call and ask for more
    key = f"ask-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), route="r.asks")

    # When its second call does not fit its budget
    waiting = deployment.svc.wait(run.run_id, timeout=60)

    # Then it waits instead of stopping, keeping the call, having run only the first
    assert waiting.status == "waiting"
    assert waiting.stop_reason == "needs_approval:budget_extension"
    assert waiting.approval_id
    row = run_row(deployment, run.run_id)
    assert row["workflow_step"] == "awaiting_budget:tool_calls"
    assert row["budget_extension"] == {
        "granted": {},
        "requested": {"tool_calls": 1},  # the shortfall: the route states no amount
        "dimension": "tool_calls",
        "step": 1,
    }
    assert row["pending_proposal"]["tool"] == "counter.increment"
    assert started_tools(deployment, run.run_id) == ["kb.search"]
    assert deployment.counter(key) == 0
    assert deployment.svc.store.spend(run_id=run.run_id)["tool_calls"] == 1
    # it holds no budget while it waits
    balance = deployment.svc.ledger.balance(deployment.svc.keys.budget_run(run.run_id))
    assert all(v["reserved"] == 0 for v in balance.values())

    # When an extension of one tool call is granted
    resumed = deployment.svc.extend_budget(run.run_id, {"tool_calls": 1}, "ops:ann", tenant="t1")
    assert resumed.status == "running" and resumed.stop_reason is None

    # Then the kept call runs, exactly once, and the run completes
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded" and done.stop_reason == "completed"
    assert deployment.counter(key) == 1
    assert started_tools(deployment, run.run_id) == ["kb.search", "counter.increment"]
    effects = deployment.svc.store.side_effects(run_id=run.run_id)
    assert [(e["tool"], e["status"]) for e in effects] == [("counter.increment", "succeeded")]
    assert deployment.svc.store.spend(run_id=run.run_id)["tool_calls"] == 2
    assert run_row(deployment, run.run_id)["budget_extension"] == {"granted": {"tool_calls": 1}}
    extended = [e for e in deployment.svc.trace(run.run_id) if e.kind == "budget_extended"]
    assert len(extended) == 1 and extended[0].data["actor"] == "ops:ann"
    assert extended[0].data["amount"] == {"tool_calls": 1}

    # And a second grant for the same wait changes nothing
    with pytest.raises(NotWaitingForBudget):
        deployment.svc.extend_budget(run.run_id, {"tool_calls": 1}, "ops:ann", tenant="t1")
    assert run_row(deployment, run.run_id)["budget_extension"] == {"granted": {"tool_calls": 1}}


def test_ask_before_a_model_call_asks_again_after_the_extension(deployment: Deployment) -> None:
    # Given a route whose runs may ask the model twice, and ask for more
    run = deployment.submit_script([search(), search("more"), reply("ok")], route="r.asks.turns")

    # When the third model call does not fit: refused before the model is asked
    waiting = deployment.svc.wait(run.run_id, timeout=60)
    assert waiting.stop_reason == "needs_approval:budget_extension"
    row = run_row(deployment, run.run_id)
    assert row["budget_extension"]["requested"] == {"model_calls": 1}
    assert row["workflow_step"] == "awaiting_budget:model_calls"
    assert row["pending_proposal"] is None and row["turns"] == 2
    assert deployment.svc.store.spend(run_id=run.run_id)["model_calls"] == 2

    # Then, extended by one call, the model is asked and the run completes
    deployment.svc.extend_budget(run.run_id, {"model_calls": 1}, "ops", tenant="t1")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded" and done.output == {"text": "ok"}
    assert deployment.svc.store.spend(run_id=run.run_id)["model_calls"] == 3
    assert started_tools(deployment, run.run_id) == ["kb.search", "kb.search"]


def test_extension_is_checked_before_anything_is_written(deployment: Deployment) -> None:
    # Given a run that waits for the extension its route states
    key = f"ask-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), route="r.asks.stated")
    waiting = deployment.svc.wait(run.run_id, timeout=60)
    assert waiting.stop_reason == "needs_approval:budget_extension"
    before = run_row(deployment, run.run_id)
    assert before["budget_extension"]["requested"] == {"tool_calls": 3, "model_calls": 2}
    events = len(deployment.svc.store.trace(run.run_id))

    # When another tenant, a malformed amount or actor, or an unknown run asks to extend it
    with pytest.raises(RunNotFound):
        deployment.svc.extend_budget(run.run_id, {"tool_calls": 3}, "ops", tenant="t2")
    with pytest.raises(RunNotFound):
        deployment.svc.extend_budget("no-such-run", {"tool_calls": 3}, "ops", tenant="t1")
    for amount in (
        {},
        {"tool_calls": 0},
        {"tool_calls": -1},
        {"tool_calls": True},
        {"tool_calls": 1.5},
        {"bogus": 1},
        {"tool_calls": 10**12},
        ["tool_calls"],
    ):
        with pytest.raises(InvalidRequest):
            deployment.svc.extend_budget(run.run_id, amount, "ops", tenant="t1")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        deployment.svc.extend_budget(run.run_id, {"tool_calls": 3}, "ops\x00", tenant="t1")

    # Then nothing changed: the run, its trace, its counter
    assert run_row(deployment, run.run_id) == before
    assert len(deployment.svc.store.trace(run.run_id)) == events
    assert deployment.counter(key) == 0

    # And the stated extension, granted by its tenant, lets it finish
    deployment.svc.extend_budget(run.run_id, {"tool_calls": 3, "model_calls": 2}, "ops", "t1")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded" and deployment.counter(key) == 1


def test_a_run_waiting_for_something_else_cannot_be_extended(deployment: Deployment) -> None:
    key = f"ask-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), route="r.level.approval")
    waiting = deployment.svc.wait(run.run_id, timeout=60)
    assert waiting.stop_reason == "needs_approval:autonomy:executes_after_approval"
    before = run_row(deployment, run.run_id)
    with pytest.raises(NotWaitingForBudget):
        deployment.svc.extend_budget(run.run_id, {"tool_calls": 1}, "ops", tenant="t1")
    assert run_row(deployment, run.run_id) == before
    assert deployment.counter(key) == 0


def test_only_the_runs_own_budget_is_extended(deployment: Deployment) -> None:
    # Given tenant tdask, whose day allows one tool call, on a route whose runs allow one
    # and ask for more
    key = f"ask-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), tenant="tdask", route="r.asks")
    waiting = deployment.svc.wait(run.run_id, timeout=60)
    assert waiting.stop_reason == "needs_approval:budget_extension"  # the run's limit first

    # When the run's budget is extended generously
    deployment.svc.extend_budget(run.run_id, {"tool_calls": 5}, "ops", tenant="tdask")

    # Then the tenant's day still refuses the call: that limit is never raised, and a
    # tenant's day does not ask - the run stops
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "budget_exhausted:tool_calls"
    assert deployment.counter(key) == 0
    assert deployment.svc.store.side_effects(run_id=run.run_id) == []
    exhausted = [e for e in deployment.svc.trace(run.run_id) if e.kind == "budget_exhausted"]
    assert exhausted[-1].data["scope"].startswith("tenant:tdask:")
    day = exhausted[-1].data["scope"].rsplit(":", 1)[1]
    tenant_day = deployment.svc.ledger.balance(deployment.svc.keys.budget_tenant_day("tdask", day))
    assert tenant_day["tool_calls"] == {"used": 1, "reserved": 0}


def test_a_tenants_day_stops_the_run_even_when_its_route_asks(deployment: Deployment) -> None:
    # r.asks.roomy: 20 tool calls a run; tenant tdask2's day allows one
    run = deployment.submit_script(
        [search(), search("second"), reply()], tenant="tdask2", route="r.asks.roomy"
    )
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "budget_exhausted:tool_calls"
    assert started_tools(deployment, run.run_id) == ["kb.search"]
    assert run_row(deployment, run.run_id)["budget_extension"] is None


# --- the route's settings --------------------------------------------------------------------


def route(**changes: Any) -> dict[str, Any]:
    return {
        "task_class": "t",
        "risk_class": "low",
        "autonomy_level": "bounded_autonomous",
        "proposer": "scripted",
        "budget_policy": "standard",
        **changes,
    }


def test_a_stated_extension_needs_ask_and_amounts_above_zero() -> None:
    from pydantic import ValidationError

    from runtime.config import RouteConfig

    assert RouteConfig.model_validate(route()).on_budget_exhausted == "stop"
    asks = RouteConfig.model_validate(
        route(on_budget_exhausted="ask", budget_extension={"cost_usd": 0.5})
    )
    assert asks.budget_extension.ledger_limits()["cost_micro_usd"] == 500_000
    with pytest.raises(ValidationError, match="only used with on_budget_exhausted: ask"):
        RouteConfig.model_validate(route(budget_extension={"tool_calls": 2}))
    with pytest.raises(ValidationError, match="tool_calls must be above 0"):
        RouteConfig.model_validate(
            route(on_budget_exhausted="ask", budget_extension={"tool_calls": 0})
        )
    with pytest.raises(ValidationError):
        RouteConfig.model_validate(route(on_budget_exhausted="maybe"))


def test_a_budget_wait_is_an_approval_and_approving_it_grants_what_it_showed(
    deployment: Deployment,
) -> None:
    # Given a run waiting for more budget
    key = f"ask-{uuid.uuid4().hex[:8]}"
    run = deployment.submit_script(script(key), route="r.asks")
    waiting = deployment.svc.wait(run.run_id, timeout=60)
    assert waiting.stop_reason == "needs_approval:budget_extension"

    # Then the wait is an approval like any other, showing the amount it asks for
    approvals = deployment.svc.approvals
    (pending,) = [a for a in approvals.list(tenant="t1") if a.run_id == run.run_id]
    assert pending.approval_id == waiting.approval_id
    assert (pending.tool, pending.args, pending.status) == (
        "budget_extension",
        {"tool_calls": 1},
        "pending",
    )
    # another tenant cannot see or decide it
    with pytest.raises(RunNotFound):
        approvals.approve(pending.approval_id, actor="ops:eve", tenant="t2")

    # When it is approved
    decided = approvals.approve(pending.approval_id, actor="ops:ann", tenant="t1")
    assert decided.status == "consumed" and decided.decided_by == "ops:ann"

    # Then the run's limit grew by exactly that, the kept call ran once, the run completed
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    assert deployment.counter(key) == 1
    assert run_row(deployment, run.run_id)["budget_extension"] == {"granted": {"tool_calls": 1}}
    # and it cannot be spent again
    with pytest.raises(ApprovalClosed):
        approvals.approve(pending.approval_id, actor="ops:ann", tenant="t1")
