"""The approval gate of a tool call: ask a human, and, when the run resumes, run the call
only if an approved approval for exactly this action is there to spend.

**The digest binds an approval to the exact action**: SHA-256 over the RFC 8785 canonical
JSON (``rfc8785``) of the tool, its schema version (the manifest's ``version``), the
validated arguments with defaults applied (as shown: secret values are ``[redacted]``,
since a digest of a short secret, a PIN say, gives the secret away to anyone who can read
the row; the secret values stay in ``pending_secrets``, keyed to the run, and only the run's
own kept call ever puts them back), the policy version, the tenant, the run and the step
that asked. A changed argument, tool version or policy, another run or another step is
another digest: that approval cannot be spent on it, and the call asks again.

**Asking** (``request``): the run waits (``needs_approval:<rule>`` or
``escalated:<rule>``) holding no slot, lease or budget hold (the checkpoint gives them
back); the approval row commits with that checkpoint, its id in ``runs.approval_id`` and in
the kept call (``pending["approval"]``).

**Resuming** (``covers``): the step that resumes the kept call recomputes the digest and
looks the approval up by id, tenant, run and step: approved (or already spent by this very
call: a redelivered step, a retried call) and the same digest, or the call asks again. The
approval is spent in the transaction that claims the call's idempotency key
(``runtime.store.effects``; a read, with no claim, spends it on its own just before it
runs), so it is used once, by that call.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import rfc8785

from runtime import stop_reasons
from runtime.config import RuntimeConfig
from runtime.contract import RunStatus
from runtime.policy import Decision
from runtime.step.pending import PendingCalls
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step
from runtime.store.approvals import APPROVED, CONSUMED, PENDING, ApprovalSpend, ApprovalStore
from runtime.store.db import utcnow
from runtime.tools.registry import ToolRegistry
from runtime.tracing import redact

#: the "tool" of an approval that grants a budget extension (``on_budget_exhausted: ask``):
#: its arguments are the amounts asked for, per dimension
BUDGET_EXTENSION = "budget_extension"
#: integers I-JSON (RFC 8785) represents exactly; others are canonicalised as tagged text
_SAFE_INT = 2**53 - 1


def action_digest(
    *,
    tool: str,
    tool_version: str,
    args: Any,
    policy_version: str,
    tenant: str,
    run_id: str,
    step_no: int,
) -> str:
    """The digest of one exact action (see the module doc): SHA-256 of ``canonical_action``."""
    return hashlib.sha256(
        canonical_action(
            tool=tool,
            tool_version=tool_version,
            args=args,
            policy_version=policy_version,
            tenant=tenant,
            run_id=run_id,
            step_no=step_no,
        )
    ).hexdigest()


def canonical_action(
    *,
    tool: str,
    tool_version: str,
    args: Any,
    policy_version: str,
    tenant: str,
    run_id: str,
    step_no: int,
) -> bytes:
    """The RFC 8785 canonical JSON of one exact action: what an approval's digest covers,
    byte for byte, so an approver can be shown exactly that (and check the digest)."""
    document = {
        "tool": tool,
        "tool_version": tool_version,
        "args": _canonicalisable(args),
        "policy_version": policy_version,
        "tenant": tenant,
        "run_id": run_id,
        "step_no": step_no,
    }
    return rfc8785.dumps(document)


def _canonicalisable(value: Any) -> Any:
    """``value`` with integers beyond 2^53 as ``{"$int": "<digits>"}``: RFC 8785 numbers
    are doubles, and rounding one would let two different amounts share a digest."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > _SAFE_INT:
        return {"$int": str(value)}
    if isinstance(value, dict):
        return {str(k): _canonicalisable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonicalisable(v) for v in value]
    return value


