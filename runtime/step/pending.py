"""A tool call kept for a later step (a retry, a wait, an approval), and resuming it.

The run row's ``pending_proposal`` holds the call with its secret arguments redacted; their
values are kept apart (``pending_secrets``) and put back only when the call resumes.
"""

from __future__ import annotations

from typing import Any

from runtime import stop_reasons
from runtime.contract import RunStatus
from runtime.step import child_result
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome
from runtime.store.runs import RunStore
from runtime.tools.registry import ToolRegistry
from runtime.tracing import REDACTED, secret_name

#: keys a pending proposal carries for the runtime, stripped before validation
PENDING_META = ("call_key", "origin_step", "secret_args", "approval")
#: the kept call a reviewer denied, on a route that tells the model (``type`` of the row)
DENIED = "approval_denied"


class PendingCalls:
    def __init__(self, *, registry: ToolRegistry, store: RunStore) -> None:
        self.registry = registry
        self.store = store

    def keep(self, st: Step, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """The call as the run row keeps it (its retry key goes with it). Its secret
        arguments are kept apart (``st.pending_secrets``), never in the run row."""
        spec = self.registry.get(tool)
        declared = spec.secret_args if spec else frozenset()
        secret = sorted(n for n in args if n in declared or secret_name(n))
        pending: dict[str, Any] = {
            "type": "tool_call",
            "tool": tool,
            "args": {k: REDACTED if k in secret else v for k, v in args.items()},
        }
        if secret:
            pending["secret_args"] = secret
            st.pending_secrets = {n: args[n] for n in secret}
        if st.call_key:
            pending["call_key"] = st.call_key
        if st.approval_ref:  # the approval it waits for, or was approved by
            pending["approval"] = st.approval_ref
        return pending

    def resume(self, st: Step, pending: dict[str, Any]) -> Any:
        """The kept call as a raw proposal, its secrets put back; a ``Move`` ending the run
        if they are gone."""
        if pending.get("type") == DENIED:
            return denied(st, pending)
        if pending.get("type") == child_result.CHILD_RESULT:
            return child_result.returned(st, pending)
        # retry bookkeeping travels with the proposal but is not part of it
        st.call_key = pending.get("call_key")
        ref = pending.get("approval")
        st.approval_ref = ref if isinstance(ref, dict) else None
        raw: Any = {k: v for k, v in pending.items() if k not in PENDING_META}
        st.trace.add("proposal_resumed", tool=pending.get("tool"), call_key=st.call_key)
        if not pending.get("secret_args"):
            return raw
        secrets = self.store.pending_secrets(st.run_id)
        if secrets is None or set(secrets) != set(pending["secret_args"]):
            # fail closed: never run the call with its secrets missing or redacted
            st.trace.add("pending_secrets_lost", tool=pending.get("tool"))
            return Move(
                RunStatus.FAILED,
                StepKind.FAILED,
                StepOutcome.PENDING_SECRETS_LOST,
                stop_reason=stop_reasons.make("failed", "pending_secrets_lost"),
                run_updates={"pending_proposal": None},
            )
        return {**raw, "args": {**raw.get("args", {}), **secrets}}


def denied(st: Step, pending: dict[str, Any]) -> Move:
    """A kept call a reviewer denied, on a route that tells the model: never run; the
    denial is the call's error, fed back like any tool error (the model proposes next)."""
    st.proposal = {"type": "tool_call", "tool": pending.get("tool"), "args": pending.get("args")}
    actor = str(pending.get("denied_by") or "")
    st.trace.add(
        "approval_denied_told",
        approval_id=pending.get("approval_id"),
        tool=pending.get("tool"),
        denied_by=actor,
    )
    return Move(
        RunStatus.RUNNING,
        StepKind.REFUSED,
        StepOutcome.APPROVAL_DENIED.of(actor),
        observation={
            "error": "approval_denied",
            "detail": f"a reviewer ({actor}) denied this call: {pending.get('reason') or ''}",
        },
        run_updates={"pending_proposal": None},
    )
