"""The OpenAI-compatible proposer against a real local HTTP server, alone and in a worker."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime import proposals
from runtime.config import ModelConfig
from runtime.demo.tools import kb_search
from runtime.errors import ProposerError
from runtime.proposers.base import ToolDescription, WorkingSet
from runtime.proposers.openai_compat import OpenAIProposer, function_name
from runtime.store.dead_letters import DeadLetterFilter
from tests import fake_openai
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.support import Deployment

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"

KB = ToolDescription("kb.search", kb_search.description, kb_search.json_schema())


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def key() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


def proposer(server: FakeOpenAI, **kw: Any) -> OpenAIProposer:
    config = ModelConfig(
        kind="openai",
        model="test-model",
        version="cfg-version-1",
        base_url=server.base_url,
        timeout_s=5,
        **kw,
    )
    return OpenAIProposer(config)


def working_set(goal: str, history: list[dict[str, Any]] | None = None, **kw: Any) -> WorkingSet:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "tenant_id": "t1",
        "route": "r.chat",
        "goal": goal,
        "input": {},
        "turn": 0,
        "system_prompt": "You are a test assistant.",
        "tools": [KB],
        "max_output_tokens": 321,
        "steps_left": 3,
        "history_loader": lambda: list(history or []),
    }
    fields.update(kw)
    return WorkingSet(**fields)


# --- unit: the proposer against the server ----------------------------------------------


def test_function_names_are_wire_safe() -> None:
    assert function_name("kb.search") == "kb__search"
    assert function_name("a b/c") == "a_b_c"


def test_tool_call_reply_becomes_a_raw_tool_call_with_the_dotted_name(server: FakeOpenAI) -> None:
    # Given the model answers with a call of kb__search
    k = key()
    server.add(
        fake_openai.tool_call(
            "kb__search",
            {"query": "refund", "top_k": 2},
            call_id="call_a",
            prompt_tokens=120,
            completion_tokens=30,
            model="test-model-0613",
        ),
        key=k,
    )

    # When the proposer proposes
    result = proposer(server).propose(working_set(f"find refunds {k}", input={"order": 7}))

    # Then the proposal names the runtime's tool, with parsed args, usage and model version
    assert result.raw == {
        "type": "tool_call",
        "tool": "kb.search",
        "args": {"query": "refund", "top_k": 2},
        "call_id": "call_a",
    }
    assert (result.usage.input_tokens, result.usage.output_tokens) == (120, 30)
    assert result.model_version == "test-model-0613"
    assert result.latency_ms >= 0

    # and the request carried the model, max_tokens, prompt, goal, input and tool schemas
    [request] = server.requests_for(k)
    body = request.body
    assert body["model"] == "test-model" and body["max_tokens"] == 321
    assert "temperature" not in body
    assert body["messages"][0] == {"role": "system", "content": "You are a test assistant."}
    user = body["messages"][1]
    assert user["role"] == "user" and user["content"].startswith(f"find refunds {k}")
    assert json.loads(user["content"].split("Input:\n", 1)[1]) == {"order": 7}
    [tool] = body["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "kb__search"
    assert tool["function"]["description"] == "Search the knowledge base."
    assert tool["function"]["parameters"] == kb_search.json_schema()
    assert tool["function"]["parameters"]["properties"]["query"]["type"] == "string"
    assert request.headers["authorization"] == "Bearer not-needed"


def test_api_key_comes_from_the_named_environment_variable(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = key()
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-test-0123456789abcdef")
    server.add(fake_openai.text("hi"), key=k)
    proposer(server, api_key_env="FAKE_OPENAI_KEY", temperature=0.2).propose(working_set(k))
    [request] = server.requests_for(k)
    assert request.headers["authorization"] == "Bearer sk-test-0123456789abcdef"
    assert request.body["temperature"] == 0.2


def test_non_json_arguments_are_kept_as_a_string(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.tool_call("kb__search", '{"query": "refund"', call_id="c1"), key=k)
    result = proposer(server).propose(working_set(k))
    # the runtime refuses this later (args must be an object); the proposer does not crash
    assert result.raw["type"] == "tool_call" and result.raw["tool"] == "kb.search"
    assert result.raw["args"] == '{"query": "refund"'


def test_unknown_function_name_is_passed_through(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.tool_call("shell__exec", {"cmd": "ls"}), key=k)
    result = proposer(server).propose(working_set(k))
    assert result.raw["tool"] == "shell__exec"  # not a registered tool: policy denies it


def test_plain_content_becomes_a_reply(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.text("All done.", prompt_tokens=10, completion_tokens=3), key=k)
    result = proposer(server).propose(working_set(k, tools=[]))
    assert result.raw == {"type": "reply", "text": "All done."}
    assert result.usage.total_tokens == 13
    # with no tools, none are sent
    assert "tools" not in server.requests_for(k)[0].body


def test_empty_message_becomes_stop_and_missing_model_falls_back_to_config(
    server: FakeOpenAI,
) -> None:
    k = key()
    empty = fake_openai.text("")
    empty.body["model"] = ""
    empty.body.pop("usage")
    server.add(empty, key=k)
    result = proposer(server).propose(working_set(k))
    assert result.raw == {"type": "stop", "reason": "empty_reply"}
    assert result.model_version == "cfg-version-1"
    assert result.usage.total_tokens == 0


def test_history_becomes_assistant_tool_calls_and_tool_messages(server: FakeOpenAI) -> None:
    # Given two earlier steps: a tool call with its result, and a refused malformed proposal
    k = key()
    history = [
        {
            "step_no": 0,
            "kind": "tool_call",
            "proposal": {
                "type": "tool_call",
                "tool": "kb.search",
                "args": {"query": "a"},
                "callId": "call_0",
            },
            "observation": {"hits": [{"id": "kb-1", "title": "How refunds work"}]},
        },
        {
            "step_no": 1,
            "kind": "refused",
            "proposal": {
                "type": "tool_call",
                "tool": "kb.search",
                "args": "{broken",
                "call_id": "call_1",
            },
            "observation": {"refused": "malformed", "errors": []},
        },
        {
            "step_no": 2,
            "kind": "refused",
            "proposal": {"type": "launch"},
            "observation": {"refused": "malformed", "errors": [{"loc": "type"}]},
        },
        {
            "step_no": 3,
            "kind": "tool_call",
            "proposal": {"type": "tool_call", "tool": "kb.search", "args": {"query": "b"}},
            "observation": None,
        },
    ]
    server.add(fake_openai.text("ok"), key=k)

    # When the proposer builds its request
    proposer(server).propose(working_set(k, history=history, turn=4))

    # Then each call is an assistant tool_calls message followed by its tool result
    messages = server.requests_for(k)[0].messages
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "user",
        "assistant",
        "tool",
    ]
    call = messages[2]["tool_calls"][0]
    assert call["id"] == "call_0" and call["type"] == "function"
    assert call["function"] == {"name": "kb__search", "arguments": json.dumps({"query": "a"})}
    assert messages[3]["tool_call_id"] == "call_0"
    assert json.loads(messages[3]["content"]) == history[0]["observation"]
    # arguments that were not JSON go back exactly as the model wrote them
    assert messages[4]["tool_calls"][0]["function"]["arguments"] == "{broken"
    assert messages[5]["tool_call_id"] == "call_1"
    assert json.loads(messages[5]["content"])["refused"] == "malformed"
    # a refused non-call proposal is explained in a user message
    assert messages[6]["content"].startswith("The runtime refused your last proposal")
    assert '"refused": "malformed"' in messages[6]["content"]
    # a call without an id gets one from its step number
    assert (
        messages[7]["tool_calls"][0]["id"] == "call_3" and messages[8]["tool_call_id"] == "call_3"
    )


def test_retrieval_results_are_shown_as_far_as_the_working_set_selected(
    server: FakeOpenAI,
) -> None:
    # Given two retrieval steps, the first one's evidence dropped to fit the context budget
    k = key()
    history = [
        {
            "step_no": n,
            "kind": "retrieval",
            "proposal": {"type": "retrieval_query", "query": "q", "sources": ["kb"]},
            "observation": {"evidence": [{"id": f"ev-{n}", "title": f"doc {n}", "content": "c"}]},
        }
        for n in (0, 1)
    ]
    server.add(fake_openai.text("ok"), key=k)
    proposer(server).propose(working_set(k, history=history, turn=2, evidence_ids=["ev-1"]))
    # Then each search is the call the model made, and its result shows only the selected
    # evidence, with its id to cite
    messages = server.requests_for(k)[0].messages
    calls = [m["tool_calls"][0]["function"]["name"] for m in messages if m.get("tool_calls")]
    assert calls == ["agentrt_retrieve", "agentrt_retrieve"]
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    assert results == [
        {"evidence": []},
        {"evidence": [{"id": "ev-1", "title": "doc 1", "content": "c"}]},
    ]


# --- the proposal kinds a route enables, as functions -------------------------------------

ALL_KINDS = ("plan", "retrieval_query", "memory_write", "delegate")
PLAN_STEPS = [
    {"action": "tool_call", "target": "kb.search", "note": "look it up"},
    {"action": "reply"},
]


@pytest.mark.parametrize(
    ("function", "arguments", "raw"),
    [
        ("agentrt_plan", {"steps": PLAN_STEPS}, {"type": "plan", "steps": PLAN_STEPS}),
        (
            "agentrt_retrieve",
            {"query": "refund rules", "sources": ["kb"], "top_k": 3},
            {"type": "retrieval_query", "query": "refund rules", "sources": ["kb"], "top_k": 3},
        ),
        (
            "agentrt_remember",
            {"key": "pref", "content": "likes email", "retention": "30d"},
            {"type": "memory_write", "key": "pref", "content": "likes email", "retention": "30d"},
        ),
        (
            "agentrt_delegate",
            {"route": "r.child", "goal": "summarise", "input": {"n": 1}},
            {"type": "delegate", "route": "r.child", "goal": "summarise", "input": {"n": 1}},
        ),
        # the function says the kind: a "type" the model slips in does not change it
        (
            "agentrt_plan",
            {"type": "tool_call", "steps": PLAN_STEPS},
            {"type": "plan", "steps": PLAN_STEPS},
        ),
        # arguments that are not an object are handed over for the runtime to refuse
        ("agentrt_plan", "[1, 2]", {"type": "plan", "arguments": [1, 2]}),
        ("agentrt_plan", "{broken", {"type": "plan", "arguments": "{broken"}),
    ],
)
def test_a_call_of_an_offered_kind_becomes_a_proposal_of_that_kind(
    server: FakeOpenAI, function: str, arguments: Any, raw: dict[str, Any]
) -> None:
    k = key()
    server.add(fake_openai.tool_call(function, arguments), key=k)
    result = proposer(server).propose(working_set(k, proposal_kinds=ALL_KINDS))
    assert result.raw == raw
    if "arguments" not in raw:  # what the model sent is what the runtime would check
        assert proposals.parse(result.raw).type == raw["type"]  # type: ignore[union-attr]
    else:
        assert isinstance(proposals.parse(result.raw), proposals.Refused)


def test_only_the_kinds_a_route_enables_are_offered(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.text("ok"), key=k)
    server.add(fake_openai.tool_call("agentrt_delegate", {"route": "r", "goal": "g"}), key=k)
    p = proposer(server)
    p.propose(working_set(k, proposal_kinds=("plan",)))
    # a kind the route does not enable is no function of this request: a tool call of an
    # unknown tool, which the policy denies
    result = p.propose(working_set(k, proposal_kinds=("plan",)))
    assert result.raw["type"] == "tool_call" and result.raw["tool"] == "agentrt_delegate"
    tools = server.requests_for(k)[0].body["tools"]
    assert [t["function"]["name"] for t in tools] == ["kb__search", "agentrt_plan"]
    params = tools[1]["function"]["parameters"]
    assert "type" not in params["properties"] and params["required"] == ["steps"]
    assert params["$defs"]["PlanStep"]["properties"]["action"]["enum"][0] == "tool_call"
    # and with none enabled, only the tools
    k2 = key()
    server.add(fake_openai.text("ok"), key=k2)
    p.propose(working_set(k2))
    assert [t["function"]["name"] for t in server.requests_for(k2)[0].body["tools"]] == [
        "kb__search"
    ]


def test_a_tool_keeps_a_name_a_kind_would_take(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.tool_call("agentrt_plan", {"steps": []}), key=k)
    clash = ToolDescription("agentrt_plan", "a tool", {"type": "object", "properties": {}})
    result = proposer(server).propose(working_set(k, tools=[clash], proposal_kinds=("plan",)))
    assert result.raw["type"] == "tool_call" and result.raw["tool"] == "agentrt_plan"
    names = [t["function"]["name"] for t in server.requests_for(k)[0].body["tools"]]
    assert names == ["agentrt_plan"]


def test_history_shows_a_kind_as_the_call_the_model_made(server: FakeOpenAI) -> None:
    k = key()
    # stored as the runtime stores a validated proposal (camelCase aliases)
    history = [
        {
            "step_no": 0,
            "kind": "plan",
            "proposal": {
                "type": "plan",
                "steps": [{"action": "reply", "target": None, "note": None}],
            },
            "observation": {"plan": "accepted", "steps": 1},
        },
        {
            "step_no": 1,
            "kind": "refused",
            "proposal": {"type": "retrieval_query", "query": "q", "sources": ["kb"], "topK": 2},
            "observation": {"refused": "source_not_allowed"},
        },
    ]
    server.add(fake_openai.text("ok"), key=k)
    proposer(server).propose(working_set(k, history=history, proposal_kinds=ALL_KINDS))
    messages = server.requests_for(k)[0].messages
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    plan_call = messages[2]["tool_calls"][0]
    assert plan_call["id"] == "call_0" and plan_call["function"]["name"] == "agentrt_plan"
    assert json.loads(plan_call["function"]["arguments"]) == {"steps": [{"action": "reply"}]}
    assert json.loads(messages[3]["content"]) == {"plan": "accepted", "steps": 1}
    search = messages[4]["tool_calls"][0]["function"]
    assert search["name"] == "agentrt_retrieve"
    assert json.loads(search["arguments"]) == {"query": "q", "sources": ["kb"], "top_k": 2}
    assert json.loads(messages[5]["content"]) == {"refused": "source_not_allowed"}


def test_http_500_raises_proposer_error_after_one_retry(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.error(500, "upstream exploded"), fake_openai.error(500, "still"), key=k)
    with pytest.raises(ProposerError) as info:
        proposer(server).propose(working_set(k))
    assert info.value.code == "model_error"
    assert len(server.requests_for(k)) == 2  # the client retries once, then gives up


def test_client_errors_are_not_retried(server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.error(400, "bad request"), key=k)
    with pytest.raises(ProposerError, match="bad request"):
        proposer(server).propose(working_set(k))
    assert len(server.requests_for(k)) == 1


def test_garbage_and_empty_choices_raise_proposer_error(server: FakeOpenAI) -> None:
    k = key()
    no_choices = fake_openai.text("x")
    no_choices.body["choices"] = []
    server.add(no_choices, key=k)
    with pytest.raises(ProposerError) as info:
        proposer(server).propose(working_set(k))
    assert info.value.code == "model_empty"

    # a 200 whose body is not JSON (a proxy's error page) is a proposer error, not a crash
    k2 = key()
    server.add(FakeResponse(200, raw=b"<html>not json</html>"), key=k2)
    with pytest.raises(ProposerError) as info:
        proposer(server).propose(working_set(k2))
    assert info.value.code == "model_bad_reply"


@pytest.mark.parametrize(
    "body",
    [{"choices": [{}]}, {"choices": [{"message": "just a string"}]}, ["not", "an", "object"]],
)
def test_malformed_replies_raise_proposer_error(server: FakeOpenAI, body: Any) -> None:
    k = key()
    server.add(FakeResponse(200, body=body), key=k)
    with pytest.raises(ProposerError) as info:
        proposer(server).propose(working_set(k))
    assert info.value.code in ("model_bad_reply", "model_empty")


def test_odd_usage_numbers_are_unknown_usage_not_fatal(server: FakeOpenAI) -> None:
    # a count that is not a count is neither coerced ("7" -> 7) nor clamped to zero: the
    # usage is unknown, and the step charges its worst case (fail closed)
    k = key()
    reply = fake_openai.text("fine")
    reply.body["usage"] = {"prompt_tokens": -5, "completion_tokens": "7"}
    server.add(reply, key=k)
    result = proposer(server).propose(working_set(k))
    assert result.raw == {"type": "reply", "text": "fine"}
    assert result.usage.unknown
    assert result.usage.reported == {"input_tokens": -5, "output_tokens": "7"}
    # charged as the whole reservation: the prompt's bound and the granted output
    assert result.usage.within(700, 4000).model_dump(include={"input_tokens", "output_tokens"}) == {
        "input_tokens": 700,
        "output_tokens": 4000,
    }


def test_unreachable_endpoint_raises_proposer_error() -> None:
    config = ModelConfig(
        kind="openai", model="m", version="v", base_url="http://127.0.0.1:9/v1", timeout_s=2
    )
    with pytest.raises(ProposerError) as info:
        OpenAIProposer(config).propose(working_set("x"))
    assert info.value.code == "model_error"


# --- end to end: a worker calls the server -------------------------------------------------


@pytest.fixture(scope="module")
def chat(
    server: FakeOpenAI, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A private deployment whose ``fake-openai`` model points at the local server."""
    tmp = tmp_path_factory.mktemp("openai-e2e")
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["models"]["fake-openai"]["base_url"] = server.base_url
    # r.chat.plan offers the model plans, and refuses a call off its plan
    chat_plan = copy.deepcopy(data["routes"]["r.chat"])
    chat_plan.update(proposal_kinds=["plan"], plan_deviation="refuse")
    data["routes"]["r.chat.plan"] = chat_plan
    config = tmp / "runtime.yaml"
    config.write_text(yaml.safe_dump(data))
    dep = Deployment.create(
        name=f"oa{uuid.uuid4().hex[:4]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / 'agentrt.db'}",
        config=config,
        home=tmp,
    )
    dep.start_worker(concurrency=2)
    try:
        yield dep
    finally:
        dep.close()


