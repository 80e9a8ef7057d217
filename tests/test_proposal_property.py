"""Property: for any JSON a model can send, the runtime decides - never an exception, never a
silent drop. Either a tool runs with arguments that satisfy its schema strictly, or a
refusal is recorded with a reason code."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import proposals
from runtime.contract import ReplyProposal, StopProposal, ToolCallProposal
from runtime.tools.registry import ToolRegistry
from tests.support import Deployment

REGISTRY = ToolRegistry.from_modules(["runtime.demo.tools", "tests.boundary_tools"])
CODES = {"malformed", "too_large", "too_deep", "number_out_of_range", "multiple_tool_calls",
         "invalid_args"}  # fmt: skip
FIELDS = sorted({f for n in REGISTRY.names() for f in REGISTRY.get(n).input_model.model_fields})  # type: ignore[union-attr]

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A leaf nested 1 to 3000 levels deep in lists or objects."""
    value: Any = draw(leaves)
    in_list = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=1, max_value=3000))):
        value = [value] if in_list else {"x": value}
    return value


args = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), json_values | deep(), max_size=5
)
#: arguments as the JSON text a model writes (OpenAI's function arguments), deep ones too
args_text = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4).map(
    lambda a: json.dumps(a)
) | st.integers(min_value=1, max_value=5000).map(lambda n: '{"query": ' + "[" * n + "]" * n + "}")
calls = st.fixed_dictionaries(
    {
        "type": st.just("tool_call"),
        "tool": st.sampled_from([*REGISTRY.names(), "nope", "kb.search "]),
        "args": args | json_values | st.text(max_size=30) | args_text,
    },
    optional={"call_id": st.text(max_size=5) | st.integers()},
)
raw_proposals = (
    json_values
    | deep()
    | calls
    | st.fixed_dictionaries({"type": st.just("reply"), "text": json_values})
    | st.fixed_dictionaries({"type": st.just("stop")}, optional={"reason": json_values})
    | st.fixed_dictionaries({"type": st.just("tool_calls"), "calls": st.lists(calls, max_size=4)})
)


def decide(raw: Any) -> str:
    """What the runtime does with ``raw``: 'refused:<code>', 'reply', 'stop', 'unknown_tool'
    (policy refuses it) or 'run' - asserting the property on the way."""
    parsed = proposals.parse(raw)
    if isinstance(parsed, proposals.Refused):
        assert parsed.code in CODES, parsed
        assert parsed.errors and parsed.detail
        return f"refused:{parsed.code}"
    if isinstance(parsed, ReplyProposal | StopProposal):
        return parsed.type
    assert isinstance(parsed, ToolCallProposal)
    spec = REGISTRY.get(parsed.tool)
    if spec is None:
        return "unknown_tool"
    checked = proposals.validate_args(spec, parsed)
    if isinstance(checked, proposals.Refused):
        assert checked.code == "invalid_args" and checked.errors
        return "refused:invalid_args"
    # the tool would run: its arguments satisfy the schema strictly, as the model sent them
    assert set(parsed.args) <= set(spec.input_model.model_fields)
    spec.input_model.model_validate_json(json.dumps(parsed.args), strict=True, extra="forbid")
    return "run"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_proposals)
def test_any_json_is_decided_never_raised(raw: Any) -> None:
    decide(raw)
    # what a trace shows of it is bounded JSON, and never raises either
    json.dumps(proposals.shown(raw, REGISTRY), allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(args)
def test_any_arguments_to_a_strict_tool_run_validly_or_are_refused(sent: dict[str, Any]) -> None:
    outcome = decide({"type": "tool_call", "tool": "strict.count", "args": sent})
    assert outcome == "run" or outcome.startswith("refused:")


strict_args = st.fixed_dictionaries(
    {"key": st.just("K")},
    optional={
        "n": st.integers(min_value=-5, max_value=2000) | st.booleans() | st.text(max_size=3)
        | st.floats(allow_nan=False, allow_infinity=False),
        "amount": st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=2e4)
        | st.integers(min_value=-1, max_value=20_000) | st.booleans() | st.text(max_size=3),
        "extra": st.integers(),
    },
)  # fmt: skip


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(strict_args)
def test_on_a_real_worker_a_call_runs_strictly_valid_or_is_refused(
    deployment: Deployment, sent: dict[str, Any]
) -> None:
    k = f"p{uuid.uuid4().hex[:10]}"
    call = {"type": "tool_call", "tool": "strict.count", "args": {**sent, "key": k}}
    expected = decide(call)
    run = deployment.submit_script([call, {"type": "reply", "text": "ok"}], route="r.boundary")
    done = deployment.svc.wait(run.run_id, timeout=60)
    recorded = deployment.svc.tool_redis.lrange(deployment.svc.keys.demo(f"strict:{k}"), 0, -1)
    if expected == "run":
        assert done.status == "succeeded", done.stop_reason
        model = REGISTRY.get("strict.count").input_model  # type: ignore[union-attr]
        valid = model.model_validate_json(json.dumps({**sent, "key": k}), strict=True)
        assert recorded == [f"{valid.n!r}|{valid.amount!r}".encode()]  # type: ignore[attr-defined]
    else:
        assert done.status == "refused"
        code = expected.split(":", 1)[1]
        # a number outside 64 bits in a script is refused already at admission (the script
        # is the run's input); anything else reaches the step and is refused there
        at_admission = {"refused:invalid_input"} if code == "number_out_of_range" else set()
        assert done.stop_reason in {f"invalid_proposal:{code}", *at_admission}
        assert recorded == []
