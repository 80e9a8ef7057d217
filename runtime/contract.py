"""The run contract (the seed's RuntimeRun) and the proposal types.

These are the shapes that cross boundaries: the Python API returns them, the CLI prints
them as JSON (camelCase, as the seed writes them), the store maps them to rows.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# statuses and the other closed value sets of a run are plain Python of their own
# (importable without pydantic); re-exported here
from runtime.statuses import TERMINAL_STATUSES as TERMINAL_STATUSES
from runtime.statuses import UNKNOWN_VALUE as UNKNOWN_VALUE
from runtime.statuses import AutonomyLevel as AutonomyLevel
from runtime.statuses import ExecutionMode as ExecutionMode
from runtime.statuses import PriorityClass as PriorityClass
from runtime.statuses import RiskClass as RiskClass
from runtime.statuses import RunStatus as RunStatus
from runtime.statuses import SideEffectClass as SideEffectClass


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class VersionSet(_Camel):
    model: str
    prompt: str
    policy: str
    tool_schema: str
    retriever: str | None = None
    harness: str


class RuntimeRun(_Camel):
    """Every field of the seed's RuntimeRun contract, plus timestamps."""

    run_id: str
    trace_id: str
    request_id: str
    actor_id: str
    tenant_id: str
    route: str
    goal: str
    autonomy_level: AutonomyLevel
    risk_class: RiskClass
    execution_mode: ExecutionMode
    status: RunStatus
    version_set: VersionSet
    budget_policy_version: str
    policy_version: str
    workflow_step: str | None = None
    allowed_tools: list[str]
    idempotency_key: str | None = None
    approval_id: str | None = None
    checkpoint_ref: str | None = None
    stop_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunView(RuntimeRun):
    """The contract plus what an operator wants next to it.

    A view never fails to build: a stored value this version cannot read (an unknown status
    or priority written by hand or by another version, a corrupt JSON cell) is shown as a
    marked value (status ``unknown``, priority ``unknown``, the most restrictive autonomy
    and risk, ``?`` for a string) and kept, bounded, in ``unreadable_fields``."""

    priority: PriorityClass | Literal["unknown"] = "normal"
    steps: int = 0
    output: Any = None
    input: dict[str, Any] | None = None
    #: at admission, under backpressure: the estimated wait before the first step starts
    estimated_wait_s: float | None = None
    #: at admission, refused:queue_full: when to try again
    retry_after_s: float | None = None
    #: stored values the view could not read, by field: the raw value, bounded; None when
    #: every field was read as stored
    unreadable_fields: dict[str, str] | None = None


# --- proposals: what a model (or a script) may propose; untrusted input -----------------


#: the most tokens one model call may report; anything else is not a count
MAX_REPORTED_TOKENS = 10**9


