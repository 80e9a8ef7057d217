"""The policy engine: rules from config, evaluated against a proposal and its run.

Built-in checks come first and cannot be overridden by rules:

* ``unknown_tool``      - the tool is not registered (or not declared in the manifest)
* ``tool_disabled``     - the manifest or a live kill switch disabled the tool
* ``tool_not_allowed``  - the tool is not in the route's allowed tools

Then every configured rule whose ``match`` holds contributes its effect; the strictest wins
(deny > escalate > require_approval > allow). With no match, ``policy.default`` applies.

Last, the run's autonomy level tightens the decision (``tighten``): it sets the loosest
effect a call may get, and a rule can only be stricter, never looser:

==========================  ==============================  ==================================
level                       read tools                      write, external, irreversible
==========================  ==============================  ==================================
advisory                    record_only                     record_only
drafts_for_review           policy decides                  require_approval (a draft)
executes_after_approval     policy decides                  require_approval
bounded_autonomous          policy decides                  policy decides
==========================  ==============================  ==================================

``record_only`` (stricter than escalate, looser than deny) means the call is recorded as a
proposal and never executed: under ``advisory`` no human is asked, because nothing would run
anyway. A decision the level tightened names it as its rule (``autonomy:<level>``).
Every decision is stored with the policy version before a tool may execute.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.config import Comparison, PolicyConfig, PolicyRule

Effect = Literal["allow", "deny", "require_approval", "escalate", "record_only"]

_STRICTNESS: dict[str, int] = {
    "allow": 0,
    "require_approval": 1,
    "escalate": 2,
    "record_only": 3,
    "deny": 4,
}

#: side-effect classes that are not a plain read (an unknown class counts as one of them)
_READ = "read"
#: the loosest effect each level leaves a side-effecting call, and a read
_LEVEL_FLOORS: dict[str, tuple[Effect, Effect]] = {
    # (side effect, read)
    "advisory": ("record_only", "record_only"),
    "drafts_for_review": ("require_approval", "allow"),
    "executes_after_approval": ("require_approval", "allow"),
    "bounded_autonomous": ("allow", "allow"),
}
#: the rule a run whose stored level this version does not know is denied by (fail closed)
UNKNOWN_LEVEL_RULE = "autonomy:unknown_level"


@dataclass(frozen=True)
class PolicyContext:
    tool: str
    args: dict[str, Any]
    side_effect: str | None
    tenant: str
    route: str
    risk_class: str
    autonomy_level: str
    allowed_tools: tuple[str, ...]
    tool_registered: bool
    tool_enabled: bool
    #: the source a retrieval query names (None: a tool call; ``tool`` is then the tool)
    source: str | None = None
    #: the call departs from the run's accepted plan (``runtime.step.plan_follow``)
    plan_deviation: bool = False


@dataclass(frozen=True)
class Decision:
    effect: Effect
    #: the rule that decided (a built-in check name or a configured rule id); None = default
    rule_id: str | None
    reason_codes: list[str] = field(default_factory=list)
    policy_version: str = ""

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    @property
    def label(self) -> str:
        return self.rule_id or f"default_{self.effect}"


def autonomy_rule(level: str) -> str:
    """The rule a decision the autonomy level tightened names."""
    return f"autonomy:{level}"


def tighten(decision: Decision, ctx: PolicyContext) -> Decision:
    """The decision, made at least as strict as the run's autonomy level allows. Only
    ever stricter: a rule's ``allow`` never loosens the level, and a stricter decision
    (a deny, a rule's escalation) stands as it is."""
    floors = _LEVEL_FLOORS.get(ctx.autonomy_level)
    if floors is None:  # a level this version does not know: nothing runs
        floor: Effect = "deny"
        rule = UNKNOWN_LEVEL_RULE
    else:
        floor = floors[1] if ctx.side_effect == _READ else floors[0]
        rule = autonomy_rule(ctx.autonomy_level)
    if _STRICTNESS[floor] <= _STRICTNESS[decision.effect]:
        return decision
    return Decision(floor, rule, [*decision.reason_codes, rule], decision.policy_version)


def _equal(a: Any, b: Any) -> bool:
    """``==`` without Python's ``True == 1``: a bool only equals a bool."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _compare(value: Any, cmp: Comparison) -> bool:
    checks: list[bool] = []
    if cmp.eq is not None:
        checks.append(_equal(value, cmp.eq))
    if cmp.ne is not None:
        checks.append(not _equal(value, cmp.ne))
    if cmp.in_ is not None:
        checks.append(any(_equal(value, v) for v in cmp.in_))
    if cmp.not_in is not None:
        checks.append(not any(_equal(value, v) for v in cmp.not_in))
    if cmp.contains is not None:
        checks.append(isinstance(value, str) and cmp.contains in value)
    for bound, op in ((cmp.gt, "gt"), (cmp.gte, "gte"), (cmp.lt, "lt"), (cmp.lte, "lte")):
        if bound is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            checks.append(False)
            continue
        checks.append(
            {
                "gt": value > bound,
                "gte": value >= bound,
                "lt": value < bound,
                "lte": value <= bound,
            }[op]
        )
    return all(checks)


def _any_glob(value: str | None, patterns: list[str] | None) -> bool:
    if patterns is None:
        return True
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def rule_matches(rule: PolicyRule, ctx: PolicyContext) -> bool:
    m = rule.match
    if ctx.source is not None:
        # a rule about tools (or their arguments) says nothing about a search, and a
        # rule about sources nothing about a tool call
        if m.tool is not None or m.args is not None or m.side_effect is not None:
            return False
    elif m.source is not None:
        return False
    if not _any_glob(ctx.source, m.source):
        return False
    if ctx.source is None and not _any_glob(ctx.tool, m.tool):
        return False
    if not _any_glob(ctx.side_effect, m.side_effect):
        return False
    if not _any_glob(ctx.tenant, m.tenant) or not _any_glob(ctx.route, m.route):
        return False
    if not _any_glob(ctx.risk_class, m.risk_class):
        return False
    if not _any_glob(ctx.autonomy_level, m.autonomy_level):
        return False
    if m.plan_deviation is not None and m.plan_deviation != ctx.plan_deviation:
        return False
    if m.args:
        for name, cmp in m.args.items():
            if name not in ctx.args or not _compare(ctx.args[name], cmp):
                return False
    return True


class PolicyEngine:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.version = config.version

    def _built_in(self, ctx: PolicyContext) -> Decision | None:
        if not ctx.tool_registered:
            return Decision("deny", "unknown_tool", ["unknown_tool"], self.version)
        if not ctx.tool_enabled:
            return Decision("deny", "tool_disabled", ["tool_disabled"], self.version)
        if ctx.tool not in ctx.allowed_tools:
            return Decision("deny", "tool_not_allowed", ["tool_not_allowed"], self.version)
        return None

    def decide(self, ctx: PolicyContext) -> Decision:
        """The rules' decision, tightened by the run's autonomy level (``tighten``): the
        one way a call is decided."""
        return tighten(self._rules_decide(ctx), ctx)

    def decide_source(self, ctx: PolicyContext) -> Decision:
        """A retrieval query's search of ``ctx.source``: the rules alone (the built-in
        checks are about tools; eligibility and access are the retrieval stage's). The
        autonomy level does not tighten it: a search changes nothing outside the run."""
        assert ctx.source is not None
        if ctx.autonomy_level not in _LEVEL_FLOORS:
            return Decision("deny", UNKNOWN_LEVEL_RULE, [UNKNOWN_LEVEL_RULE], self.version)
        return self._matching(ctx)

    def _rules_decide(self, ctx: PolicyContext) -> Decision:
        built_in = self._built_in(ctx)
        if built_in is not None:
            return built_in
        return self._matching(ctx)

    def _matching(self, ctx: PolicyContext) -> Decision:
        winner: PolicyRule | None = None
        reasons: list[str] = []
        for rule in self.config.rules:
            if rule_matches(rule, ctx):
                reasons.append(rule.reason or rule.id)
                if winner is None or _STRICTNESS[rule.effect] > _STRICTNESS[winner.effect]:
                    winner = rule
        if winner is None:
            return Decision(
                self.config.default, None, [f"default_{self.config.default}"], self.version
            )
        return Decision(winner.effect, winner.id, reasons, self.version)
