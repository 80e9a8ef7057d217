"""Validate a proposal and act on it: a reply or a stop ends the run; a tool call is checked
(schema, registration, policy: allow, deny, approval, escalation) and, if allowed, handed to
the tool-call stage. Nothing the model proposes runs before this stage said yes. Every
proposal is first compared with the run's plan, if it has one (``runtime.step.plan_follow``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from runtime import proposals, report_context, stop_reasons, telemetry
from runtime.config import RuntimeConfig
from runtime.contract import ReplyProposal, RunStatus, StopProposal, ToolCallProposal
from runtime.policy import Decision
from runtime.step import advisory, decisions, outcomes, plan_follow
from runtime.step.approval import ApprovalGate
from runtime.step.citations import CitationCheck
from runtime.step.collaborators import CatalogReads
from runtime.step.policy_context import StepPolicy
from runtime.step.state import Move, Step
from runtime.step.tool_call import ToolCall
from runtime.step_record import StepKind, StepOutcome
from runtime.tools.registry import ToolRegistry, ToolSpec
from runtime.tracing import redact

#: the rule a decision an operator's ``ops force-approval`` tightened names
FORCED_APPROVAL_RULE = "operator_forced_approval"
#: the rule a call that departs from the run's plan waits on (``plan_deviation:
#: require_approval``)
PLAN_DEVIATION_RULE = "plan_deviation"


class ProposalStage(Protocol):
    """Acts on one validated kind of proposal (``retrieval_query``, ``memory_write``,
    ``plan``, ``delegate``): checks it against the route's rules and the policy, and
    returns the step's decision. Nothing it governs happens before it said yes."""

    def act(self, st: Step, proposal: Any) -> Move: ...


