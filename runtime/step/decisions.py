"""A policy decision on a tool call, as the step records it (row and trace event)."""

from __future__ import annotations

from typing import Any

from runtime.policy import Decision
from runtime.step.state import Step, args_digest
from runtime.store.db import utcnow


def record(st: Step, tool: str, decision: Decision, args: Any) -> None:
    """Keep the decision for the step's first commit: before the tool runs (an allow for
    a side effect), or with the checkpoint."""
    row = {
        "run_id": st.run_id,
        "tenant_id": st.tenant_id,
        "step_no": st.step_no,
        "call_index": 0,
        "tool": tool,
        "decision": decision.effect,
        "rule_id": decision.rule_id,
        "reason_codes": decision.reason_codes,
        "policy_version": decision.policy_version,
        "args_digest": args_digest(args),
        "at": utcnow(),
    }
    st.decisions.append(row)
    st.trace.add(
        "policy_decision",
        tool=tool,
        effect=decision.effect,
        rule=decision.label,
        reasons=decision.reason_codes,
        policy_version=decision.policy_version,
    )
