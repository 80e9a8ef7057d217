"""Delegation to child runs under the parent's budget, with real workers (both backends).

``tests/config/delegation.yaml``: ``d.parent`` may delegate to ``d.child``, ``d.mid``,
``d.gated`` and ``d.denied`` (a policy rule denies ``delegate:d.denied``), at most 3
children, depth 1; its per-run budget is 8 model calls in all, its children's included.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.config import DIMENSIONS, parse_config
from runtime.contract import RunView
from runtime.embedded_redis import start_server
from runtime.errors import ConfigError, WaitTimeout
from runtime.scheduling.scheduler import item_of
from runtime.stop_reasons import awaits_child
from runtime.wiring import build_reconciler
from tests.conftest import _database_url
from tests.support import Deployment, wait_for

CONFIG = Path(__file__).resolve().parent / "config" / "delegation.yaml"
ENDED = ("succeeded", "failed", "refused", "cancelled")
USAGE = {"input_tokens": 40, "output_tokens": 10}
SEARCH = {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"}, "usage": USAGE}


def reply(text: str) -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


def delegate(route: str, script: list[Any], **budget: Any) -> dict[str, Any]:
    proposal: dict[str, Any] = {
        "type": "delegate",
        "route": route,
        "goal": "help the parent",
        "input": {"script": script},
        "usage": USAGE,
    }
    if budget:
        proposal["budget"] = budget
    return proposal


@pytest.fixture(scope="module")
def dep(
    backend: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory, request: Any
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"deleg-{backend}")
    deployment = Deployment.create(
        name=f"d{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=CONFIG,
        home=tmp,
    )
    try:
        deployment.start_worker(concurrency=2)
        yield deployment
    finally:
        deployment.close()


def submit(dep: Deployment, script: list[Any], **kw: Any) -> RunView:
    return dep.submit_script(script, route=kw.pop("route", "d.parent"), **kw)


def ended(dep: Deployment, run_id: str, timeout: float = 60) -> RunView:
    def done() -> RunView | None:
        view = dep.svc.get(run_id)
        return view if view.status.value in ENDED else None

    return wait_for(done, timeout=timeout, message=f"run {run_id} to end")


def children(dep: Deployment, run_id: str, tenant: str = "t1") -> list[dict[str, Any]]:
    return dep.svc.store.children(run_id, tenant)


def children_pending(dep: Deployment, run_id: str) -> bool:
    """Whether the parent still waits for a child (it has not been resumed)."""
    return awaits_child(dep.svc.get(run_id).stop_reason)


def kinds(dep: Deployment, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e["kind"], e["data"]) for e in dep.svc.store.trace(run_id)]


def observations(dep: Deployment, run_id: str) -> list[Any]:
    return [s["observation"] for s in dep.svc.store.steps(run_id)]


def run_balance(dep: Deployment, run_id: str) -> dict[str, dict[str, int]]:
    return dep.svc.ledger.balance(dep.svc.keys.budget_run(run_id))


# --- the path ---------------------------------------------------------------------------
def test_child_reply_is_the_parents_observation_then_the_parent_replies(
    dep: Deployment,
) -> None:
    # Given a parent that delegates to d.child, whose child replies "found it"
    parent = submit(dep, [delegate("d.child", [SEARCH, reply("found it")]), reply("done")])

    # When it runs
    view = ended(dep, parent.run_id)

    # Then the parent succeeded after its child, whose reply came back as an observation
    assert view.status.value == "succeeded", view
    (child,) = children(dep, parent.run_id)
    assert child["status"] == "succeeded" and child["depth"] == 1
    assert child["output"] == {"text": "found it"}
    returned = [o for o in observations(dep, parent.run_id) if o and "child_run_id" in o]
    assert returned and returned[0]["output"] == {"text": "found it"}
    assert returned[0]["status"] == "succeeded"
    # the child inherits tenant and actor, and the trace links both ways
    row = dep.svc.store.get_run(child["run_id"])
    assert (row["tenant_id"], row["actor_id"]) == ("t1", "tester")
    assert row["parent_run_id"] == parent.run_id
    assert ("delegated", child["run_id"]) in [
        (k, d.get("child_run_id")) for k, d in kinds(dep, parent.run_id)
    ]
    assert ("delegated_from", parent.run_id) in [
        (k, d.get("parent_run_id")) for k, d in kinds(dep, child["run_id"])
    ]


def test_unspent_child_budget_returns_to_the_parent(dep: Deployment) -> None:
    # Given a child given 2 model calls (the default budget) that uses one
    parent = submit(dep, [delegate("d.child", [reply("quick")]), reply("done")])

    view = ended(dep, parent.run_id)

    # Then the parent's scope holds nothing open and counts what was really spent: its own
    # 2 model calls, its child's 1 (not the 2 carved), and one delegation
    assert view.status.value == "succeeded", view
    balance = run_balance(dep, parent.run_id)
    assert {d: balance[d]["reserved"] for d in DIMENSIONS} == dict.fromkeys(DIMENSIONS, 0)
    assert balance["model_calls"]["used"] == 3
    assert balance["delegations"]["used"] == 1
    # and the child's own limits were what was carved
    (child,) = children(dep, parent.run_id)
    assert child["delegated_budget"]["model_calls"] == 2


# --- refusals ---------------------------------------------------------------------------
def test_a_route_not_in_delegates_to_is_refused(dep: Deployment) -> None:
    parent = submit(dep, [delegate("d.outside", [reply("x")]), reply("done")])

    view = ended(dep, parent.run_id)

    assert view.status.value == "succeeded", view
    assert children(dep, parent.run_id) == []
    assert {"refused": "route_not_delegable"}.items() <= observations(dep, parent.run_id)[0].items()


def test_depth_and_fan_out_are_capped(dep: Deployment) -> None:
    # Depth: d.mid (depth 1) may not delegate below max_depth 1
    mid_script = [delegate("d.child", [reply("deep")]), reply("mid done")]
    parent = submit(dep, [delegate("d.mid", mid_script), reply("done")])
    ended(dep, parent.run_id)
    (mid,) = children(dep, parent.run_id)
    assert mid["status"] == "succeeded"
    assert children(dep, mid["run_id"]) == []
    assert observations(dep, mid["run_id"])[0]["refused"] == "delegation_too_deep"

    # Fan-out: a fourth child is refused (max_children 3)
    one = delegate("d.child", [reply("c")], modelCalls=1, tokens=2000)
    parent = submit(dep, [one, one, one, one, reply("done")])
    view = ended(dep, parent.run_id)
    assert view.status.value == "succeeded", view
    assert len(children(dep, parent.run_id)) == 3
    refused = [o.get("refused") for o in observations(dep, parent.run_id) if o]
    assert "too_many_children" in refused


def test_a_child_admission_would_refuse_is_refused(dep: Deployment) -> None:
    # d.child accepts the default 64 KiB of input; a child's input is held to it as a submit's
    big = delegate("d.child", [reply("x")])
    big["input"]["padding"] = "x" * 70_000
    parent = submit(dep, [big, reply("done")])

    assert ended(dep, parent.run_id).status.value == "succeeded"
    assert observations(dep, parent.run_id)[0]["refused"] == "child_refused:input_too_large"
    assert children(dep, parent.run_id) == []
    assert run_balance(dep, parent.run_id)["model_calls"]["reserved"] == 0


def test_the_delegations_dimension_limits_a_runs_children(dep: Deployment) -> None:
    # d.one's budget policy allows one delegation per run
    one = delegate("d.child", [reply("c")])
    parent = submit(dep, [one, one, reply("done")], route="d.one")

    view = ended(dep, parent.run_id)

    assert view.status.value == "succeeded", view
    assert len(children(dep, parent.run_id)) == 1
    refused = [o.get("refused") for o in observations(dep, parent.run_id) if o]
    assert "budget_exhausted:delegations" in refused
    assert run_balance(dep, parent.run_id)["delegations"] == {"used": 1, "reserved": 0}


def test_the_policy_can_deny_a_delegation(dep: Deployment) -> None:
    parent = submit(dep, [delegate("d.denied", [reply("x")]), reply("done")])

    view = ended(dep, parent.run_id)

    assert view.status.value == "refused", view
    assert view.stop_reason == "policy_denied:no_delegating_to_denied"
    assert children(dep, parent.run_id) == []
    assert run_balance(dep, parent.run_id)["delegations"] == {"used": 0, "reserved": 0}


def test_a_child_budget_the_parent_cannot_cover_is_refused(dep: Deployment) -> None:
    # the parent has 8 model calls; a child asking for 9 never fits
    parent = submit(dep, [delegate("d.child", [reply("x")], modelCalls=9), reply("done")])

    view = ended(dep, parent.run_id)

    assert view.status.value == "succeeded", view
    assert observations(dep, parent.run_id)[0]["refused"] == "budget_exhausted:model_calls"
    assert children(dep, parent.run_id) == []


# --- cancel -----------------------------------------------------------------------------
def test_cancelling_a_parent_cancels_its_children(dep: Deployment) -> None:
    # Given a parent waiting for a child that waits for an approval (it never ends alone)
    write = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "k", "by": 1}}
    parent = submit(dep, [delegate("d.gated", [write, reply("x")]), reply("done")])

    def child_waiting() -> dict[str, Any] | None:
        found = children(dep, parent.run_id)
        return found[0] if found and found[0]["status"] == "waiting" else None

    child = wait_for(child_waiting, timeout=60, message="the child to wait for its approval")
    assert dep.svc.get(parent.run_id).status.value == "waiting"
    # waiting for a person ends a caller's wait; waiting for a child does not (the parent
    # is still working: it goes on until its child's person decides)
    assert dep.svc.wait(child["run_id"], timeout=60).stop_reason.startswith("needs_approval")
    with pytest.raises(WaitTimeout):
        dep.svc.wait(parent.run_id, timeout=0.5)

    # When the parent is cancelled
    dep.svc.cancel(parent.run_id, "ops:ann")

    # Then both ended cancelled, and the budget carved for the child went back
    assert ended(dep, parent.run_id).status.value == "cancelled"
    assert ended(dep, child["run_id"]).status.value == "cancelled"
    balance = run_balance(dep, parent.run_id)
    assert {d: balance[d]["reserved"] for d in DIMENSIONS} == dict.fromkeys(DIMENSIONS, 0)
    assert balance["delegations"]["used"] == 1


def test_a_child_cancelled_while_its_own_child_holds_budget_charges_its_parent_for_it(
    dep: Deployment,
) -> None:
    # Given A -> B (d.relay) -> C (d.gated), C waiting for an approval: B's scope holds
    # the budget B carved for C
    write = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "k", "by": 1}}
    grandchild = delegate(
        "d.gated", [write, reply("c")], tokens=5000, model_calls=1, tool_calls=1, cost_usd=0.01
    )
    parent = submit(dep, [delegate("d.relay", [grandchild, reply("b")]), reply("done")])

    def waiting_grandchild() -> dict[str, Any] | None:
        found = children(dep, parent.run_id)
        below = children(dep, found[0]["run_id"]) if found else []
        return below[0] if below and below[0]["status"] == "waiting" else None

    wait_for(waiting_grandchild, timeout=60, message="the grandchild to wait for its approval")
    (relay,) = children(dep, parent.run_id)
    held = run_balance(dep, relay["run_id"])
    assert held["model_calls"] == {"used": 1, "reserved": 1}  # B's own call; C's carve

    # When B is cancelled (its child goes with it) and A goes on
    dep.svc.cancel(relay["run_id"], "ops:ann")
    assert ended(dep, parent.run_id).status.value == "succeeded"

    # Then A was charged B's call and all of C's carve (C might have spent it), besides
    # its own two calls: nothing B's subtree held came back to A as unspent
    balance = run_balance(dep, parent.run_id)
    assert balance["model_calls"] == {"used": 4, "reserved": 0}
    assert balance["delegations"]["used"] == 1


def test_a_child_is_never_admitted_onto_a_stopped_route(dep: Deployment) -> None:
    # Given d.child stopped by an operator (drain: its running runs finish, none starts)
    dep.svc.levers.stop_route("d.child", "drain", actor="ops:ann")
    try:
        parent = submit(dep, [delegate("d.child", [reply("x")]), reply("done")])
        view = ended(dep, parent.run_id)
    finally:
        dep.svc.levers.start_route("d.child", actor="ops:ann")
    # Then the delegation was refused as a submit would be, and no child exists
    assert children(dep, parent.run_id) == []
    refused = [o for o in observations(dep, parent.run_id) if o and "refused" in o]
    assert refused and refused[0]["refused"] == "child_refused:route_stopped", refused
    assert view.status.value == "succeeded"


def test_a_redelivered_delegation_gives_the_child_only_what_was_carved(
    fresh_deployment: Deployment, tmp_path: Path
) -> None:
    d = Deployment.create(
        name=f"dr{uuid.uuid4().hex[:4]}",
        redis_url=fresh_deployment.env["AGENTRT_REDIS_URL"],
        database_url=f"sqlite:///{tmp_path / 'redeliver.db'}",
        config=CONFIG,
        home=tmp_path,
    )
    svc = d.svc
    try:
        # no worker: this process runs the step. Its model asks for a large budget...
        big = delegate("d.child", [reply("x")], tokens=50000, model_calls=5)
        parent = svc.submit("t1", "d.parent", "g", {"script": [big, reply("done")]}, actor="t")
        # ...but an earlier copy of the step (another proposal) carved a small one and
        # died before its checkpoint
        limits = svc.config.budget_policies["parent"].per_run.ledger_limits()
        scope = svc.ledger.run_scope(parent.run_id, limits)
        small = {"tokens": 1000, "model_calls": 1, "tool_calls": 1, "cost_micro_usd": 10_000}
        svc.ledger.carve(parent.run_id, 0, scope, {**small, "delegations": 1})

        result = svc.steps.run(item_of(svc.store.get_run(parent.run_id), 0), attempt=1)

        # Then the child is limited to what its parent holds for it, not to what was asked
        assert result.outcome.startswith("delegated"), result
        (child,) = svc.store.children(parent.run_id, "t1")
        budget = child["delegated_budget"]
        assert {k: budget[k] for k in small} == small
        held = svc.ledger.carved(parent.run_id, 0)
        assert held is not None and {k: held[k] for k in small} == small
    finally:
        svc.leases.liveness.stop()
        d.close()


def test_the_reconciler_resumes_a_parent_whose_child_ended_outside_a_step(
    dep: Deployment,
) -> None:
    # Given a child whose approval expires (the reconciler ends it, no step does)
    write = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "e", "by": 1}}
    parent = submit(dep, [delegate("d.expiring", [write, reply("x")]), reply("done")])
    wait_for(
        lambda: [c for c in children(dep, parent.run_id) if c["status"] == "waiting"],
        timeout=60,
        message="the child to wait for its approval",
    )
    reconciler = build_reconciler(dep.svc, grace_s=60)
    resumed: list[str] = []

    def parent_resumed() -> bool:
        resumed.extend(reconciler.reconcile().parents_resumed)
        # the worker's pump runs a reconciler too, and either may follow the child up first
        return parent.run_id in resumed or not children_pending(dep, parent.run_id)

    # When the reconciler runs until the approval expired
    wait_for(parent_resumed, timeout=60, message="a reconciler to resume the parent")

    # Then the parent learned how its child ended, went on, and the carved budget came back
    assert ended(dep, parent.run_id).status.value == "succeeded"
    returned = [o for o in observations(dep, parent.run_id) if o and "child_run_id" in o]
    assert returned[0]["status"] == "failed"
    assert returned[0]["stop_reason"] == "approval_expired"
    balance = run_balance(dep, parent.run_id)
    assert {d: balance[d]["reserved"] for d in DIMENSIONS} == dict.fromkeys(DIMENSIONS, 0)


# --- concurrency ------------------------------------------------------------------------
@pytest.mark.slow
def test_fifty_parents_with_three_children_each_never_overspend(dep: Deployment) -> None:
    dep.start_worker(concurrency=2)
    # Given 50 parents (8 model calls each) whose three children ask for 2, 2 and 3 model
    # calls: with the parent's own calls, more than the parent has
    kid = [SEARCH, reply("kid")]
    script = [
        delegate("d.child", kid, modelCalls=2),
        delegate("d.child", kid, modelCalls=2),
        delegate("d.child", kid, modelCalls=3),
        reply("done"),
    ]
    parents = [submit(dep, script, tenant="t2") for _ in range(50)]

    # When they all run at once, then every run ends (parents and children)...
    ids = [p.run_id for p in parents]
    for run_id in ids:
        ended(dep, run_id, timeout=240)
    limits = dep.svc.config.budget_policies["parent"].per_run.ledger_limits()
    for run_id in ids:
        kids = children(dep, run_id, "t2")
        for kid_row in kids:
            assert ended(dep, kid_row["run_id"]).status.value in ENDED
        # ...and parent + children settled no more than the parent's per-run limits
        spent = dep.svc.store.spend(run_id=run_id)
        for kid_row in kids:
            kid_spend = dep.svc.store.spend(run_id=kid_row["run_id"])
            for dim in ("tokens", "model_calls", "tool_calls", "cost_micro_usd"):
                spent[dim] += kid_spend[dim]
        for dim in ("tokens", "model_calls", "tool_calls", "cost_micro_usd"):
            assert spent[dim] <= limits[dim], (run_id, dim, spent)
        # the ledger agrees with SQL and holds nothing open
        balance = run_balance(dep, run_id)
        assert balance["model_calls"]["used"] == spent["model_calls"], run_id
        assert {d: balance[d]["reserved"] for d in DIMENSIONS} == dict.fromkeys(DIMENSIONS, 0)
        assert balance["delegations"]["used"] == len(kids) <= 3
    # the third child did not fit: refused on the parent's remaining model calls
    refused = [
        o.get("refused") for run_id in ids for o in observations(dep, run_id) if isinstance(o, dict)
    ]
    assert "budget_exhausted:model_calls" in refused


# --- Redis loss -------------------------------------------------------------------------
@pytest.fixture
def split_dep(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on a private redis-server (runtime in db 0, which the test flushes)."""
    server = start_server(tmp_path / "redis", persistent=False)
    base = server.url.rsplit("/", 1)[0]
    deployment = Deployment.create(
        name=f"r{uuid.uuid4().hex[:6]}",
        redis_url=f"{base}/0",
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=CONFIG,
        home=tmp_path,
        extra_env={"AGENTRT_TOOL_REDIS_URL": f"{base}/1"},
    )
    try:
        yield deployment
    finally:
        deployment.close()
        server.stop()