class Usage(_Camel):
    """Tokens one model call used, as its proposer reported them (untrusted)."""

    input_tokens: int = Field(default=0, ge=0, le=MAX_REPORTED_TOKENS, strict=True)
    output_tokens: int = Field(default=0, ge=0, le=MAX_REPORTED_TOKENS, strict=True)
    #: the report was missing or was not a pair of counts: the step charges its worst case
    unknown: bool = False
    #: what was reported, kept for the trace when it could not be used as is
    reported: dict[str, Any] | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_report(cls, input_tokens: Any, output_tokens: Any) -> Usage:
        """Usage from counts a proposer read off a reply or a script. A count that is not
        an integer in ``[0, MAX_REPORTED_TOKENS]`` (a bool, a string, 10**30, -5) makes the
        usage unknown, never zero: the step then charges the worst case it reserved."""
        counts = (input_tokens, output_tokens)
        if all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_REPORTED_TOKENS
            for c in counts
        ):
            return cls(input_tokens=input_tokens, output_tokens=output_tokens)
        return cls(
            unknown=True,
            reported={"input_tokens": _shown(input_tokens), "output_tokens": _shown(output_tokens)},
        )

    def within(self, reserved_input: int, reserved_output: int) -> Usage:
        """This usage bounded by what the step reserved: the prompt's bound for input
        tokens, the granted output cap for output tokens. An unknown usage is charged as the
        whole reservation; a larger count is cut to its part of it (so its cost, priced per
        part, is never above the reserved cost either)."""
        if self.unknown:
            return Usage(
                input_tokens=reserved_input,
                output_tokens=reserved_output,
                unknown=True,
                reported=self.reported,
            )
        if self.input_tokens <= reserved_input and self.output_tokens <= reserved_output:
            return self
        return Usage(
            input_tokens=min(self.input_tokens, reserved_input),
            output_tokens=min(self.output_tokens, reserved_output),
            reported={"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        )


def _shown(value: Any) -> Any:
    """A reported value as it may be stored in a trace: small, JSON."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else f"int of {value.bit_length()} bits"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value[:40]
    return type(value).__name__


class ToolCallProposal(_Camel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tool_call"] = "tool_call"
    tool: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)
    call_id: str | None = Field(default=None, max_length=200)


class ReplyProposal(_Camel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["reply"] = "reply"
    text: str
    #: evidence ids (``ev-...``) the reply rests on; each must have been retrieved in this
    #: run (the route's ``citation_rule`` says what happens to one that was not)
    citations: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )


class RetrievalQueryProposal(_Camel):
    """Search the named sources; what comes back is shown to the model as evidence."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["retrieval_query"] = "retrieval_query"
    query: str = Field(min_length=1, max_length=2000)
    sources: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=10
    )
    top_k: int = Field(default=5, ge=1, le=100)


class MemoryWriteProposal(_Camel):
    """Remember ``content`` under ``namespace``/``key`` for later runs of the tenant."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["memory_write"] = "memory_write"
    namespace: str = Field(default="default", min_length=1, max_length=100)
    key: str = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=64 * 1024)
    #: a retention class the route allows (``run``, ``30d``, ``permanent``, ...)
    retention: str = Field(min_length=1, max_length=40)
    #: evidence ids retrieved in this run that the memory rests on
    evidence: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )


class PlanStep(_Camel):
    model_config = ConfigDict(extra="forbid")
    #: what the step will propose
    action: Literal["tool_call", "retrieval_query", "memory_write", "delegate", "reply", "stop"]
    #: the tool (``tool_call``) or the route (``delegate``) it names
    target: str | None = Field(default=None, min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=500)


class PlanProposal(_Camel):
    """The steps the model intends to take, in order; checked before any of them runs."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["plan"] = "plan"
    steps: list[PlanStep] = Field(min_length=1, max_length=100)


class DelegatedBudget(_Camel):
    """What a child run may spend, carved out of its parent's remaining per-run budget."""

    model_config = ConfigDict(extra="forbid")
    tokens: int | None = Field(default=None, ge=0, le=10**9)
    model_calls: int | None = Field(default=None, ge=0, le=10**6)
    tool_calls: int | None = Field(default=None, ge=0, le=10**6)
    cost_usd: float | None = Field(default=None, ge=0, le=10**6)


class DelegateProposal(_Camel):
    """Start a child run on a route the parent's route lists in ``delegates_to``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["delegate"] = "delegate"
    route: str = Field(min_length=1, max_length=200)
    goal: str = Field(min_length=1, max_length=4000)
    input: dict[str, Any] = Field(default_factory=dict)
    budget: DelegatedBudget | None = None


class StopProposal(_Camel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["stop"] = "stop"
    reason: str | None = Field(default=None, max_length=500)


Proposal = Annotated[
    ToolCallProposal
    | ReplyProposal
    | StopProposal
    | RetrievalQueryProposal
    | MemoryWriteProposal
    | PlanProposal
    | DelegateProposal,
    Field(discriminator="type"),
]


class ProposalResult(BaseModel):
    """What a proposer hands back: the raw proposal (still untrusted), usage, model version."""

    raw: Any
    usage: Usage = Field(default_factory=Usage)
    model_version: str
    latency_ms: int = 0
    #: the model stopped at its output cap (``finish_reason: length``): the text is cut
    truncated: bool = False


class TraceEvent(_Camel):
    run_id: str
    trace_id: str
    step: int | None
    seq: int
    at: datetime
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)
