"""The policy engine: built-in checks, rule matching, strictness, defaults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from runtime.config import PolicyConfig, PolicyRule
from runtime.policy import Decision, PolicyContext, PolicyEngine, rule_matches, tighten


def ctx(**kw: Any) -> PolicyContext:
    fields: dict[str, Any] = {
        "tool": "payments.refund",
        "args": {"amount": 50, "currency": "EUR"},
        "side_effect": "irreversible",
        "tenant": "acme",
        "route": "billing.refunds",
        "risk_class": "high",
        # the rules decide alone at this level (the levels are tested below)
        "autonomy_level": "bounded_autonomous",
        "allowed_tools": ("payments.refund", "kb.search", "tickets.update"),
        "tool_registered": True,
        "tool_enabled": True,
    }
    fields.update(kw)
    return PolicyContext(**fields)


def engine(*rules: dict[str, Any], default: str = "allow") -> PolicyEngine:
    return PolicyEngine(
        PolicyConfig.model_validate({"version": "pol-1", "default": default, "rules": list(rules)})
    )


def rule(match: dict[str, Any], effect: str = "deny", id: str = "r1") -> PolicyRule:
    return PolicyRule.model_validate({"id": id, "effect": effect, "match": match})


# --- built-in checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ({"tool_registered": False}, "unknown_tool"),
        ({"tool_enabled": False}, "tool_disabled"),
        ({"allowed_tools": ("kb.search",)}, "tool_not_allowed"),
        # unknown wins over disabled and not-allowed
        ({"tool_registered": False, "tool_enabled": False, "allowed_tools": ()}, "unknown_tool"),
        ({"tool_enabled": False, "allowed_tools": ()}, "tool_disabled"),
    ],
)
def test_built_in_checks_deny_first(overrides: dict[str, Any], label: str) -> None:
    # Given a rule that would allow everything explicitly
    pe = engine({"id": "allow_all", "effect": "allow"})

    # When the built-in check fails
    decision = pe.decide(ctx(**overrides))

    # Then it denies with the check's name, and no rule can override it
    assert decision.effect == "deny" and not decision.allowed
    assert decision.rule_id == label and decision.label == label
    assert decision.reason_codes == [label]
    assert decision.policy_version == "pol-1"


def test_allowed_tools_are_exact_names_not_globs() -> None:
    decision = engine().decide(ctx(tool="kb.search", allowed_tools=("kb.*",)))
    assert decision.label == "tool_not_allowed"


# --- rule matching -----------------------------------------------------------------------


def test_empty_match_matches_everything() -> None:
    assert rule_matches(rule({}), ctx())


@pytest.mark.parametrize(
    ("patterns", "tool", "expected"),
    [
        (["payments.refund"], "payments.refund", True),
        (["payments.*"], "payments.refund", True),
        (["*.refund"], "payments.refund", True),
        (["kb.*", "payments.re?und"], "payments.refund", True),
        (["payments.*"], "kb.search", False),
        (["Payments.*"], "payments.refund", False),  # case-sensitive
        ([], "payments.refund", False),
    ],
)
def test_tool_globs(patterns: list[str], tool: str, expected: bool) -> None:
    assert rule_matches(rule({"tool": patterns}), ctx(tool=tool)) is expected


@pytest.mark.parametrize(
    ("field", "value", "patterns", "expected"),
    [
        ("side_effect", "irreversible", ["irreversible", "external"], True),
        ("side_effect", "read", ["write"], False),
        ("side_effect", None, ["*"], False),  # an unknown tool has no side-effect class
        ("tenant", "acme", ["acme"], True),
        ("tenant", "globex", ["acme"], False),
        ("tenant", "acme-eu", ["acme*"], True),
        ("route", "billing.refunds", ["billing.*"], True),
        ("route", "support.triage", ["billing.*"], False),
        ("risk_class", "high", ["high"], True),
        ("risk_class", "low", ["medium", "high"], False),
        ("autonomy_level", "bounded_autonomous", ["bounded_*"], True),
        ("autonomy_level", "advisory", ["bounded_autonomous"], False),
    ],
)
def test_context_fields(field: str, value: Any, patterns: list[str], expected: bool) -> None:
    assert rule_matches(rule({field: patterns}), ctx(**{field: value})) is expected


def test_every_condition_of_a_match_must_hold() -> None:
    r = rule(
        {"tool": ["tickets.update"], "risk_class": ["high"], "args": {"status": {"eq": "closed"}}}
    )
    base = ctx(tool="tickets.update", args={"status": "closed"})
    assert rule_matches(r, base)
    assert not rule_matches(r, replace(base, risk_class="low"))
    assert not rule_matches(r, replace(base, args={"status": "open"}))
    assert not rule_matches(r, replace(base, tool="kb.search"))


@pytest.mark.parametrize(
    ("comparison", "value", "expected"),
    [
        ({"gt": 100}, 101, True),
        ({"gt": 100}, 100, False),
        ({"gte": 100}, 100, True),
        ({"gte": 100}, 99.5, False),
        ({"lt": 10}, 9.99, True),
        ({"lt": 10}, 10, False),
        ({"lte": 10}, 10, True),
        ({"lte": 10}, 11, False),
        ({"gt": 10, "lt": 20}, 15, True),  # several operators: all must hold
        ({"gt": 10, "lt": 20}, 25, False),
        ({"eq": "closed"}, "closed", True),
        ({"eq": "closed"}, "open", False),
        ({"eq": 100}, 100.0, True),  # int and float compare by value
        ({"ne": "closed"}, "open", True),
        ({"ne": "closed"}, "closed", False),
        ({"in": ["EUR", "USD"]}, "EUR", True),
        ({"in": ["EUR", "USD"]}, "GBP", False),
        ({"not_in": ["EUR", "USD"]}, "GBP", True),
        ({"not_in": ["EUR", "USD"]}, "USD", False),
        ({"contains": "urgent"}, "this is urgent!", True),
        ({"contains": "urgent"}, "calm", False),
        ({"contains": "1"}, 123, False),  # contains is for strings only
        # numbers given as strings are not numbers
        ({"gt": 100}, "500", False),
        # bools are not numbers: True is not > 0, not == 1, not in [1]
        ({"gt": 0}, True, False),
        ({"gte": 0}, False, False),
        ({"lt": 5}, False, False),
        ({"eq": 1}, True, False),
        ({"eq": 0}, False, False),
        ({"ne": 1}, True, True),
        ({"in": [1, 2]}, True, False),
        ({"not_in": [0]}, False, True),
        ({"eq": True}, 1, False),
        ({"eq": True}, True, True),
        ({"eq": False}, False, True),
        ({"in": [True]}, True, True),
    ],
)
def test_arg_comparisons(comparison: dict[str, Any], value: Any, expected: bool) -> None:
    r = rule({"args": {"x": comparison}})
    assert rule_matches(r, ctx(args={"x": value})) is expected


def test_missing_arg_never_matches() -> None:
    # even operators that a missing value would "satisfy" (ne, not_in) do not match
    for comparison in ({"gt": 0}, {"ne": "x"}, {"not_in": ["x"]}, {}):
        assert not rule_matches(rule({"args": {"x": comparison}}), ctx(args={"y": 1}))


def test_every_arg_condition_must_hold() -> None:
    r = rule({"args": {"amount": {"gt": 100}, "currency": {"eq": "EUR"}}})
    assert rule_matches(r, ctx(args={"amount": 150, "currency": "EUR"}))
    assert not rule_matches(r, ctx(args={"amount": 150, "currency": "USD"}))
    assert not rule_matches(r, ctx(args={"amount": 150}))


# --- decisions ---------------------------------------------------------------------------

RULES = [
    {"id": "allow_refunds", "effect": "allow", "match": {"tool": ["payments.refund"]}},
    {
        "id": "approve_big",
        "effect": "require_approval",
        "reason": "big_refund",
        "match": {"tool": ["payments.refund"], "args": {"amount": {"gt": 100}}},
    },
    {
        "id": "escalate_huge",
        "effect": "escalate",
        "owner": "ops-billing",
        "match": {"tool": ["payments.refund"], "args": {"amount": {"gt": 1000}}},
    },
    {
        "id": "cap",
        "effect": "deny",
        "reason": "over_cap",
        "match": {"tool": ["payments.refund"], "args": {"amount": {"gt": 5000}}},
    },
]


@pytest.mark.parametrize(
    ("amount", "effect", "rule_id", "reasons"),
    [
        (50, "allow", "allow_refunds", ["allow_refunds"]),
        (500, "require_approval", "approve_big", ["allow_refunds", "big_refund"]),
        (2000, "escalate", "escalate_huge", ["allow_refunds", "big_refund", "escalate_huge"]),
        (9000, "deny", "cap", ["allow_refunds", "big_refund", "escalate_huge", "over_cap"]),
    ],
)
def test_strictest_matching_rule_wins(
    amount: int, effect: str, rule_id: str, reasons: list[str]
) -> None:
    # the order of rules in the file does not matter
    for rules in (RULES, list(reversed(RULES))):
        decision = engine(*rules).decide(ctx(args={"amount": amount}))
        assert decision.effect == effect
        assert decision.rule_id == rule_id and decision.label == rule_id
        assert sorted(decision.reason_codes) == sorted(reasons)
        assert decision.allowed is (effect == "allow")


def test_first_rule_wins_between_equally_strict_rules() -> None:
    pe = engine(
        {"id": "first", "effect": "deny", "match": {"tool": ["payments.*"]}},
        {"id": "second", "effect": "deny", "match": {"tool": ["*.refund"]}},
    )
    decision = pe.decide(ctx())
    assert decision.rule_id == "first" and decision.reason_codes == ["first", "second"]


def test_default_applies_when_no_rule_matches() -> None:
    unrelated = {"id": "tickets_only", "effect": "deny", "match": {"tool": ["tickets.*"]}}

    allowed = engine(unrelated).decide(ctx())
    assert allowed.effect == "allow" and allowed.rule_id is None
    assert allowed.label == "default_allow" and allowed.reason_codes == ["default_allow"]

    denied = engine(unrelated, default="deny").decide(ctx())
    assert denied.effect == "deny" and denied.rule_id is None
    assert denied.label == "default_deny" and denied.reason_codes == ["default_deny"]
    assert denied.policy_version == "pol-1"


def test_default_deny_with_an_allow_rule_is_an_allow_list() -> None:
    pe = engine(
        {"id": "reads_ok", "effect": "allow", "match": {"side_effect": ["read"]}}, default="deny"
    )
    assert pe.decide(ctx(tool="kb.search", side_effect="read")).effect == "allow"
    assert pe.decide(ctx()).label == "default_deny"


def test_shipped_test_policy() -> None:
    # the rules of tests/config/runtime.yaml, as the step loop sees them
    from runtime.config import load_config
    from tests.conftest import TEST_CONFIG

    pe = PolicyEngine(load_config(TEST_CONFIG).policy)
    refunds = ("payments.refund", "tickets.update")
    assert pe.decide(ctx(args={"amount": 20.0}, allowed_tools=refunds)).label == "default_allow"
    assert (
        pe.decide(ctx(args={"amount": 500.0}, allowed_tools=refunds)).label
        == "refund_needs_approval"
    )
    assert pe.decide(ctx(args={"amount": 5000.0}, allowed_tools=refunds)).label == "refund_cap"
    close = ctx(
        tool="tickets.update", side_effect="write", args={"status": "closed"}, allowed_tools=refunds
    )
    assert pe.decide(close).label == "no_closing_high_risk"
    assert pe.decide(replace(close, risk_class="low")).label == "default_allow"


# --- autonomy levels ----------------------------------------------------------------------

#: (level, side effect) -> the loosest effect the level leaves a call
FLOORS = [
    ("advisory", "read", "record_only"),
    ("advisory", "write", "record_only"),
    ("advisory", "irreversible", "record_only"),
    ("drafts_for_review", "read", "allow"),
    ("drafts_for_review", "write", "require_approval"),
    ("drafts_for_review", "external", "require_approval"),
    ("drafts_for_review", "irreversible", "require_approval"),
    ("executes_after_approval", "read", "allow"),
    ("executes_after_approval", "write", "require_approval"),
    ("executes_after_approval", "external", "require_approval"),
    ("executes_after_approval", "irreversible", "require_approval"),
    ("bounded_autonomous", "read", "allow"),
    ("bounded_autonomous", "irreversible", "allow"),
]
STRICTNESS = ["allow", "require_approval", "escalate", "record_only", "deny"]


@pytest.mark.parametrize(("level", "side_effect", "floor"), FLOORS)
@pytest.mark.parametrize("ruled", ["allow", "require_approval", "escalate", "deny"])
def test_a_level_tightens_and_a_rule_never_loosens_it(
    level: str, side_effect: str, floor: str, ruled: str
) -> None:
    # Given a rule with any effect matching the call
    the_rule = {"id": "the_rule", "effect": ruled, "match": {"tool": ["payments.refund"]}}
    if ruled == "escalate":
        the_rule["owner"] = "ops-billing"  # an escalation names who decides it
    pe = engine(the_rule)

    # When a run of this level proposes it
    decision = pe.decide(ctx(autonomy_level=level, side_effect=side_effect))

    # Then the decision is the stricter of the rule and the level, never looser than either
    stricter = max(ruled, floor, key=STRICTNESS.index)
    assert decision.effect == stricter
    if STRICTNESS.index(floor) > STRICTNESS.index(ruled):
        # the level decided: it is named as the rule, the rule stays on record
        assert decision.rule_id == f"autonomy:{level}" and decision.label == decision.rule_id
        assert decision.reason_codes == ["the_rule", f"autonomy:{level}"]
    else:
        assert decision.rule_id == "the_rule" and decision.reason_codes == ["the_rule"]
    assert decision.policy_version == "pol-1"


def test_built_in_denials_stand_at_every_level() -> None:
    for level in ("advisory", "drafts_for_review", "executes_after_approval"):
        decision = engine().decide(ctx(autonomy_level=level, tool_registered=False))
        assert decision.effect == "deny" and decision.label == "unknown_tool"


def test_an_unknown_level_denies_everything() -> None:
    # a stored level this version does not know (edited by hand): nothing runs
    for side_effect in ("read", "write"):
        decision = engine({"id": "ok", "effect": "allow"}).decide(
            ctx(autonomy_level="rogue", side_effect=side_effect)
        )
        assert decision.effect == "deny" and decision.rule_id == "autonomy:unknown_level"


def test_tighten_keeps_a_stricter_decision_as_it_is() -> None:
    escalated = Decision("escalate", "ask_ops", ["ask_ops"], "pol-1")
    assert tighten(escalated, ctx(autonomy_level="drafts_for_review")) is escalated
    # but advisory records instead of asking a human: nothing would run anyway
    recorded = tighten(escalated, ctx(autonomy_level="advisory"))
    assert recorded.effect == "record_only" and recorded.rule_id == "autonomy:advisory"
