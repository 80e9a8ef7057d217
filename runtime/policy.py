"""The policy engine: rules from config, evaluated against a proposal and its run.

Built-in checks come first and cannot be overridden by rules:

* ``unknown_tool``      - the tool is not registered (or not declared in the manifest)
* ``tool_disabled``     - the manifest or a live kill switch disabled the tool
* ``tool_not_allowed``  - the tool is not in the route's allowed tools

Then every configured rule whose ``match`` holds contributes its effect; the strictest wins
(deny > escalate > require_approval > allow). With no match, ``policy.default`` applies.
Every decision is stored with the policy version before a tool may execute.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.config import Comparison, PolicyConfig, PolicyRule

Effect = Literal["allow", "deny", "require_approval", "escalate"]

_STRICTNESS: dict[str, int] = {"allow": 0, "require_approval": 1, "escalate": 2, "deny": 3}


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
    if not _any_glob(ctx.tool, m.tool):
        return False
    if not _any_glob(ctx.side_effect, m.side_effect):
        return False
    if not _any_glob(ctx.tenant, m.tenant) or not _any_glob(ctx.route, m.route):
        return False
    if not _any_glob(ctx.risk_class, m.risk_class):
        return False
    if not _any_glob(ctx.autonomy_level, m.autonomy_level):
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
        built_in = self._built_in(ctx)
        if built_in is not None:
            return built_in
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