def submit(dep: Deployment, k: str) -> str:
    return dep.svc.submit("t1", "r.chat", f"Answer the customer ({k})", {}, actor="tester").run_id


def test_run_calls_a_tool_then_replies(chat: Deployment, server: FakeOpenAI) -> None:
    # Given a model that searches, then answers
    k = key()
    server.add(
        fake_openai.tool_call(
            "kb__search",
            {"query": "refund"},
            call_id="call_s1",
            prompt_tokens=200,
            completion_tokens=20,
            model="test-model-0613",
        ),
        fake_openai.text(
            "Refunds up to 100 EUR are automatic.",
            prompt_tokens=300,
            completion_tokens=40,
            model="test-model-0613",
        ),
        key=k,
    )

    # When a run goes through the worker
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)

    # Then it succeeded with the model's answer
    assert done.status == "succeeded" and done.stop_reason == "completed", done
    assert done.output == {"text": "Refunds up to 100 EUR are automatic."}
    assert done.version_set.model == "test-model-1"
    steps = chat.svc.store.steps(run_id)
    assert [s["outcome"] for s in steps] == ["tool_succeeded", "completed"]
    assert [(s["input_tokens"], s["output_tokens"]) for s in steps] == [(200, 20), (300, 40)]
    assert {s["model_version"] for s in steps} == {"test-model-0613"}
    # spend matches the usage the server reported (price 1 / 2 USD per Mtok)
    spend = chat.svc.store.spend(run_id=run_id)
    assert spend["tokens"] == 560 and spend["model_calls"] == 2 and spend["tool_calls"] == 1
    assert spend["input_tokens"] == 500 and spend["output_tokens"] == 60
    assert spend["cost_micro_usd"] == 500 * 1 + 60 * 2
    balance = chat.svc.ledger.balance(chat.svc.keys.budget_run(run_id))
    assert balance["tokens"] == {"used": 560, "reserved": 0}
    # and the second request carried the tool result for the model's call
    requests = server.requests_for(k)
    assert len(requests) == 2
    first, second = requests
    assert first.body["max_tokens"] == 1000  # tokens_per_step of the route's budget policy
    assert [t["function"]["name"] for t in first.body["tools"]] == ["kb__search"]
    assert "Answer the customer" in first.messages[1]["content"]
    assistant, result = second.messages[2], second.messages[3]
    assert assistant["tool_calls"][0]["id"] == "call_s1"
    assert assistant["tool_calls"][0]["function"]["name"] == "kb__search"
    assert result["role"] == "tool" and result["tool_call_id"] == "call_s1"
    assert json.loads(result["content"])["hits"][0]["id"] == "kb-1"


