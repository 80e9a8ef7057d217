"""Plans (``runtime.step.plan``, ``runtime.step.plan_follow``) with real workers, on both SQL
backends: a plan is checked as a whole before any of it runs, recorded on the run row, and
later proposals are traced against it; a deviation does what the route (or a policy rule)
says. ``counter.increment`` counts what really ran, so the tests assert on effects."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.contract import RunView
from tests.schedule_tools import base_config, write_config
from tests.support import Deployment, pg_schema_url, wait_for

REPLY = {"type": "reply", "text": "done"}
DONE = ("succeeded", "failed", "refused", "cancelled")


def plan_config() -> dict[str, Any]:
    """``r.plan`` (deviation: warn) and its variants; a rule denies ``tickets.update`` on
    every plan route, another denies an increment off the plan on ``r.plan.policy``."""
    data = base_config()
    plan = copy.deepcopy(data["routes"]["r.basic"])
    plan.update(max_steps=6, max_invalid_proposals=0)
    variants = {
        "r.plan": {},
        "r.plan.ignore": {"plan_deviation": "ignore"},
        "r.plan.refuse": {"plan_deviation": "refuse"},
        "r.plan.approve": {"plan_deviation": "require_approval"},
        "r.plan.required": {"plan_required": True},
        "r.plan.policy": {"plan_deviation": "ignore"},
    }
    for name, fields in variants.items():
        data["routes"][name] = {**copy.deepcopy(plan), **fields}
    data["policy"]["rules"] += [
        {"id": "no_tickets_in_plans", "effect": "deny",
         "match": {"tool": ["tickets.update"], "route": ["r.plan*"]}},
        {"id": "off_plan_writes_denied", "effect": "deny",
         "match": {"route": ["r.plan.policy"], "side_effect": ["write"], "plan_deviation": True}},
    ]  # fmt: skip
    return data


@pytest.fixture(scope="module")
def dep(
    backend: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"plans-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'agentrt.db'}"
    else:
        url = pg_schema_url(
            request.getfixturevalue("pg_base_url"), f"agentrt_t_{uuid.uuid4().hex[:10]}"
        )
    d = Deployment.create(
        name=f"p{backend[:2]}", redis_url=redis_url, database_url=url,
        config=write_config(plan_config(), Path(tmp)), home=Path(tmp),
    )  # fmt: skip
    d.start_worker(concurrency=2)
    try:
        yield d
    finally:
        d.close()


def inc(key: str, by: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "by": by}}


def search(query: str = "refund") -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": query}}


def plan(*steps: tuple[str, str | None]) -> dict[str, Any]:
    return {
        "type": "plan",
        "steps": [{"action": a, **({"target": t} if t else {})} for a, t in steps],
    }


def key() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def run(dep: Deployment, route: str, script: list[Any]) -> RunView:
    return dep.submit_script(script, route=route, request_id=uuid.uuid4().hex)


def settled(dep: Deployment, run_id: str, *also: str) -> RunView:
    def done() -> RunView | None:
        view = dep.svc.get(run_id)
        return view if view.status.value in (*DONE, *also) else None

    try:
        found: RunView = wait_for(done, timeout=90, message=f"run {run_id} to settle")
    except AssertionError:
        trace = [(e.step, e.kind, e.data) for e in dep.svc.trace(run_id)]
        raise AssertionError(
            f"run {run_id} did not settle: {dep.svc.get(run_id)} {trace}"
        ) from None
    return found


def events(dep: Deployment, run_id: str, *kinds: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.data) for e in dep.svc.trace(run_id) if e.kind in kinds]


def stored_plan(dep: Deployment, run_id: str) -> dict[str, Any] | None:
    plan_: dict[str, Any] | None = dep.svc.store.get_run(run_id)["plan"]
    return plan_


# --- checked before any of it runs ----------------------------------------------------


def test_a_plan_naming_a_denied_tool_is_refused_and_none_of_it_runs(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "counter.increment"), ("tool_call", "tickets.update"))
    view = settled(dep, run(dep, "r.plan", [proposed, inc(k), REPLY]).run_id)
    assert (view.status.value, view.stop_reason) == (
        "refused",
        "invalid_proposal:plan_policy_denied",
    )
    assert dep.counter(k) == 0  # the allowed first step never ran either
    denied = events(dep, view.run_id, "plan_policy_denied")
    assert [(d["index"], d["tool"], d["rule"]) for _, d in denied] == [
        (1, "tickets.update", "no_tickets_in_plans")
    ]
    steps = dep.svc.store.steps(view.run_id)
    assert [s["outcome"] for s in steps] == ["invalid_proposal:plan_policy_denied"]
    errors = steps[0]["observation"]["errors"]
    assert errors[0]["loc"] == "steps.1.target" and errors[0]["rule"] == "no_tickets_in_plans"
    assert stored_plan(dep, view.run_id) is None


def test_a_plan_naming_a_tool_the_route_does_not_allow_is_refused(dep: Deployment) -> None:
    proposed = plan(("tool_call", "kb.search"), ("tool_call", "payments.refund"))
    view = settled(dep, run(dep, "r.plan", [proposed, REPLY]).run_id)
    assert view.stop_reason == "invalid_proposal:plan_tool_not_allowed"
    errors = dep.svc.store.steps(view.run_id)[0]["observation"]["errors"]
    assert errors == [{"loc": "steps.1.target", "msg": "'payments.refund': tool_not_allowed"}]


def test_a_plan_longer_than_the_steps_left_is_refused(dep: Deployment) -> None:
    # max_steps 6: the plan step itself leaves 5
    five = plan(*[("tool_call", "kb.search")] * 5)
    six = plan(*[("tool_call", "kb.search")] * 6)
    too_long = settled(dep, run(dep, "r.plan", [six, REPLY]).run_id)
    assert (too_long.status.value, too_long.stop_reason) == (
        "refused",
        "invalid_proposal:plan_too_long",
    )
    # later in the run, fewer are left: the same five no longer fit after two searches
    late = settled(dep, run(dep, "r.plan", [search(), search(), five, REPLY]).run_id)
    assert late.stop_reason == "invalid_proposal:plan_too_long"
    fits = settled(dep, run(dep, "r.plan", [five, REPLY]).run_id)
    assert fits.status.value == "succeeded"


# --- followed -------------------------------------------------------------------------


def test_a_run_following_its_plan_has_matched_steps(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"), ("tool_call", "counter.increment"), ("reply", None))
    view = settled(dep, run(dep, "r.plan", [proposed, search(), inc(k, 3), REPLY]).run_id)
    assert (view.status.value, view.stop_reason) == ("succeeded", "completed")
    assert dep.counter(k) == 3
    kinds = events(dep, view.run_id, "plan_recorded", "plan_step", "plan_deviation")
    assert kinds[0][0] == "plan_recorded" and len(kinds[0][1]["steps"]) == 3
    assert kinds[1:] == [
        ("plan_step", {"index": 0, "matched": True}),
        ("plan_step", {"index": 1, "matched": True}),
        ("plan_step", {"index": 2, "matched": True}),
    ]
    steps = dep.svc.store.steps(view.run_id)
    assert (steps[0]["kind"], steps[0]["outcome"]) == ("plan", "plan_accepted")
    assert steps[0]["observation"] == {"plan": "accepted", "steps": 3}
    recorded = stored_plan(dep, view.run_id)
    assert recorded is not None and recorded["next"] == 3 and recorded["step_no"] == 0
    assert dep.svc.store.get_run(view.run_id)["turns"] == 4  # the plan step is a step


def test_a_new_plan_replaces_the_old_one(dep: Deployment) -> None:
    first = plan(("tool_call", "kb.search"), ("tool_call", "kb.search"))
    second = plan(("tool_call", "reports.generate"))
    report = {"type": "tool_call", "tool": "reports.generate", "args": {"topic": "q3"}}
    view = settled(dep, run(dep, "r.plan", [first, search(), second, report, REPLY]).run_id)
    assert view.status.value == "succeeded"
    kinds = events(
        dep, view.run_id, "plan_recorded", "plan_replaced", "plan_step", "plan_deviation"
    )
    assert [k for k, _ in kinds] == [
        "plan_recorded", "plan_step", "plan_replaced", "plan_recorded", "plan_step",
    ]  # fmt: skip
    assert kinds[2][1] == {"proposed_at": 0, "followed": 1, "steps": 2}
    assert kinds[4][1] == {"index": 0, "matched": True}


# --- deviations -----------------------------------------------------------------------


def test_a_deviation_under_warn_is_an_event_and_the_call_runs(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"), ("reply", None))
    view = settled(dep, run(dep, "r.plan", [proposed, inc(k), search(), REPLY]).run_id)
    assert view.status.value == "succeeded" and dep.counter(k) == 1
    kinds = events(dep, view.run_id, "plan_step", "plan_deviation")
    assert kinds == [
        (
            "plan_deviation",
            {
                "index": 0,
                "expected": {"action": "tool_call", "target": "kb.search"},
                "proposed": {"action": "tool_call", "target": "counter.increment"},
                "action": "warn",
            },
        ),
        # the plan still expected its first step: the search then matched it
        ("plan_step", {"index": 0, "matched": True}),
        ("plan_step", {"index": 1, "matched": True}),
    ]


def test_a_deviation_under_ignore_is_recorded_as_an_unmatched_step(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"))
    view = settled(dep, run(dep, "r.plan.ignore", [proposed, inc(k), REPLY]).run_id)
    assert view.status.value == "succeeded" and dep.counter(k) == 1
    # the increment, then the reply (the plan still expected its search): unmatched, no event
    assert events(dep, view.run_id, "plan_step", "plan_deviation") == [
        ("plan_step", {"index": 0, "matched": False}),
        ("plan_step", {"index": 0, "matched": False}),
    ]


def test_a_deviation_under_refuse_is_refused_and_never_runs(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"), ("tool_call", "counter.increment"))
    view = settled(dep, run(dep, "r.plan.refuse", [proposed, inc(k), REPLY]).run_id)
    assert (view.status.value, view.stop_reason) == ("refused", "invalid_proposal:plan_deviation")
    assert dep.counter(k) == 0
    # ending the run before the plan is done is a deviation too
    early = settled(dep, run(dep, "r.plan.refuse", [proposed, search(), REPLY]).run_id)
    assert early.stop_reason == "invalid_proposal:plan_deviation"
    # after the last planned step, a reply is what follows
    k2 = key()
    done = settled(dep, run(dep, "r.plan.refuse", [proposed, search(), inc(k2), REPLY]).run_id)
    assert (done.status.value, dep.counter(k2)) == ("succeeded", 1)


def test_a_deviation_under_require_approval_waits_and_runs_once_approved(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"))
    script = [proposed, inc(k, 2), search(), REPLY]
    view = settled(dep, run(dep, "r.plan.approve", script).run_id, "waiting")
    assert (view.status.value, view.stop_reason) == ("waiting", "needs_approval:plan_deviation")
    assert dep.counter(k) == 0  # nothing ran while it waited
    approval = dep.svc.approvals.get(str(view.approval_id))
    assert (approval.rule, approval.tool) == ("plan_deviation", "counter.increment")
    dep.svc.approvals.approve(approval.approval_id, "ops:ann", reason="fine")
    done = settled(dep, view.run_id)
    assert (done.status.value, done.stop_reason) == ("succeeded", "completed")
    assert dep.counter(k) == 2
    assert dep.svc.approvals.get(approval.approval_id).status == "consumed"
    # the approved call did not advance the plan: the search after it did
    assert [d for _, d in events(dep, view.run_id, "plan_step")] == [{"index": 0, "matched": True}]
    # the call that follows the plan needs no one
    k2 = key()
    both = plan(("tool_call", "kb.search"), ("tool_call", "counter.increment"))
    followed = settled(dep, run(dep, "r.plan.approve", [both, search(), inc(k2), REPLY]).run_id)
    assert followed.status.value == "succeeded" and dep.counter(k2) == 1
    # another kind off the plan cannot wait for an approval: refused (fail closed)
    ends = settled(dep, run(dep, "r.plan.approve", [proposed, REPLY]).run_id)
    assert ends.stop_reason == "invalid_proposal:plan_deviation"


def test_a_policy_rule_can_act_on_a_deviation(dep: Deployment) -> None:
    k = key()
    proposed = plan(("tool_call", "kb.search"), ("tool_call", "counter.increment"))
    # off the plan: the rule denies the write (the route itself would ignore it)
    off = settled(dep, run(dep, "r.plan.policy", [proposed, inc(k), REPLY]).run_id)
    assert (off.status.value, off.stop_reason) == (
        "refused",
        "policy_denied:off_plan_writes_denied",
    )
    assert dep.counter(k) == 0
    # on the plan the same write runs; and without a plan there is no deviation
    on = settled(dep, run(dep, "r.plan.policy", [proposed, search(), inc(k), REPLY]).run_id)
    bare = settled(dep, run(dep, "r.plan.policy", [inc(k), REPLY]).run_id)
    assert (on.status.value, bare.status.value, dep.counter(k)) == ("succeeded", "succeeded", 2)


def test_plan_required_refuses_a_tool_call_before_any_plan(dep: Deployment) -> None:
    k = key()
    view = settled(dep, run(dep, "r.plan.required", [inc(k), REPLY]).run_id)
    assert (view.status.value, view.stop_reason) == ("refused", "invalid_proposal:plan_required")
    assert dep.counter(k) == 0
    planned = plan(("tool_call", "counter.increment"))
    ok = settled(dep, run(dep, "r.plan.required", [planned, inc(k), REPLY]).run_id)
    assert (ok.status.value, dep.counter(k)) == ("succeeded", 1)
    # a reply needs no plan
    reply = settled(dep, run(dep, "r.plan.required", [REPLY]).run_id)
    assert reply.status.value == "succeeded"


def test_a_call_the_plan_refuses_is_stored_without_its_secret_arguments(dep: Deployment) -> None:
    pin = "73915528"
    unlock = {"type": "tool_call", "tool": "vault.unlock", "args": {"vault_id": "v1", "pin": pin}}
    view = settled(dep, run(dep, "r.plan.required", [unlock, REPLY]).run_id)
    assert view.stop_reason == "invalid_proposal:plan_required"
    [step] = dep.svc.store.steps(view.run_id)
    assert step["proposal"]["args"] == {"vault_id": "v1", "pin": "[redacted]"}
    assert pin not in str(step)
    assert pin not in str([e.data for e in dep.svc.trace(view.run_id)])


def test_a_run_without_a_plan_has_no_plan_events(dep: Deployment) -> None:
    view = settled(dep, run(dep, "r.plan", [search(), REPLY]).run_id)
    assert view.status.value == "succeeded"
    assert events(dep, view.run_id, "plan_step", "plan_deviation", "plan_recorded") == []
    assert stored_plan(dep, view.run_id) is None


# --- the rules, without workers -------------------------------------------------------


def test_a_policy_rule_matches_on_plan_deviation() -> None:
    from runtime.config import PolicyRule
    from runtime.policy import PolicyContext, rule_matches

    def ctx(deviation: bool) -> PolicyContext:
        return PolicyContext(
            tool="counter.increment", args={}, side_effect="write", tenant="t1", route="r",
            risk_class="low", autonomy_level="bounded_autonomous",
            allowed_tools=("counter.increment",), tool_registered=True, tool_enabled=True,
            plan_deviation=deviation,
        )  # fmt: skip

    off = PolicyRule.model_validate(
        {"id": "off", "effect": "deny", "match": {"plan_deviation": True}}
    )
    on = PolicyRule.model_validate(
        {"id": "on", "effect": "deny", "match": {"plan_deviation": False}}
    )
    either = PolicyRule.model_validate({"id": "any", "effect": "deny"})
    assert (rule_matches(off, ctx(True)), rule_matches(off, ctx(False))) == (True, False)
    assert (rule_matches(on, ctx(True)), rule_matches(on, ctx(False))) == (False, True)
    assert rule_matches(either, ctx(True)) and rule_matches(either, ctx(False))


def test_a_route_names_a_known_deviation_rule() -> None:
    from runtime.config import parse_config
    from runtime.errors import ConfigError

    data = plan_config()
    data["routes"]["r.plan"]["plan_deviation"] = "shrug"
    with pytest.raises(ConfigError, match=r"routes\.r\.plan\.plan_deviation: Input should be"):
        parse_config(data)
    data["routes"]["r.plan"]["plan_deviation"] = "refuse"
    assert parse_config(data).routes["r.plan"].plan_deviation == "refuse"


# --- following, without workers: what each kind is compared on --------------------------


def _step(plan_: dict[str, Any] | None, **route: Any) -> Any:
    from runtime.config import parse_config
    from runtime.step.state import Step
    from runtime.tracing import TraceBuffer

    data = plan_config()
    data["routes"]["r.plan"].update(route)
    config = parse_config(data)
    run_row = {"run_id": "r1", "tenant_id": "t1", "plan": plan_, "pending_proposal": None,
               "invalid_proposals": 0}  # fmt: skip
    return Step(run_row, config.routes["r.plan"], 3, 0, TraceBuffer("r1", "t1", "tr", 3))


def _plan_of(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(steps), "next": 0, "step_no": 0, "deviated": False}


@pytest.mark.parametrize(
    ("planned", "proposed", "matched"),
    [
        ({"action": "retrieval_query", "target": "kb"},
         {"type": "retrieval_query", "query": "q", "sources": ["docs", "kb"]}, True),
        ({"action": "retrieval_query", "target": "kb"},
         {"type": "retrieval_query", "query": "q", "sources": ["docs"]}, False),
        ({"action": "retrieval_query"},
         {"type": "retrieval_query", "query": "q", "sources": ["docs"]}, True),
        ({"action": "memory_write", "target": "prefs"},
         {"type": "memory_write", "namespace": "prefs", "key": "k", "content": "c",
          "retention": "run"}, True),
        ({"action": "memory_write", "target": "prefs"},
         {"type": "memory_write", "key": "k", "content": "c", "retention": "run"}, False),
        ({"action": "delegate", "target": "r.child"},
         {"type": "delegate", "route": "r.child", "goal": "g"}, True),
        ({"action": "delegate", "target": "r.child"},
         {"type": "delegate", "route": "r.other", "goal": "g"}, False),
        ({"action": "tool_call", "target": "kb.search"},
         {"type": "delegate", "route": "kb.search", "goal": "g"}, False),
        ({"action": "stop"}, {"type": "stop"}, True),
    ],
)  # fmt: skip
def test_each_kind_is_compared_on_its_action_and_target(
    planned: dict[str, Any], proposed: dict[str, Any], matched: bool
) -> None:
    from runtime import proposals
    from runtime.step.plan_follow import follow

    st = _step(_plan_of(planned))
    deviated = follow(st, proposals.parse(proposed))
    assert deviated is (not matched)
    assert st.run_updates["plan"]["next"] == (1 if matched else 0)
    kinds = [e["kind"] for e in st.trace.events]
    assert kinds == (["plan_step"] if matched else ["plan_deviation"])


def test_an_ending_after_the_last_planned_step_follows_the_plan() -> None:
    from runtime import proposals
    from runtime.step.plan_follow import follow

    done = {**_plan_of({"action": "tool_call", "target": "kb.search"}), "next": 1}
    for ending in ({"type": "reply", "text": "ok"}, {"type": "stop"}):
        st = _step(done, plan_deviation="refuse")
        assert follow(st, proposals.parse(ending)) is False and st.trace.events == []
    # anything else after it is off the plan
    st = _step(done, plan_deviation="refuse")
    refused = follow(st, proposals.parse(search()))
    assert not isinstance(refused, bool) and refused.outcome == "invalid_proposal:plan_deviation"
    [event] = [e for e in st.trace.events if e["kind"] == "plan_deviation"]
    assert event["data"]["expected"] is None


def test_a_resumed_call_keeps_the_verdict_it_was_proposed_with() -> None:
    from runtime import proposals
    from runtime.step.plan_follow import follow

    planned = _plan_of({"action": "tool_call", "target": "kb.search"})
    for deviated in (True, False):
        st = _step({**planned, "deviated": deviated}, plan_deviation="refuse")
        st.run["pending_proposal"] = {"type": "tool_call", "tool": "counter.increment"}
        # compared when it was proposed: neither refused again nor advancing the plan
        assert follow(st, proposals.parse(inc("k"))) is deviated
        assert st.trace.events == [] and "plan" not in st.run_updates


def test_a_route_needing_a_plan_its_model_is_never_offered_is_refused() -> None:
    from runtime.config import parse_config
    from runtime.errors import ConfigError

    data = plan_config()
    chat = copy.deepcopy(data["routes"]["r.chat"])  # an openai model
    data["routes"]["r.chat.strict"] = {**chat, "plan_required": True}
    with pytest.raises(ConfigError, match=r"routes\.r\.chat\.strict\.plan_required: its model"):
        parse_config(data)
    data["routes"]["r.chat.strict"]["proposal_kinds"] = ["plan"]
    assert parse_config(data).routes["r.chat.strict"].proposal_kinds == ["plan"]
    # the same kind named twice is a mistake too
    data["routes"]["r.chat.strict"]["proposal_kinds"] = ["plan", "plan"]
    with pytest.raises(ConfigError, match="proposal_kinds names plan twice"):
        parse_config(data)
