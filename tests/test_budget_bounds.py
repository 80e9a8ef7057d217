"""Issue 9: usage above the reservation never overspends the budget, in any dimension.

A step reserves its real worst case before the model call: the prompt's bound (UTF-8
bytes of what is sent, plus overheads) plus an output allowance that reserve.lua lowers to
what the tightest scope still holds; the grant is the call's ``max_tokens``. A tool call
is reserved when proposed; an execution repeated after a crash is charged as a retry.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.budgets.ledger import BudgetLedger, OutputAllowance, today
from runtime.budgets.tokens import (
    MESSAGE_OVERHEAD,
    REQUEST_OVERHEAD,
    TOOL_OVERHEAD,
    model_cost_micro,
    nano_per_token,
    prompt_bound,
)
from runtime.config import DIMENSIONS
from runtime.contract import RunView, Usage
from runtime.errors import BudgetExhausted, StateUnknown
from runtime.keys import Keys
from runtime.state import StateMarkers
from tests import fake_openai
from tests.fake_openai import FakeOpenAI
from tests.support import Deployment, pg_schema_url, wait_for

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"

#: the tenant-day and per-run limits the long-prompt runs share (see ``budget_config``)
TENANT_TOKENS, TENANT_COST = 60_000, 200_000
RUN_TOKENS, RUN_COST = 30_000, 100_000
#: ~2,500 tokens of English (4.1 bytes a token) and ~20,000 tokens
DOC_2500 = "Refunds up to 100 EUR are automatic; larger ones need approval. " * 160
DOC_20000 = DOC_2500 * 8


def budget_config(base_url: str) -> dict[str, Any]:
    """The test deployment plus tight budgets, long-prompt routes and counting tools."""
    data: dict[str, Any] = yaml.safe_load(TEST_CONFIG.read_text())
    data["tool_modules"].append("tests.budget_tools")
    data["models"]["fake-openai"]["base_url"] = base_url
    data["models"]["scripted-priced"] = {
        "kind": "scripted",
        "version": "scripted-priced",
        "input_usd_per_mtok": 2.0,
        "output_usd_per_mtok": 8.0,
    }
    data["tenants"]["tight"] = {
        "daily_budget": {"tokens": TENANT_TOKENS, "cost_usd": TENANT_COST / 1e6}
    }
    policies = data["budget_policies"]
    policies["long"] = {
        "version": "bp-long-1",
        "per_run": {"tokens": RUN_TOKENS, "cost_usd": RUN_COST / 1e6},
        "tokens_per_step": 1000,
    }
    policies["chat_tokens"] = {
        "version": "bp-ct-1",
        "per_run": {"tokens": 1300},
        "tokens_per_step": 1000,
    }
    policies["chat_cost"] = {
        "version": "bp-cc-1",
        "per_run": {"cost_usd": 0.0016},
        "tokens_per_step": 1000,
    }
    policies["no_tool_calls"] = {
        "version": "bp-nt-1",
        "per_run": {"tool_calls": 0},
        "tokens_per_step": 1000,
    }
    base = {"task_class": "test", "risk_class": "low", "autonomy_level": "bounded_autonomous"}
    routes = data["routes"]
    long_route = {
        **base,
        "allowed_tools": ["kb.search"],
        "budget_policy": "long",
        "max_input_bytes": 256 * 1024,
        "step_timeout_s": 10,
        "max_steps": 6,
    }
    routes["r.long"] = {**long_route, "proposer": "scripted-priced"}
    routes["r.long_chat"] = {**long_route, "proposer": "fake-openai"}
    chat = {**base, "proposer": "fake-openai", "allowed_tools": ["kb.search"], "step_timeout_s": 10}
    routes["r.chat_tokens"] = {**chat, "budget_policy": "chat_tokens"}
    routes["r.chat_cost"] = {**chat, "budget_policy": "chat_cost"}
    routes["r.no_tool_calls"] = {
        **base,
        "proposer": "scripted",
        "allowed_tools": ["counter.increment"],
        "budget_policy": "no_tool_calls",
        "step_timeout_s": 10,
    }
    routes["r.meter"] = {
        **base,
        "proposer": "scripted",
        "allowed_tools": ["meter.write", "meter.read"],
        "budget_policy": "standard",
        # the meter tools wait inside while a test kills pool processes
        "step_timeout_s": 30,
        "max_steps": 8,
    }
    data["tools"]["meter.write"] = {"version": "1", "cost_usd": 0.001}
    data["tools"]["meter.read"] = {"version": "1", "cost_usd": 0.0005}
    return data


def make_deployment(
    tmp: Path, redis_url: str, database_url: str, base_url: str, name: str
) -> Deployment:
    config = tmp / "runtime.yaml"
    config.write_text(json.dumps(budget_config(base_url)))  # JSON is YAML, without aliases
    return Deployment.create(
        name=f"{name}{uuid.uuid4().hex[:4]}",
        redis_url=redis_url,
        database_url=database_url,
        config=config,
        home=tmp,
        # r.meter's 30 s steps: the visibility timeout must exceed them with their margins
        extra_env={"AGENTRT_VISIBILITY_TIMEOUT_S": "120"},
    )


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture(scope="module")
def dep(
    backend: str,
    redis_url: str,
    server: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    """Four worker processes (2 workers x 2) on ``backend``, the fake OpenAI server."""
    tmp = tmp_path_factory.mktemp(f"budget-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'agentrt.db'}"
    else:
        url = pg_schema_url(
            request.getfixturevalue("pg_base_url"), f"agentrt_b_{uuid.uuid4().hex[:10]}"
        )
    d = make_deployment(tmp, redis_url, url, server.base_url, "bb")
    try:
        for _ in range(2):
            d.start_worker(concurrency=2)
        yield d
    finally:
        d.close()


def key() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


def events(dep: Deployment, run_id: str, kind: str) -> list[Any]:
    return [e for e in dep.svc.trace(run_id) if e.kind == kind]


def search(usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"}, "usage": usage}


def reply(usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reply", "text": "done", "usage": usage}


# --- the prompt's bound ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(max_size=200))
def test_the_bound_covers_every_byte_of_every_message_plus_overheads(
    content: str, system: str
) -> None:
    # byte-level BPE and byte-fallback tokenizers spend at most one token per UTF-8 byte
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    raw = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)
    assert prompt_bound(messages) >= raw + 2 * MESSAGE_OVERHEAD + REQUEST_OVERHEAD


def test_the_bound_counts_tool_schemas_and_grows_with_the_prompt() -> None:
    tool = {"type": "function", "function": {"name": "kb__search", "parameters": {"a": 1}}}
    short = [{"role": "user", "content": "hi"}]
    long = [{"role": "user", "content": "hi" * 1000}]
    assert prompt_bound(short, [tool]) >= prompt_bound(short) + TOOL_OVERHEAD + len(
        json.dumps(tool, separators=(",", ":"))
    )
    assert prompt_bound(long) - prompt_bound(short) == 1998
    # non-ASCII text counts its UTF-8 bytes (3 a character here), not its characters
    cjk = [{"role": "user", "content": "退款" * 100}]
    assert prompt_bound(cjk) >= 600


def test_a_prompt_no_budget_can_hold_is_refused() -> None:
    with pytest.raises(BudgetExhausted) as info:
        prompt_bound([{"role": "user", "content": "x" * (10**8 + 1)}])
    assert info.value.dimension == "tokens"


def test_prices_are_whole_nano_usd_per_token_rounded_up() -> None:
    assert nano_per_token(1.0) == 1000 and nano_per_token(0.3) == 300
    assert nano_per_token(0.0375) == 38 and nano_per_token(10_000.0) == 10**7
    assert nano_per_token(0.0) == 0
    # micro-USD rounded up: a model call is never charged less than its tokens cost
    assert model_cost_micro(1, 0, 300, 0) == 1 and model_cost_micro(10, 10, 300, 1200) == 15


def test_usage_is_bounded_per_part_by_the_reservation() -> None:
    assert Usage(input_tokens=50, output_tokens=20).within(100, 30).reported is None
    cut = Usage(input_tokens=5000, output_tokens=20).within(100, 30)
    assert (cut.input_tokens, cut.output_tokens) == (100, 20) and cut.reported is not None
    unknown = Usage.from_report("7", None).within(100, 30)
    assert (unknown.input_tokens, unknown.output_tokens, unknown.unknown) == (100, 30, True)


# --- the ledger's output allowance and tool extension ----------------------------------------


@pytest.fixture
def ledger(redis_url: str) -> Iterator[BudgetLedger]:
    """A ledger whose state was built (as recovery or the first start does)."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"tb{uuid.uuid4().hex[:8]}")
    StateMarkers(client, keys).mark(1)
    yield BudgetLedger(client, keys, lambda: 1)
    client.close()