def test_unknown_tool_is_denied(chat: Deployment, server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.tool_call("shell__exec", {"cmd": "rm -rf /"}, prompt_tokens=5), key=k)
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    assert done.status == "refused" and done.stop_reason == "policy_denied:unknown_tool"
    assert len(server.requests_for(k)) == 1
    [decision] = chat.svc.store.policy_decisions(run_id)
    assert decision["decision"] == "deny" and decision["rule_id"] == "unknown_tool"


def test_invalid_args_are_refused_fed_back_and_corrected(
    chat: Deployment, server: FakeOpenAI
) -> None:
    # Given a model that first sends an empty query (invalid), then a valid one, then answers
    k = key()
    server.add(
        fake_openai.tool_call("kb__search", {"query": ""}, call_id="call_bad"),
        fake_openai.tool_call("kb__search", {"query": "shipping"}, call_id="call_good"),
        fake_openai.text("Carriers may take 5 working days."),
        key=k,
    )
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)

    # Then the run recovered (r.chat tolerates one invalid proposal)
    assert done.status == "succeeded", done.stop_reason
    outcomes = [s["outcome"] for s in chat.svc.store.steps(run_id)]
    assert outcomes == ["refused:invalid_args", "tool_succeeded", "completed"]
    # and the refusal went back to the model as the result of its call
    second = server.requests_for(k)[1]
    refusal = next(m for m in second.messages if m.get("tool_call_id") == "call_bad")
    body = json.loads(refusal["content"])
    assert body["refused"] == "invalid_args"
    assert body["errors"][0]["loc"] == "query"


