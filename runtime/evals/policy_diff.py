"""Policy dry run: decide the stored proposals of a window again under a candidate policy
(the real engine, ``runtime.policy``) and count what would change, per transition
(``allow -> deny``) and per rule of the candidate, with example runs. Nothing is written.

A stored proposal is re-decided with its run's route, tenant, risk class, autonomy level
and allowed tools, and the arguments its step recorded (redacted by the store: a rule on a
secret argument sees ``[redacted]``). Live kill switches are not replayed: a tool counts
as enabled, so a call a switch denied shows as a change only if the candidate decides it
differently from ``tool_disabled``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from runtime.config import PolicyConfig
from runtime.policy import PolicyContext, PolicyEngine
from runtime.store.evals import EvalStore, StoredProposal
from runtime.tools.registry import ToolRegistry

#: example run ids kept per transition and rule
EXAMPLES = 3


@dataclass
class Change:
    transition: str
    rule: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class PolicyDiff:
    examined: int = 0
    changed: int = 0
    #: ``allow -> deny`` -> count
    transitions: Counter[str] = field(default_factory=Counter)
    #: (transition, candidate rule) -> change
    by_rule: dict[tuple[str, str], Change] = field(default_factory=dict)
    #: the window was cut at the read limit
    truncated: bool = False

    def changes(self) -> list[Change]:
        return sorted(self.by_rule.values(), key=lambda c: (-c.count, c.transition, c.rule))


def _context(p: StoredProposal, registry: ToolRegistry) -> PolicyContext:
    spec = registry.get(p.tool)
    return PolicyContext(
        tool=p.tool,
        args=p.args,
        side_effect=spec.side_effect if spec else None,
        tenant=p.tenant_id,
        route=p.route,
        risk_class=p.risk_class,
        autonomy_level=p.autonomy_level,
        allowed_tools=p.allowed_tools,
        tool_registered=spec is not None,
        tool_enabled=True,
    )


def diff(
    proposals: list[StoredProposal], candidate: PolicyConfig, registry: ToolRegistry
) -> PolicyDiff:
    engine = PolicyEngine(candidate)
    result = PolicyDiff(examined=len(proposals))
    for p in proposals:
        decision = engine.decide(_context(p, registry))
        if decision.effect == p.decision:
            continue
        transition = f"{p.decision} -> {decision.effect}"
        result.changed += 1
        result.transitions[transition] += 1
        change = result.by_rule.setdefault(
            (transition, decision.label), Change(transition, decision.label)
        )
        change.count += 1
        if p.run_id not in change.examples and len(change.examples) < EXAMPLES:
            change.examples.append(p.run_id)
    return result


def policy_diff(
    *,
    store: EvalStore,
    registry: ToolRegistry,
    candidate: PolicyConfig,
    since: datetime,
    route: str | None = None,
    tenant: str | None = None,
    limit: int = 10_000,
) -> PolicyDiff:
    proposals = store.proposals_since(since, route=route, tenant=tenant, limit=limit)
    result = diff(proposals, candidate, registry)
    result.truncated = len(proposals) >= limit
    return result