class ProposalCheck:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        registry: ToolRegistry,
        step_policy: StepPolicy,
        catalog: CatalogReads,
        tool_call: ToolCall,
        approvals: ApprovalGate,
        stages: Mapping[str, ProposalStage] | None = None,
        citations: CitationCheck | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.step_policy = step_policy
        self.catalog = catalog
        self.tool_call = tool_call
        self.approvals = approvals
        #: the stage of each proposal type beyond tool calls, replies and stops
        self.stages = dict(stages or {})
        #: checks a reply's citations against the run's evidence (None: not checked)
        self.citations = citations

    def validate_and_act(self, st: Step, raw: Any) -> Move:
        proposal = proposals.parse(raw)
        if isinstance(proposal, proposals.Refused):
            shown = proposals.shown(raw, self.registry)
            return outcomes.refuse(st, proposal.code, proposal.errors, shown)
        st.proposal = proposal.model_dump(by_alias=True)
        if isinstance(proposal, ToolCallProposal):
            # what is stored of a call the plan refuses never carries its secret arguments
            st.proposal = proposals.redact_call(st.proposal, self.registry)
        deviation = plan_follow.follow(st, proposal)
        if isinstance(deviation, Move):
            return deviation
        st.plan_deviation = deviation
        if isinstance(proposal, ReplyProposal):
            return self._reply(st, proposal)
        if isinstance(proposal, StopProposal):
            st.trace.add("validation", ok=True, type="stop")
            stop = Move(
                RunStatus.SUCCEEDED,
                StepKind.STOP,
                StepOutcome.COMPLETED,
                output={"stopped": proposal.reason or "model_stop"},
                stop_reason="completed",
            )
            return advisory.with_proposals(st, stop)
        if isinstance(proposal, ToolCallProposal):
            return self._tool_call(st, proposal)
        stage = self.stages.get(proposal.type)
        if stage is None:
            # a proposal type this deployment does not govern is never acted on
            error = {"loc": "type", "msg": f"{proposal.type!r} proposals are not enabled here"}
            return outcomes.refuse(st, "unsupported_proposal", [error], st.proposal)
        return stage.act(st, proposal)

    def _reply(self, st: Step, proposal: ReplyProposal) -> Move:
        output: dict[str, Any] = {"text": proposal.text}
        if proposal.citations:
            output["citations"] = proposal.citations
        if self.citations is not None:
            flags = self.citations.check(st, proposal)
            if isinstance(flags, Move):
                return flags
            if flags:
                output["citation_flags"] = flags
        st.trace.add("validation", ok=True, type="reply")
        reply = Move(
            RunStatus.SUCCEEDED,
            StepKind.REPLY,
            StepOutcome.COMPLETED,
            output=output,
            stop_reason="completed",
        )
        return advisory.with_proposals(st, reply)

    def _tool_call(self, st: Step, proposal: ToolCallProposal) -> Move:
        proposal = self._fallback(st, proposal)
        spec = self.registry.get(proposal.tool)
        registered = spec is not None and proposal.tool in self.config.tools
        # what is stored or shown of the call never carries its secret arguments
        st.proposal = proposals.redact_call(st.proposal, self.registry)
        st.secrets = proposals.secret_values(spec, proposal.args)
        report_context.note_secrets(st.secrets)
        args_model: BaseModel | None = None
        if spec is not None and registered:
            # validated before policy: policy rules see only well-formed, defaulted args
            checked = self._checked_args(st, spec, proposal)
            if isinstance(checked, Move):
                return checked
            args_model = checked
        args = args_model.model_dump(mode="json") if args_model is not None else proposal.args
        safe_args = redact(args, spec.secret_args if spec else frozenset())
        decision = self._decide(st, spec, registered, proposal.tool, args)
        st.proposal = {**(st.proposal or {}), "args": safe_args}
        decisions.record(st, proposal.tool, decision, args)
        if decision.effect == "record_only":  # autonomy level advisory: recorded, never run
            return advisory.proposed(st, proposal.tool, safe_args, decision.label)
        if decision.effect != "allow":
            held = self._not_allowed(st, decision, proposal.tool, args)
            if held is not None:
                return held
        assert spec is not None and args_model is not None
        st.trace.add("validation", ok=True, type="tool_call", tool=proposal.tool)
        return self.tool_call.run(st, spec, args_model, args, proposal)

    def _checked_args(
        self, st: Step, spec: ToolSpec, proposal: ToolCallProposal
    ) -> BaseModel | Move:
        checked = proposals.validate_args(spec, proposal)
        if not isinstance(checked, proposals.Refused):
            return checked
        st.trace.add(
            "validation",
            ok=False,
            code=checked.code,
            tool=proposal.tool,
            errors=checked.errors,
            detail=checked.detail,
        )
        return outcomes.refuse(st, checked.code, checked.errors, st.proposal, validated=True)

    def _fallback(self, st: Step, proposal: ToolCallProposal) -> ToolCallProposal:
        """A call of a disabled tool whose manifest names a fallback goes to the fallback
        (when that one is enabled); the policy then decides the fallback's call."""
        entry = self.config.tools.get(proposal.tool)
        if entry is None or entry.fallback is None:
            return proposal
        if self.catalog.tool_enabled(proposal.tool, st.disabled_tools):
            return proposal
        if not self.catalog.tool_enabled(entry.fallback, st.disabled_tools):
            return proposal  # both off: refused as tool_disabled
        st.trace.add("tool_fallback", tool=entry.fallback, instead_of=proposal.tool)
        st.proposal = {**(st.proposal or {}), "tool": entry.fallback}
        return proposal.model_copy(update={"tool": entry.fallback})

    def _decide(
        self,
        st: Step,
        spec: ToolSpec | None,
        registered: bool,
        tool: str,
        args: Any,
    ) -> Decision:
        with telemetry.span("agentrt.policy", tool=tool) as span:
            decision = self.step_policy.decide(
                st, tool=tool, args=args, spec=spec, registered=registered
            )
            forced = st.forced_approval_route or tool in st.forced_approval_tools
            if forced and decision.effect == "allow":
                # an operator tightened the policy: only ever stricter, never looser
                decision = _tightened(decision, FORCED_APPROVAL_RULE)
            if (
                st.plan_deviation
                and st.route.plan_deviation == "require_approval"
                and decision.effect == "allow"
            ):
                # the route asks a human for a call off the plan: stricter, never looser
                decision = _tightened(decision, PLAN_DEVIATION_RULE)
            span.set("agentrt.policy_effect", decision.effect)
            span.set("agentrt.policy_rule", decision.label)
            span.set("agentrt.policy_version", decision.policy_version)
        return decision

    def _not_allowed(self, st: Step, decision: Decision, tool: str, args: Any) -> Move | None:
        """Denied: the run is refused. Approval or escalation: the run waits, keeping the
        call for when a human decided - unless this step resumes that call and an approval
        for exactly this action is there to spend (None: the call runs,
        ``runtime.step.approval``); a changed action asks again."""
        if decision.effect == "deny":
            return Move(
                RunStatus.REFUSED,
                StepKind.REFUSED,
                StepOutcome.POLICY_DENIED.of(decision.label),
                observation={"denied": decision.label, "reasons": decision.reason_codes},
                stop_reason=stop_reasons.make("policy_denied", decision.label),
            )
        if self.approvals.covers(st, decision, tool, args):
            return None
        return self.approvals.request(st, decision, tool, args)


def _tightened(decision: Decision, rule: str) -> Decision:
    """``decision`` (an allow) made to wait for an approval under ``rule``."""
    return Decision(
        "require_approval", rule, [*decision.reason_codes, rule], decision.policy_version
    )