def test_second_invalid_proposal_refuses_the_run(chat: Deployment, server: FakeOpenAI) -> None:
    k = key()
    server.add(
        fake_openai.tool_call("kb__search", "not json at all", call_id="c1"),
        fake_openai.tool_call("kb__search", {"top_k": 99}, call_id="c2"),
        key=k,
    )
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    assert done.status == "refused" and done.stop_reason == "invalid_proposal:invalid_args"
    # the first (malformed) refusal was fed back with the model's own argument text
    second = server.requests_for(k)[1]
    call = next(m for m in second.messages if m["role"] == "assistant")
    assert call["tool_calls"][0]["function"]["arguments"] == "not json at all"


def test_model_endpoint_failure_fails_the_run(chat: Deployment, server: FakeOpenAI) -> None:
    k = key()
    server.add(fake_openai.error(503, "overloaded", retry=False), key=k)
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    assert done.status == "failed" and done.stop_reason == "failed:model_error"


# --- hostile replies: numbers, several calls, nesting -------------------------------------


def test_an_absurd_usage_report_is_charged_at_the_reservation(
    chat: Deployment, server: FakeOpenAI
) -> None:
    k = key()
    server.add(fake_openai.text("ok", prompt_tokens=10**30, completion_tokens=2**63), key=k)
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    # the checkpoint went through: the run ended normally, charged its reservation (the
    # prompt's bound as input, the granted output cap of 1000)
    assert done.status == "succeeded", done.stop_reason
    [step] = chat.svc.store.steps(run_id)
    reserve = next(e for e in chat.svc.trace(run_id) if e.kind == "budget_reserve")
    prompt = reserve.data["prompt_tokens"]
    assert reserve.data["max_output_tokens"] == 1000
    assert (step["input_tokens"], step["output_tokens"]) == (prompt, 1000)
    assert chat.svc.store.spend(run_id=run_id)["tokens"] == prompt + 1000
    assert reserve.data["amounts"]["tokens"] == prompt + 1000
    unknown = next(e for e in chat.svc.trace(run_id) if e.kind == "usage_unknown")
    assert unknown.data["charged"] == prompt + 1000