@pytest.mark.slow
def test_recovery_rebuilds_the_parents_carved_and_settled_budget(split_dep: Deployment) -> None:
    dep = split_dep
    worker = dep.start_worker(concurrency=2)
    # Given a parent whose first child ended and whose second waits for an approval
    write = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "k", "by": 1}}
    script = [
        delegate("d.child", [SEARCH, reply("first")]),
        delegate("d.gated", [write, reply("second")], modelCalls=3),
        reply("done"),
    ]
    parent = submit(dep, script)

    def second_waiting() -> dict[str, Any] | None:
        found = children(dep, parent.run_id)
        ok = len(found) == 2 and found[1]["status"] == "waiting"
        return found[1] if ok else None

    second = wait_for(second_waiting, timeout=60, message="the second child to wait")
    dims = [d for d in DIMENSIONS if d != "wall_clock_ms"]
    before = run_balance(dep, parent.run_id)
    assert before["model_calls"]["reserved"] == 3 and before["delegations"]["used"] == 1
    worker.stop()

    # When Redis loses its data and recovery rebuilds the ledger from SQL
    dep.svc.redis.flushdb()
    dep.svc.redis.script_flush()
    dep.svc.recovery.recover("ops:test", inflight_wait_s=0)

    # Then the parent's scope is as it was: the first child's spend settled, the second's
    # carved budget held (never "unlimited")
    after = run_balance(dep, parent.run_id)
    assert {d: after[d] for d in dims} == {d: before[d] for d in dims}
    # and when the second child is approved, everything ends settled
    dep.start_worker(concurrency=2)
    approval = dep.svc.get(second["run_id"]).approval_id
    assert approval is not None
    dep.svc.approvals.approve(approval, "ops:ann")
    assert ended(dep, parent.run_id).status.value == "succeeded"
    final = run_balance(dep, parent.run_id)
    assert {d: final[d]["reserved"] for d in DIMENSIONS} == dict.fromkeys(DIMENSIONS, 0)
    spent = dep.svc.store.spend(run_id=parent.run_id)["model_calls"]
    for kid in children(dep, parent.run_id):
        spent += dep.svc.store.spend(run_id=kid["run_id"])["model_calls"]
    assert final["model_calls"]["used"] == spent
    assert final["delegations"]["used"] == 2