class ApprovalGate:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        registry: ToolRegistry,
        approvals: ApprovalStore,
        pending: PendingCalls,
    ) -> None:
        self.config = config
        self.registry = registry
        self.approvals = approvals
        self.pending = pending
        self._owners = {rule.id: rule.owner for rule in config.policy.rules}

    def shown_args(self, tool: str, args: Any) -> Any:
        spec = self.registry.get(tool)
        return redact(args, spec.secret_args if spec else frozenset())

    def digest(self, st: Step, decision: Decision, tool: str, args: Any, step_no: int) -> str:
        entry = self.config.tools.get(tool)
        return action_digest(
            tool=tool,
            tool_version=entry.version if entry else "",
            args=self.shown_args(tool, args),
            policy_version=decision.policy_version,
            tenant=st.tenant_id,
            run_id=st.run_id,
            step_no=step_no,
        )

    # --- resuming --------------------------------------------------------------------
    def covers(self, st: Step, decision: Decision, tool: str, args: Any) -> bool:
        """Does an approval this run holds for this step's kept call cover exactly this
        action? If so the step may run it, spending the approval with its claim
        (``st.approval_spend``)."""
        ref = st.approval_ref
        if not ref:
            return False
        approval_id, asked_at = str(ref.get("id")), int(ref.get("step", -1))
        row = self.approvals.get(approval_id, st.tenant_id)
        key = st.call_key or f"{st.run_id}:{st.step_no}:0"
        digest = self.digest(st, decision, tool, args, asked_at)
        usable = row is not None and (
            row["status"] == APPROVED or (row["status"] == CONSUMED and row["consumed_by"] == key)
        )
        if (
            row is None
            or not usable
            or row["run_id"] != st.run_id
            or int(row["step_no"]) != asked_at
            or row["digest"] != digest
        ):
            st.trace.add(
                "approval_mismatch",
                approval_id=approval_id,
                status=row["status"] if row else None,
                digest_matches=bool(row and row["digest"] == digest),
            )
            return False
        st.approval_spend = ApprovalSpend(approval_id, st.tenant_id, st.run_id, digest)
        # the call runs on the approval: its decision says so (the rule stays on record)
        if st.decisions:
            last = st.decisions[-1]
            last["decision"] = "allow"
            last["reason_codes"] = [*last["reason_codes"], f"approved:{approval_id}"]
        st.trace.add(
            "approval_verified", approval_id=approval_id, decided_by=row["decided_by"], tool=tool
        )
        return True

    # --- asking ----------------------------------------------------------------------
    def request(self, st: Step, decision: Decision, tool: str, args: Any) -> Move:
        """The run waits for a human: a new pending approval for exactly this call."""
        waits = (
            StepOutcome.NEEDS_APPROVAL
            if decision.effect == "require_approval"
            else StepOutcome.ESCALATED
        )
        now = utcnow()
        approval_id = uuid.uuid4().hex
        owner = self._owners.get(decision.rule_id or "") if waits == StepOutcome.ESCALATED else None
        submitter = str(st.run["actor_id"])
        high_risk = st.run["risk_class"] == "high"
        st.approval_request = {
            "approval_id": approval_id,
            "tenant_id": st.tenant_id,
            "run_id": st.run_id,
            "step_no": st.step_no,
            "route": st.run["route"],
            "tool": tool,
            "tool_version": self.config.tools[tool].version if tool in self.config.tools else "",
            "policy_version": decision.policy_version,
            "digest": self.digest(st, decision, tool, args, st.step_no),
            "args": self.shown_args(tool, args),
            "rule_id": decision.label,
            "effect": decision.effect,
            "owner": owner,
            # who may decide: the owner group of an escalation (anyone otherwise), never
            # the run's own submitter on a high-risk route
            "approvers": {"owner": owner, "not": [submitter] if high_risk else []},
            "submitted_by": submitter,
            "status": PENDING,
            "requested_at": now,
            "expires_at": now + timedelta(seconds=st.route.approval_ttl_s),
        }
        st.approval_ref = {"id": approval_id, "step": st.step_no}
        st.trace.add(
            "approval_requested",
            approval_id=approval_id,
            rule=decision.label,
            effect=decision.effect,
            owner=owner,
            tool=tool,
            expires_at=st.approval_request["expires_at"].isoformat(),
        )
        return Move(
            RunStatus.WAITING,
            StepKind.WAITING,
            waits.of(decision.label),
            observation={"awaiting_approval": approval_id, "rule": decision.label},
            stop_reason=stop_reasons.make(waits.value, decision.label),
            run_updates={
                "pending_proposal": self.pending.keep(st, tool, args),
                "approval_id": approval_id,
                "workflow_step": workflow_step(WorkflowStep.AWAITING, tool),
            },
        )


def extension_request(st: Step, approval_id: str, requested: dict[str, Any]) -> dict[str, Any]:
    """The approval a run waiting on its own budget asks for: approving it grants
    ``requested`` (``runtime.approvals`` hands it to the budget extension)."""
    now = utcnow()
    submitter = str(st.run["actor_id"])
    policy_version = str(st.run.get("policy_version") or "")
    return {
        "approval_id": approval_id,
        "tenant_id": st.tenant_id,
        "run_id": st.run_id,
        "step_no": st.step_no,
        "route": st.run["route"],
        "tool": BUDGET_EXTENSION,
        "tool_version": "1",
        "policy_version": policy_version,
        "digest": action_digest(
            tool=BUDGET_EXTENSION,
            tool_version="1",
            args=requested,
            policy_version=policy_version,
            tenant=st.tenant_id,
            run_id=st.run_id,
            step_no=st.step_no,
        ),
        "args": dict(requested),
        "rule_id": BUDGET_EXTENSION,
        "effect": "require_approval",
        "owner": None,
        "approvers": {"owner": None, "not": [submitter] if st.run["risk_class"] == "high" else []},
        "submitted_by": submitter,
        "status": PENDING,
        "requested_at": now,
        "expires_at": now + timedelta(seconds=st.route.approval_ttl_s),
    }