def limits(**kw: int) -> dict[str, int]:
    return {d: kw.get(d, -1) for d in DIMENSIONS}


def allowance(cap: int = 1000, base: int = 0, per: int = 0, minimum: int = 16) -> OutputAllowance:
    return OutputAllowance(cap=cap, minimum=minimum, cost_base_nano=base, cost_per_token_nano=per)


def test_the_grant_is_what_the_tightest_scope_holds_after_the_prompt(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("r1", limits(tokens=5000))
    tenant = ledger.tenant_day_scope("acme", limits(tokens=3000), day="2026-01-01")
    ledger.reserve("other", 0, [tenant], {"tokens": 1200}, 60_000)  # another run's open hold
    # 3000 - 1200 held - 1500 prompt = 300 output tokens left in the tenant's day
    res = ledger.reserve("r1", 0, [run, tenant], {"tokens": 1500}, 60_000, output=allowance())
    assert res.state == "new" and res.granted_output == 300 and res.amounts["tokens"] == 1800
    assert ledger.balance(tenant.key)["tokens"] == {"used": 0, "reserved": 3000}
    # a re-run of the step finds the hold and its grant
    again = ledger.reserve("r1", 0, [run, tenant], {"tokens": 1500}, 60_000, output=allowance())
    assert again.state == "existing" and again.granted_output == 300
    assert again.amounts["tokens"] == 1800
    # settled: only what was used
    assert ledger.settle("r1", 0, {"tokens": 1600})
    assert ledger.balance(run.key)["tokens"] == {"used": 1600, "reserved": 0}


def test_the_prompt_alone_not_fitting_refuses_without_reserving(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("r2", limits(tokens=2000, model_calls=5))
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve(
            "r2", 0, [run], {"tokens": 1990, "model_calls": 1}, 60_000, output=allowance()
        )
    assert info.value.dimension == "tokens" and info.value.scope == "run:r2"
    assert ledger.balance(run.key)["tokens"] == {"used": 0, "reserved": 0}
    assert ledger.hold("r2", 0) is None
    # the prompt plus the minimum output fits: granted exactly what is left
    res = ledger.reserve(
        "r2", 0, [run], {"tokens": 1984, "model_calls": 1}, 60_000, output=allowance()
    )
    assert res.granted_output == 16


def test_cost_limits_the_grant_too(ledger: BudgetLedger) -> None:
    # 5000 micro-USD left; the prompt's 1000 tokens cost 2000 nano each (2000 micro), output
    # tokens 8000 nano: (5000 * 1000 - 2_000_000) / 8000 = 375 output tokens
    run = ledger.run_scope("r3", limits(cost_micro_usd=5000))
    res = ledger.reserve(
        "r3", 0, [run], {"tokens": 1000}, 60_000, output=allowance(base=2_000_000, per=8000)
    )
    assert res.granted_output == 375
    assert res.amounts["cost_micro_usd"] == 2000 + 375 * 8
    assert ledger.balance(run.key)["cost_micro_usd"]["reserved"] == 5000
    # nothing left for the next step's prompt
    with pytest.raises(BudgetExhausted) as info:
        ledger.reserve("r3", 1, [run], {"tokens": 1}, 60_000, output=allowance(base=2000, per=8000))
    assert info.value.dimension == "cost_micro_usd"


def _recovered_hold(ledger: BudgetLedger, run_id: str, scopes: list[Any], cost: int) -> None:
    """A hold as ``Recovery`` rebuilds it for a call that may have run: one tool call and
    its cost, one execution, field ``rec``, reserved in its scopes."""
    client, keys = ledger.redis, ledger.keys
    hold = keys.budget_hold(run_id, 0)
    amounts = {**dict.fromkeys(DIMENSIONS, 0), "tool_calls": 1, "cost_micro_usd": cost}
    fields: dict[str, Any] = {"scopes": "\n".join(s.key for s in scopes), "x": 1, "rec": 1}
    client.hset(hold, mapping={**fields, **{f"a:{d}": v for d, v in amounts.items()}})
    client.zadd(keys.budget_holds_index(), {hold: 2**40})
    for scope in scopes:
        client.hset(scope.key, mapping={"r:tool_calls": 1, "r:cost_micro_usd": cost})


def test_a_recovered_hold_takes_the_next_copys_reservation_on_top(ledger: BudgetLedger) -> None:
    run = ledger.run_scope("r8", limits(tokens=5000))
    tenant = ledger.tenant_day_scope("acme8", limits(tool_calls=1), day="2026-01-01")
    _recovered_hold(ledger, "r8", [run, tenant], cost=1000)
    # the tenant's one tool call is held for the call that may have run
    with pytest.raises(BudgetExhausted):
        ledger.reserve("other", 0, [tenant], {"tool_calls": 1}, 60_000)
    # the step's next copy reserves its model call on top of it, in the same scopes
    res = ledger.reserve("r8", 0, [run, tenant], {"tokens": 1500}, 60_000, output=allowance())
    assert res.state == "recovered" and res.granted_output == 1000 and res.tool_executions == 1
    assert res.amounts["tokens"] == 2500 and res.amounts["tool_calls"] == 1
    assert ledger.balance(tenant.key)["tool_calls"] == {"used": 0, "reserved": 1}
    # from then on it is the step's own hold: a re-run finds it, its tool runs as a retry
    again = ledger.reserve("r8", 0, [run, tenant], {"tokens": 1500}, 60_000, output=allowance())
    assert again.state == "existing" and again.granted_output == 1000
    before, added = ledger.extend("r8", 0, [run, tenant], {"tool_calls": 1}, {"retries": 1}, 60_000)
    assert before == 1 and added["tool_calls"] == 0 and added["retries"] == 1
    assert ledger.settle("r8", 0, {"tokens": 1600, "tool_calls": 1, "retries": 1})
    assert ledger.balance(tenant.key)["tool_calls"] == {"used": 1, "reserved": 0}


def test_a_resumed_call_on_a_recovered_hold_is_reserved_as_a_retry(ledger: BudgetLedger) -> None:
    tenant = ledger.tenant_day_scope("acme9", limits(tool_calls=1), day="2026-01-01")
    _recovered_hold(ledger, "r9", [tenant], cost=500)
    res = ledger.reserve(
        "r9", 0, [tenant], {"tool_calls": 1, "cost_micro_usd": 500}, 60_000, tool_executions=1
    )
    assert res.state == "recovered" and res.tool_executions == 2
    assert res.amounts["tool_calls"] == 1 and res.amounts["retries"] == 1
    assert res.amounts["cost_micro_usd"] == 1000


def test_a_tool_call_is_added_to_the_hold_first_as_a_call_then_as_retries(
    ledger: BudgetLedger,
) -> None:
    run = ledger.run_scope("r4", limits(tool_calls=1, retries=1, cost_micro_usd=2500))
    ledger.reserve("r4", 0, [run], {"model_calls": 1}, 60_000)
    first, again = {"tool_calls": 1, "cost_micro_usd": 1000}, {"retries": 1, "cost_micro_usd": 1000}
    before, added = ledger.extend("r4", 0, [run], first, again, 60_000)
    assert before == 0 and added["tool_calls"] == 1 and added["retries"] == 0
    # a copy of the step run again reserves its execution as a retry
    before, added = ledger.extend("r4", 0, [run], first, again, 60_000)
    assert before == 1 and added["retries"] == 1 and added["tool_calls"] == 0
    hold = ledger.hold("r4", 0)
    assert hold is not None and hold.tool_executions == 2
    assert hold.amounts["tool_calls"] == 1 and hold.amounts["cost_micro_usd"] == 2000
    # a third execution does not fit (retries and cost): refused, nothing added
    with pytest.raises(BudgetExhausted) as info:
        ledger.extend("r4", 0, [run], first, again, 60_000)
    assert info.value.dimension == "retries"
    assert ledger.balance(run.key)["cost_micro_usd"]["reserved"] == 2000
    assert ledger.settle("r4", 0, {"tool_calls": 1, "retries": 1, "cost_micro_usd": 2000})
    assert ledger.balance(run.key)["tool_calls"] == {"used": 1, "reserved": 0}
    # and a step of a run with no tool call left still reserves a model call
    ledger.reserve("r4", 1, [run], {"model_calls": 1}, 60_000)
    with pytest.raises(BudgetExhausted) as info:
        ledger.extend("r4", 1, [run], first, again, 60_000)
    assert info.value.dimension == "tool_calls"


def test_a_tool_call_is_not_reserved_on_a_ledger_whose_state_is_unknown(
    ledger: BudgetLedger,
) -> None:
    run = ledger.run_scope("r5", limits())
    ledger.reserve("r5", 0, [run], {"model_calls": 1}, 60_000)
    ledger.redis.delete(ledger.keys.ledger_state())  # Redis lost its state meanwhile
    with pytest.raises(StateUnknown):
        ledger.extend("r5", 0, [run], {"tool_calls": 1}, {"retries": 1}, 60_000)
    assert ledger.balance(run.key)["tool_calls"] == {"used": 0, "reserved": 0}


# --- end to end: long prompts, tight budgets, four worker processes ---------------------------


def assert_within_limits(dep: Deployment, runs: dict[str, RunView]) -> None:
    store, ledger = dep.svc.store, dep.svc.ledger
    spend = store.spend(tenant_id="tight")
    assert spend["tokens"] <= TENANT_TOKENS, spend
    assert spend["cost_micro_usd"] <= TENANT_COST, spend
    tenant = ledger.balance(ledger.tenant_day_scope("tight", {}, today()).key)
    for dim in DIMENSIONS:
        assert tenant[dim]["reserved"] == 0, dim
        if dim != "wall_clock_ms":
            assert tenant[dim]["used"] == spend[dim], dim
    for run_id in runs:
        run_spend = store.spend(run_id=run_id)
        assert run_spend["tokens"] <= RUN_TOKENS and run_spend["cost_micro_usd"] <= RUN_COST
        balance = ledger.balance(dep.svc.keys.budget_run(run_id))
        for dim in ("tokens", "cost_micro_usd", "model_calls", "tool_calls"):
            assert balance[dim] == {"used": run_spend[dim], "reserved": 0}, (run_id, dim)


def assert_stopped_before_calling(dep: Deployment, run_id: str) -> None:
    """The step that stopped on the budget made no model call."""
    steps = dep.svc.store.steps(run_id)
    last = steps[-1]
    assert last["kind"] == "stopped" and last["outcome"].startswith("budget_exhausted:")
    proposals = events(dep, run_id, "proposal")
    assert len(proposals) == len(steps) - 1  # one per step before the last, none in it
    assert dep.svc.store.spend(run_id=run_id)["model_calls"] == len(steps) - 1


def test_long_prompts_in_parallel_never_overspend_tokens_or_cost(
    dep: Deployment, server: FakeOpenAI
) -> None:
    # Given a tenant with 60,000 tokens and 0.20 USD a day, runs limited to 30,000 tokens and
    # 0.10 USD, and 28 runs with 2,500-token prompts (some reporting absurd usage: far more
    # than their prompt) or 20,000-token prompts, scripted and on the OpenAI-compatible path
    honest = [search({"input_tokens": 2500, "output_tokens": 200})] * 2 + [
        reply({"input_tokens": 2700, "output_tokens": 100})
    ]
    liar = [search({"input_tokens": 10**6, "output_tokens": 10**5})] * 2 + [
        reply({"input_tokens": 10**6, "output_tokens": 10**5})
    ]
    submitted: dict[str, str] = {}
    chat_keys: dict[str, str] = {}

    def scripted(doc: str, script: list[Any], kind: str) -> None:
        run = dep.svc.submit(
            "tight", "r.long", "Summarise the refund policy.", {"doc": doc, "script": script},
            actor="tester",
        )  # fmt: skip
        submitted[run.run_id] = kind

    for i in range(8):
        scripted(DOC_2500, honest, "honest")
        k = key()
        server.add(
            fake_openai.tool_call("kb__search", {"query": "refund"}, prompt_tokens=2500,
                                  completion_tokens=150),
            fake_openai.text("Refunds are automatic up to 100 EUR.", prompt_tokens=2800,
                             completion_tokens=60),
            key=k,
        )  # fmt: skip
        doc = DOC_20000 if i % 4 == 3 else DOC_2500
        run = dep.svc.submit("tight", "r.long_chat", f"Answer ({k})", {"doc": doc}, actor="t")
        submitted[run.run_id] = "chat-huge" if i % 4 == 3 else "chat"
        chat_keys[run.run_id] = k
        scripted(DOC_2500, liar, "liar")
    for _ in range(4):
        scripted(DOC_20000, honest, "huge")

    # When they all run at once on four worker processes
    done = dep.wait_all(list(submitted), timeout=180)

    # Then nothing was settled above any limit, and the ledger agrees with the SQL spend
    assert_within_limits(dep, done)
    reasons = {v.stop_reason for v in done.values()}
    assert reasons <= {"completed", "budget_exhausted:tokens", "budget_exhausted:cost_micro_usd"}
    assert reasons & {"budget_exhausted:tokens", "budget_exhausted:cost_micro_usd"}
    for run_id, view in done.items():
        kind = submitted[run_id]
        if view.stop_reason != "completed":
            assert_stopped_before_calling(dep, run_id)
        if kind in ("huge", "chat-huge"):
            # a 20,000-token prompt is bounded at ~80,000 tokens (its bytes), over the run's
            # 30,000: refused before any model call
            assert view.stop_reason == "budget_exhausted:tokens", view.stop_reason
            assert dep.svc.store.spend(run_id=run_id)["model_calls"] == 0
        # every model call was charged at most what its step reserved
        for r, p in zip(
            events(dep, run_id, "budget_reserve"), events(dep, run_id, "proposal"), strict=False
        ):
            assert p.data["usage"]["input_tokens"] <= r.data["prompt_tokens"]
            assert p.data["usage"]["output_tokens"] <= r.data["max_output_tokens"]
        if kind == "liar" and events(dep, run_id, "proposal"):
            assert events(dep, run_id, "usage_clamped")
        if run_id in chat_keys:
            # the server saw one request per charged model call, each with the granted cap
            requests = server.requests_for(chat_keys[run_id])
            grants = [
                e.data["max_output_tokens"]
                for e in events(dep, run_id, "budget_reserve")
                if e.data["max_output_tokens"] is not None
            ]
            assert len(requests) == dep.svc.store.spend(run_id=run_id)["model_calls"]
            assert [r.body["max_tokens"] for r in requests] == grants[: len(requests)]
    # the honest 2,500-token runs did work (the budget was used, not refused wholesale)
    assert dep.svc.store.spend(tenant_id="tight")["model_calls"] >= 4


@pytest.mark.parametrize("doc,reported", [(DOC_2500, 2500), (DOC_20000, 20_000)])
def test_the_issue_scenario_settles_within_the_tenant_limit(
    dep: Deployment, doc: str, reported: int
) -> None:
    # Given tenant "tb" (20,000 tokens a day) and 20 runs whose model reports 2,500-token
    # (or 20,000-token) prompts: before issue 9 they settled 20,800 (or 80,400) tokens
    step = {"input_tokens": reported, "output_tokens": 200}
    script = [search(step), search(step), reply(step)]
    runs = [
        dep.svc.submit("tb", "r.long", "Summarise.", {"doc": doc, "script": script}, actor="t")
        for _ in range(20)
    ]
    done = dep.wait_all([r.run_id for r in runs], timeout=120)
    # Then the day's settled tokens stay within the limit, in the ledger and in SQL
    spend = dep.svc.store.spend(tenant_id="tb")
    assert spend["tokens"] <= 20_000, spend
    balance = dep.svc.ledger.balance(dep.svc.ledger.tenant_day_scope("tb", {}, today()).key)
    assert balance["tokens"] == {"used": spend["tokens"], "reserved": 0}
    assert {v.stop_reason for v in done.values()} <= {"completed", "budget_exhausted:tokens"}
    if reported == 20_000:  # its prompt alone does not fit: never sent
        assert all(dep.svc.store.spend(run_id=r.run_id)["model_calls"] == 0 for r in runs)
    else:  # the reservation covered the real prompt: charged as reported, nothing cut
        charged = [s for r in runs for s in dep.svc.store.steps(r.run_id) if s["input_tokens"]]
        assert charged and {(s["input_tokens"], s["output_tokens"]) for s in charged} == {
            (2500, 200)
        }
        assert not any(events(dep, r.run_id, "usage_clamped") for r in runs)


def test_max_tokens_is_what_the_run_has_left_after_the_prompt(
    dep: Deployment, server: FakeOpenAI
) -> None:
    # Given a run limited to 1,300 tokens: the first call may write 1300 - prompt tokens
    k = key()
    server.add(
        fake_openai.tool_call("kb__search", {"query": "refund"}, prompt_tokens=300,
                              completion_tokens=40),
        key=k,
    )  # fmt: skip
    run = dep.svc.submit("t1", "r.chat_tokens", f"Answer ({k})", {}, actor="tester")
    done = dep.svc.wait(run.run_id, timeout=60)
    first = events(dep, run.run_id, "budget_reserve")[0]
    prompt = first.data["prompt_tokens"]
    assert prompt < 1300 - 16
    [request] = server.requests_for(k)
    assert request.body["max_tokens"] == min(1000, 1300 - prompt)
    assert first.data["max_output_tokens"] == request.body["max_tokens"]
    # and the second step's prompt (now with the tool result) did not fit what was left:
    # refused before calling the model (the server got one request)
    assert done.stop_reason == "budget_exhausted:tokens", done.stop_reason
    assert_stopped_before_calling(dep, run.run_id)
    assert dep.svc.store.spend(run_id=run.run_id)["tokens"] == 340


def test_max_tokens_is_what_the_run_can_pay_for_after_the_prompt(
    dep: Deployment, server: FakeOpenAI
) -> None:
    # Given a run limited to 1600 micro-USD at 1 / 2 USD per Mtok (1000 / 2000 nano a token)
    k = key()
    server.add(fake_openai.text("fine", prompt_tokens=200, completion_tokens=10), key=k)
    run = dep.svc.submit("t1", "r.chat_cost", f"Answer ({k})", {}, actor="tester")
    done = dep.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    reserve = events(dep, run.run_id, "budget_reserve")[0]
    prompt = reserve.data["prompt_tokens"]
    [request] = server.requests_for(k)
    # (1600 * 1000 - prompt * 1000) / 2000 output tokens can be paid for
    assert request.body["max_tokens"] == min(1000, (1600 - prompt) // 2)
    assert reserve.data["amounts"]["cost_micro_usd"] <= 1600
    assert dep.svc.store.spend(run_id=run.run_id)["cost_micro_usd"] == 200 + 2 * 10


def test_a_prompt_that_alone_does_not_fit_is_refused_before_the_model_is_asked(
    dep: Deployment, server: FakeOpenAI
) -> None:
    k = key()
    server.add(fake_openai.text("never sent"), key=k)
    goal = f"Answer ({k}) " + "about refunds " * 100  # ~1,400 bytes: over the run's 1,300
    run = dep.svc.submit("t1", "r.chat_tokens", goal, {}, actor="tester")
    done = dep.svc.wait(run.run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "budget_exhausted:tokens"
    assert server.requests_for(k) == [] and server.pending(k) == 1
    assert_stopped_before_calling(dep, run.run_id)
    assert dep.svc.store.spend(run_id=run.run_id)["tokens"] == 0


def test_a_reply_needs_no_tool_call_budget_and_a_tool_call_is_refused_without_it(
    dep: Deployment,
) -> None:
    # Given a route with tools whose runs may make no tool call at all
    ok = dep.submit_script(
        [reply({"input_tokens": 10, "output_tokens": 5})], route="r.no_tool_calls"
    )
    counter = f"nt{uuid.uuid4().hex[:8]}"
    call = {"type": "tool_call", "tool": "counter.increment", "args": {"key": counter}}
    refused = dep.submit_script([call, reply({})], route="r.no_tool_calls")
    done = dep.wait_all([ok.run_id, refused.run_id], timeout=60)
    # Then the reply succeeds: it reserved no tool call
    assert done[ok.run_id].status == "succeeded"
    assert dep.svc.store.spend(run_id=ok.run_id)["tool_calls"] == 0
    # and the tool call the model proposed is refused before it runs
    assert done[refused.run_id].stop_reason == "budget_exhausted:tool_calls"
    assert events(dep, refused.run_id, "proposal")  # the model was asked
    assert not events(dep, refused.run_id, "tool_start")
    assert dep.svc.store.side_effects(run_id=refused.run_id) == []
    assert dep.counter(counter) == 0
    [step] = dep.svc.store.steps(refused.run_id)
    assert step["proposal"]["tool"] == "counter.increment"
    spend = dep.svc.store.spend(run_id=refused.run_id)
    assert spend["tool_calls"] == 0 and spend["model_calls"] == 1


def test_a_tool_step_reserves_its_call_once_it_is_proposed(dep: Deployment) -> None:
    run = dep.submit_script(
        [search({"input_tokens": 5, "output_tokens": 5}), reply({})], route="r.basic"
    )
    done = dep.svc.wait(run.run_id, timeout=60)
    assert done.status == "succeeded"
    reserves = events(dep, run.run_id, "budget_reserve")
    assert [r.data["amounts"]["tool_calls"] for r in reserves] == [0, 0]
    [tool] = events(dep, run.run_id, "budget_reserve_tool")
    assert tool.data["amounts"]["tool_calls"] == 1 and tool.data["executions"] == 1
    kinds = [e.kind for e in dep.svc.trace(run.run_id)]
    assert kinds.index("proposal") < kinds.index("budget_reserve_tool") < kinds.index("tool_start")


# --- charge what really ran: executions repeated after a crash --------------------------------


def meter(tool: str, key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": tool, "args": {"key": key}}


@pytest.mark.slow
def test_executions_repeated_after_a_crash_are_charged_as_retries(
    redis_url: str, server: FakeOpenAI, tmp_path: Path
) -> None:
    d = make_deployment(
        tmp_path, redis_url, f"sqlite:///{tmp_path / 'agentrt.db'}", server.base_url, "bc"
    )
    try:
        for _ in range(2):
            d.start_worker(concurrency=2)
        r = d.svc.tool_redis
        # Given runs that call a counting write tool, then a counting read tool, each of which
        # waits inside while its hold key exists (so a kill always lands inside the tool)
        wkey, rkey = f"w{uuid.uuid4().hex[:8]}", f"r{uuid.uuid4().hex[:8]}"
        bases = [d.svc.keys.demo(f"meter:{k}") for k in (wkey, rkey)]
        for base in bases:
            r.set(f"{base}:hold", 1)
        script = [meter("meter.write", wkey), meter("meter.read", rkey), reply({})]
        run_ids = [d.submit_script(script, route="r.meter").run_id for _ in range(6)]

        # When pool processes are SIGKILLed inside the tools, some steps twice
        kills: dict[str, int] = {}

        def victim() -> tuple[int, str, str] | None:
            pool = {pid for w in d.workers for pid in w.children()}
            for base in bases:
                for pid, raw in r.hgetall(f"{base}:inside").items():
                    step = raw.decode() if isinstance(raw, bytes) else str(raw)
                    if int(pid) in pool and kills.get(step, 0) < 2:
                        return int(pid), step, base
            return None

        for _ in range(8):
            pid, step, base = wait_for(victim, timeout=40, message="a pool process inside a tool")
            os.kill(pid, signal.SIGKILL)
            r.hdel(f"{base}:inside", str(pid))
            kills[step] = kills.get(step, 0) + 1
        for base in bases:
            r.delete(f"{base}:hold")
        done = d.wait_all(run_ids, timeout=120)

        # Then every run completed, and the ledger charged every execution the tools saw:
        # one tool call per call, one retry per execution repeated after a crash
        assert {v.stop_reason for v in done.values()} == {"completed"}
        assert max(kills.values()) == 2
        writes, reads = (int(r.get(f"{base}:executions") or 0) for base in bases)
        assert writes + reads == 2 * len(run_ids) + sum(kills.values())
        spend = [d.svc.store.spend(run_id=run_id) for run_id in run_ids]
        assert sum(s["tool_calls"] for s in spend) == 2 * len(run_ids)
        assert sum(s["tool_calls"] + s["retries"] for s in spend) == writes + reads
        # each execution's cost too (0.001 USD a write, 0.0005 a read; the model is free here)
        assert sum(s["cost_micro_usd"] for s in spend) == 1000 * writes + 500 * reads
        for run_id, run_spend in zip(run_ids, spend, strict=True):
            balance = d.svc.ledger.balance(d.svc.keys.budget_run(run_id))
            for dim in ("tool_calls", "retries", "cost_micro_usd"):
                assert balance[dim] == {"used": run_spend[dim], "reserved": 0}, (run_id, dim)
        kinds = {e.kind for run_id in run_ids for e in d.svc.trace(run_id)}
        assert "tool_retry_unknown" in kinds and "spend_clamped" not in kinds
    finally:
        d.close()