def test_a_reply_with_fifty_calls_is_refused_and_records_every_call(
    chat: Deployment, server: FakeOpenAI
) -> None:
    k = key()
    many = fake_openai.tool_call("kb__search", {"query": "q0"}, call_id="c0")
    message = many.body["choices"][0]["message"]
    message["tool_calls"] = [
        {"id": f"c{i}", "type": "function",
         "function": {"name": "kb__search", "arguments": json.dumps({"query": f"q{i}"})}}
        for i in range(50)
    ]  # fmt: skip
    server.add(many, fake_openai.text("answered without tools"), key=k)
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    # the first reply was refused (fed back: the route allows one invalid proposal), none of
    # its calls ran, and every one of them is on record
    assert done.status == "succeeded", done.stop_reason
    first = chat.svc.store.steps(run_id)[0]
    assert first["outcome"] == "refused:multiple_tool_calls"
    events = chat.svc.trace(run_id)
    assert not any(e.kind == "tool_start" for e in events)
    proposal = next(e for e in events if e.kind == "proposal")
    assert [c["args"]["query"] for c in proposal.data["proposal"]["calls"]] == [
        f"q{i}" for i in range(50)
    ]


def test_arguments_nested_thousands_deep_are_refused_with_a_reason(
    chat: Deployment, server: FakeOpenAI
) -> None:
    k = key()
    deep = '{"query": ' + "[" * 5000 + "]" * 5000 + "}"
    server.add(fake_openai.tool_call("kb__search", deep, call_id="d1"), fake_openai.text("ok"),
               key=k)  # fmt: skip
    run_id = submit(chat, k)
    done = chat.svc.wait(run_id, timeout=60)
    assert done.status == "succeeded", done.stop_reason
    assert chat.svc.store.steps(run_id)[0]["outcome"] == "refused:too_deep"
    assert chat.svc.dead_letters.find(DeadLetterFilter(run_id=run_id)) == []