def test_recovery_counts_what_an_ended_childs_own_children_spent(split_dep: Deployment) -> None:
    dep = split_dep
    worker = dep.start_worker(concurrency=2)
    # Given A whose first child B (d.relay) delegated to C and both ended, and whose second
    # child waits for an approval (A is still open)
    write = {"type": "tool_call", "tool": "counter.increment", "args": {"key": "k", "by": 1}}
    grandchild = delegate(
        "d.child", [reply("c")], tokens=5000, model_calls=1, tool_calls=1, cost_usd=0.01
    )
    script = [
        delegate("d.relay", [grandchild, reply("b")], model_calls=4),
        delegate("d.gated", [write, reply("second")], model_calls=1),
        reply("done"),
    ]
    parent = submit(dep, script)

    def second_waiting() -> dict[str, Any] | None:
        found = children(dep, parent.run_id)
        ok = len(found) == 2 and found[1]["status"] == "waiting"
        return found[1] if ok else None

    wait_for(second_waiting, timeout=60, message="the second child to wait")
    before = run_balance(dep, parent.run_id)
    # A's two calls, B's two and C's one are A's settled spend; the second child's carve held
    assert before["model_calls"] == {"used": 5, "reserved": 1}
    worker.stop()

    # When Redis loses its data and recovery rebuilds the ledger from SQL
    dep.svc.redis.flushdb()
    dep.svc.redis.script_flush()
    dep.svc.recovery.recover("ops:test", inflight_wait_s=0)

    # Then A's scope counts C's spend too (through B), as before the loss
    dims = [d for d in DIMENSIONS if d != "wall_clock_ms"]
    after = run_balance(dep, parent.run_id)
    assert {d: after[d] for d in dims} == {d: before[d] for d in dims}


# --- config -----------------------------------------------------------------------------
def test_delegates_to_must_name_routes_and_keeps_bounds() -> None:
    data = yaml.safe_load(CONFIG.read_text())
    data["routes"]["d.parent"]["delegates_to"].append("d.nowhere")
    with pytest.raises(ConfigError, match=r"routes\.d\.parent\.delegates_to: unknown route"):
        parse_config(data)
    data = yaml.safe_load(CONFIG.read_text())
    data["routes"]["d.parent"]["delegation"]["max_depth"] = 0
    with pytest.raises(ConfigError, match="max_depth"):
        parse_config(data)
    data = yaml.safe_load(CONFIG.read_text())
    data["policy"]["rules"][1]["match"]["tool"] = ["delegate:d.nowhere"]
    with pytest.raises(ConfigError, match=r"'delegate:d\.nowhere' matches no tool"):
        parse_config(data)
