"""The memory-write stage: a ``memory_write`` proposal is checked against the route's
memory rules (namespace, retention class, size, required evidence, the secret/PII screen)
and the policy (as the synthetic tool ``memory:<namespace>``, a write), then spent from
the ``tool_calls`` budget like a tool call and stored with the step's checkpoint: one
transaction, so a redelivered step that lost its checkpoint wrote nothing and one that
won wrote it once. Every refusal carries its reason code and writes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runtime import stop_reasons
from runtime.contract import MemoryWriteProposal, RunStatus
from runtime.errors import BudgetExhausted
from runtime.memory import screen
from runtime.memory.evidence import EvidenceLookup
from runtime.memory.store import MemoryStore, new_memory_id
from runtime.memory_config import MemoryRules, parse_retention
from runtime.policy import Decision, PolicyContext, PolicyEngine
from runtime.step import decisions, outcomes
from runtime.step.budget import Budgeting
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome
from runtime.store.db import utcnow

#: what the step's record keeps of content the screen refused
SCREENED = "[screened]"
#: the policy's name for a write to a namespace (rules match it: ``tool: ["memory:*"]``)
TOOL_PREFIX = "memory:"


def memory_tool(namespace: str) -> str:
    return TOOL_PREFIX + namespace


class MemoryStage:
    def __init__(
        self,
        *,
        policy: PolicyEngine,
        policy_sets: Mapping[str, PolicyEngine] | None = None,
        budgeting: Budgeting,
        evidence: EvidenceLookup,
        memories: MemoryStore,
    ) -> None:
        self.policy = policy
        self.policy_sets = dict(policy_sets or {})
        self.budgeting = budgeting
        self.evidence = evidence
        self.memories = memories

    def act(self, st: Step, proposal: MemoryWriteProposal) -> Move:
        rules = st.route.memory
        if rules is None:
            return self._refuse(st, "memory_not_enabled", "type", "this route writes no memory")
        refused = self._rule_check(st, rules, proposal)
        if refused is not None:
            return refused
        tool = memory_tool(proposal.namespace)
        args = _policy_args(proposal)
        decision = self._decide(st, tool, args)
        decisions.record(st, tool, decision, args)
        if decision.effect != "allow":
            # approvals of memory writes are not supported: anything short of an allow is
            # a denial (fail closed), named by the rule that decided
            return Move(
                RunStatus.REFUSED,
                StepKind.REFUSED,
                StepOutcome.POLICY_DENIED.of(decision.label),
                observation={"denied": decision.label, "reasons": decision.reason_codes},
                stop_reason=stop_reasons.make("policy_denied", decision.label),
            )
        try:
            added = st.budget.reserve_tool(0)
            # the write happens with the checkpoint: it is this step's one execution
            st.budget.count_executions(0, runs_now=True)
        except BudgetExhausted as exc:
            return self.budgeting.exhausted(st, exc, tool=True)
        if added is not None:
            st.trace.add("budget_reserve_tool", amounts=added, executions=st.budget.hold_tools)
        return self._write(st, proposal)

    def _rule_check(
        self, st: Step, rules: MemoryRules, proposal: MemoryWriteProposal
    ) -> Move | None:
        if proposal.namespace not in rules.namespaces:
            return self._refuse(
                st,
                "namespace_not_allowed",
                "namespace",
                f"namespace {proposal.namespace!r} is not one of {sorted(rules.namespaces)}",
            )
        if proposal.retention not in rules.retention_classes:
            return self._refuse(
                st,
                "retention_not_allowed",
                "retention",
                f"retention {proposal.retention!r} is not one of {rules.retention_classes}",
            )
        size = len(proposal.content.encode())
        if size > rules.max_bytes:
            return self._refuse(
                st,
                "memory_too_large",
                "content",
                f"content is {size} bytes; this route keeps at most {rules.max_bytes}",
            )
        if rules.require_evidence and not proposal.evidence:
            return self._refuse(
                st, "evidence_required", "evidence", "this route needs evidence for a memory"
            )
        if proposal.evidence:
            known = self.evidence.retrieved(st.run_id, st.tenant_id, proposal.evidence)
            unknown = sorted(set(proposal.evidence) - known)
            if unknown:
                return self._refuse(
                    st,
                    "unknown_evidence",
                    "evidence",
                    f"not retrieved in this run: {', '.join(unknown[:10])}",
                )
        if rules.screen:
            found = screen.findings(proposal.content)
            if found:
                # the kinds only: the matched text is what must not be kept anywhere, the
                # step's record of the proposal included
                st.proposal = {**(st.proposal or {}), "content": SCREENED}
                return self._refuse(
                    st, "memory_screened", "content", f"content looks like: {', '.join(found)}"
                )
        return None

    def _decide(self, st: Step, tool: str, args: dict[str, Any]) -> Decision:
        engine = self.policy if st.policy_set is None else self.policy_sets[st.policy_set]
        return engine.decide(
            PolicyContext(
                tool=tool,
                args=args,
                side_effect="write",
                tenant=st.tenant_id,
                route=st.run["route"],
                risk_class=st.run["risk_class"],
                autonomy_level=st.run["autonomy_level"],
                # the route's memory rules allowed the namespace above: the built-in
                # allow-list check passes, configured rules decide
                allowed_tools=(tool,),
                tool_registered=True,
                tool_enabled=True,
            )
        )

    def _write(self, st: Step, proposal: MemoryWriteProposal) -> Move:
        now = utcnow()
        retention = parse_retention(proposal.retention)
        expires_at: datetime | None = now + retention.ttl if retention.ttl else None
        version = self.memories.next_version(st.tenant_id, proposal.namespace, proposal.key)
        memory_id = new_memory_id()
        st.rows.append(
            MemoryStore.row(
                {
                    "memory_id": memory_id,
                    "tenant_id": st.tenant_id,
                    "namespace": proposal.namespace,
                    "key": proposal.key,
                    "version": version,
                    "content": proposal.content,
                    "retention": proposal.retention,
                    "expires_at": expires_at,
                    "run_id": st.run_id,
                    "route": st.run["route"],
                    "step_no": st.step_no,
                    "actor": st.run.get("actor_id"),
                    "evidence": list(proposal.evidence),
                    "created_at": now,
                    "forgotten_at": None,
                    "forgotten_by": None,
                }
            )
        )
        written = {
            "memory_id": memory_id,
            "namespace": proposal.namespace,
            "key": proposal.key,
            "version": version,
            "retention": proposal.retention,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        st.trace.add("validation", ok=True, type="memory_write", namespace=proposal.namespace)
        st.trace.add("memory_write", **written, evidence=list(proposal.evidence))
        return Move(
            RunStatus.RUNNING,
            StepKind.MEMORY_WRITE,
            StepOutcome.MEMORY_WRITTEN.of(proposal.namespace),
            observation={"memory_written": written},
            run_updates={"pending_proposal": None},
        )

    @staticmethod
    def _refuse(st: Step, code: str, loc: str, msg: str) -> Move:
        return outcomes.refuse(st, code, [{"loc": loc, "msg": msg}], st.proposal)


def _policy_args(proposal: MemoryWriteProposal) -> dict[str, Any]:
    """What a policy rule may compare (``match.args``): never the content itself."""
    return {
        "namespace": proposal.namespace,
        "key": proposal.key,
        "retention": proposal.retention,
        "bytes": len(proposal.content.encode()),
        "evidence_count": len(proposal.evidence),
    }