def test_a_model_proposes_a_plan_then_follows_it(chat: Deployment, server: FakeOpenAI) -> None:
    # Given a model that plans a search and a reply, then does both
    k = key()
    server.add(
        fake_openai.tool_call("agentrt_plan", {"steps": PLAN_STEPS}, call_id="call_p"),
        fake_openai.tool_call("kb__search", {"query": "refund"}, call_id="call_s"),
        fake_openai.text("Refunds are automatic."),
        key=k,
    )
    run_id = chat.svc.submit("t1", "r.chat.plan", f"Answer ({k})", {}, actor="tester").run_id
    done = chat.svc.wait(run_id, timeout=60)
    assert (done.status, done.stop_reason) == ("succeeded", "completed"), done
    steps = chat.svc.store.steps(run_id)
    assert [s["outcome"] for s in steps] == ["plan_accepted", "tool_succeeded", "completed"]
    matched = [e.data for e in chat.svc.trace(run_id) if e.kind == "plan_step"]
    assert matched == [{"index": 0, "matched": True}, {"index": 1, "matched": True}]
    # the model was offered the plan function and saw its accepted plan as the call's result
    first, second, _ = server.requests_for(k)
    assert [t["function"]["name"] for t in first.body["tools"]] == ["kb__search", "agentrt_plan"]
    assert second.messages[2]["tool_calls"][0]["function"]["name"] == "agentrt_plan"
    assert json.loads(second.messages[3]["content"]) == {"plan": "accepted", "steps": 2}


def test_a_model_plan_naming_a_tool_the_route_lacks_is_refused(
    chat: Deployment, server: FakeOpenAI
) -> None:
    k = key()
    bad = {"steps": [{"action": "tool_call", "target": "payments.refund"}]}
    server.add(
        fake_openai.tool_call("agentrt_plan", bad),
        fake_openai.tool_call("agentrt_plan", bad),
        key=k,
    )
    run_id = chat.svc.submit("t1", "r.chat.plan", f"Refund ({k})", {}, actor="tester").run_id
    done = chat.svc.wait(run_id, timeout=60)
    # fed back once (max_invalid_proposals: 1), then the run is refused
    assert (done.status, done.stop_reason) == ("refused", "invalid_proposal:plan_tool_not_allowed")
    assert len(server.requests_for(k)) == 2
    assert chat.svc.store.get_run(run_id)["plan"] is None
