"""The deployment file (``config/runtime.yaml``): tenants, routes, tools, budgets, policy.

Validated at start-up; every problem names its key, e.g.
``routes.support.triage.max_steps: Input should be greater than 0``. Three passes, each
reporting all of its problems: ``runtime.config_loader`` reads the YAML (no duplicate keys,
no aliases: problems name lines), these models check every value (strict types, finite and
bounded numbers) and every reference (``cross_reference_problems``: names that exist,
rule conditions that can hold), then ``runtime.wiring.load_registry`` checks the manifest
and the rules against the tools the ``tool_modules`` register (``runtime.rule_check``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from runtime.bounds import MAX_INT64, BoundsError, check_json
from runtime.config_loader import read_yaml
from runtime.contract import (
    AutonomyLevel,
    ExecutionMode,
    PriorityClass,
    RiskClass,
    SideEffectClass,
)
from runtime.cron import cron_problem, zone_problem
from runtime.errors import ConfigError
from runtime.eval_config import EvalsConfig
from runtime.event_config import EventSourceConfig, event_source_problems
from runtime.memory_config import MemoryRules

#: ledger dimensions and their integer units
DIMENSIONS: tuple[str, ...] = (
    "tokens",
    "model_calls",
    "tool_calls",
    "retries",
    "wall_clock_ms",
    "cost_micro_usd",
    #: child runs started (``delegate`` proposals the ledger carved a budget for)
    "delegations",
)


# --- bounds: every number in the file is finite and small enough that its ledger units
# (micro-USD, milliseconds, tokens) fit a 64-bit counter with room to add up -----------------

#: seconds in a day; durations are capped in days
DAY_S = 86_400.0
#: largest amount of money anywhere in the file (1e12 micro-USD)
MAX_USD = 1_000_000.0
#: largest token count (a budget); per step, ``MAX_STEP_TOKENS``
MAX_TOKENS = 10**12
MAX_STEP_TOKENS = 10**7
#: largest count of calls, retries, queued steps, rate-limit units
MAX_COUNT = 10**9
#: largest concurrency: leases, caps, bulkheads
MAX_CONCURRENCY = 10**6
#: a model price, USD per million tokens
MAX_USD_PER_MTOK = 10_000.0
#: the longest budgeted wall clock (a day's budget of a busy route may add up to months)
MAX_WALL_CLOCK_S = 366 * DAY_S
#: the longest string value (system prompts included)
MAX_STR = 64 * 1024

assert MAX_USD * 1_000_000 * 1000 < MAX_INT64  # a thousand maximal charges still fit
assert MAX_WALL_CLOCK_S * 1000 * 1000 < MAX_INT64
assert MAX_TOKENS * 1000 < MAX_INT64
assert MAX_STEP_TOKENS * MAX_USD_PER_MTOK * 1000 < MAX_INT64

#: a version recorded on every run
Version = Annotated[str, Field(min_length=1, max_length=200)]
#: a dotted Python module name
ModuleName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=200),
]
#: a glob in a policy rule's match
Glob = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    # strict: a YAML boolean is not a number, a string is not a number; no NaN, no infinity
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, str_max_length=MAX_STR
    )


class BudgetLimits(_Strict):
    """Limits per dimension; a missing dimension is unlimited."""

    tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    model_calls: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    tool_calls: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    retries: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    wall_clock_s: float | None = Field(default=None, ge=0, le=MAX_WALL_CLOCK_S)
    cost_usd: float | None = Field(default=None, ge=0, le=MAX_USD)
    delegations: int | None = Field(default=None, ge=0, le=MAX_COUNT)

    def ledger_limits(self) -> dict[str, int]:
        """Limits in ledger units; -1 means unlimited."""

        def lim(v: float | None, scale: float = 1) -> int:
            return -1 if v is None else round(v * scale)

        return {
            "tokens": lim(self.tokens),
            "model_calls": lim(self.model_calls),
            "tool_calls": lim(self.tool_calls),
            "retries": lim(self.retries),
            "wall_clock_ms": lim(self.wall_clock_s, 1000),
            "cost_micro_usd": lim(self.cost_usd, 1_000_000),
            "delegations": lim(self.delegations),
        }


class BudgetPolicy(_Strict):
    version: Version
    per_run: BudgetLimits = BudgetLimits()
    #: worst case reserved for one model call; also the proposer's max output tokens
    tokens_per_step: int = Field(default=4000, gt=0, le=MAX_STEP_TOKENS)


class RateLimit(_Strict):
    """GCRA: ``limit`` per ``period_s``, spaced evenly; ``burst`` may pass at once."""

    limit: int = Field(gt=0, le=MAX_COUNT)
    period_s: float = Field(default=60.0, ge=0.001, le=DAY_S)
    burst: int = Field(default=1, ge=1, le=MAX_COUNT)


class RetryPolicy(_Strict):
    """How a failed tool or model call is tried again before it is dead-lettered."""

    #: calls in all, the first included (1 = never retry)
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: delay before the second attempt; doubled each time, capped by backoff_max_s
    backoff_s: float = Field(default=0.5, ge=0, le=DAY_S)
    backoff_max_s: float = Field(default=30.0, ge=0, le=DAY_S)
    #: +/- this fraction of random jitter on every delay
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: error codes that are never retried (the tool's ToolExecutionError code, or
    #: tool_timeout, invalid_output, model_error, model_bad_reply, ...)
    non_retryable: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list
    )


class Breaker(_Strict):
    """A circuit breaker shared by every worker: ``failures`` in ``window_s`` open it for
    ``open_s``; then one probe call decides whether it closes."""

    failures: int = Field(default=5, ge=1, le=MAX_CONCURRENCY)
    window_s: float = Field(default=60.0, ge=0.001, le=DAY_S)
    open_s: float = Field(default=30.0, ge=0.001, le=DAY_S)


class TenantConfig(_Strict):
    name: str | None = Field(default=None, max_length=200)
    #: share of dispatch decisions relative to other tenants (weighted fair queuing)
    weight: int = Field(default=1, ge=1, le=1000)
    daily_budget: BudgetLimits = BudgetLimits()
    #: steps of this tenant executing at once, across routes (None = no cap)
    max_concurrency: int | None = Field(default=None, gt=0, le=MAX_CONCURRENCY)
    #: queued steps of this tenant before admission pushes back (None = no limit)
    max_queued: int | None = Field(default=None, gt=0, le=MAX_COUNT)
    enabled: bool = True


class ModelConfig(_Strict):
    kind: Literal["scripted", "openai"]
    #: the model version recorded on every run (the version set's ``model``)
    version: Version
    #: provider model name (openai kind)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    #: the OpenAI-compatible server (None: the SDK's default, OPENAI_BASE_URL or OpenAI)
    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2000)
    #: name of the environment variable holding the API key (never the key itself)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    input_usd_per_mtok: float = Field(default=0.0, ge=0, le=MAX_USD_PER_MTOK)
    output_usd_per_mtok: float = Field(default=0.0, ge=0, le=MAX_USD_PER_MTOK)
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    temperature: float | None = Field(default=None, ge=0, le=2)
    #: global (all workers) limits on calls to this model
    requests_rate: RateLimit | None = None
    tokens_rate: RateLimit | None = None
    breaker: Breaker | None = None

    @model_validator(mode="after")
    def _openai_needs_model(self) -> ModelConfig:
        if self.kind == "openai" and not self.model:
            raise ValueError("kind 'openai' needs 'model' (the provider's model name)")
        return self


class CanaryConfig(_Strict):
    """Runs of a route given a release other than its active one: a share of them
    (``percent``, by a stable hash) and/or the runs of named ``tenants``."""

    #: a key of ``releases``
    release: str = Field(min_length=1, max_length=100)
    percent: float | None = Field(default=None, gt=0, le=100)
    tenants: list[str] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _some_runs(self) -> CanaryConfig:
        if self.percent is None and self.tenants is None:
            raise ValueError("a canary needs 'percent' or 'tenants' (which runs it gets)")
        return self


class ReleaseConfig(_Strict):
    """A named version set a route can run under (``runtime.releases``)."""

    #: a key of ``models``: the proposer
    model: str = Field(min_length=1, max_length=100)
    #: the prompt version recorded on the run
    prompt: Version
    #: the system prompt of this prompt version (None: the route's)
    system_prompt: str | None = None
    #: a key of ``policies`` (None: the top-level ``policy``)
    policy: str | None = Field(default=None, min_length=1, max_length=100)
    #: labels recorded in the version set (None: computed as without releases)
    tool_schema: Version | None = None
    retriever: Version | None = None
    harness: Version | None = None
    #: a key of ``budget_policies`` (None: the route's)
    budget_policy: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=1000)


#: a source's name (also what a policy rule's ``source`` globs match)
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
#: a run's actor as ``submit(actor=...)`` names it (an email, ``cli:<user>``, a service)
ActorName = Annotated[str, Field(min_length=1, max_length=200)]
#: an access label a document may carry and an actor may hold
AccessLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]


class SourceConfig(_Strict):
    """A searchable source (README "Retrieval and evidence"): which registered retriever
    serves it and the rules every search of it is held to, before and after it runs."""

    #: the name of a registered retriever (``documents`` is built in)
    retriever: str = Field(min_length=1, max_length=100)
    #: a document not updated within this many seconds is never shown (None: no rule)
    max_age_s: float | None = Field(default=None, gt=0, le=3650 * DAY_S)
    #: the largest ``top_k`` a query of this source may ask for
    max_top_k: int = Field(default=10, ge=1, le=100)
    #: tenants whose runs may search it; ["*"] = all
    tenants: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=1000)
    #: a labelled document is shown only to a run whose actor holds one of its labels;
    #: with this on, an unlabelled document is shown to no actor either (fail closed)
    labels_required: bool = False

    def allows_tenant(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants


class ActorConfig(_Strict):
    """What the runtime knows of a run's actor: the access labels it holds."""

    labels: list[AccessLabel] = Field(default_factory=list, max_length=1000)


class DelegationConfig(_Strict):
    """How a route's runs may start child runs (``delegate`` proposals)."""

    #: how deep a chain of delegations may go below a run submitted by a caller (depth 0)
    max_depth: int = Field(default=2, ge=1, le=10)
    #: child runs one run may start in all (its fan-out)
    max_children: int = Field(default=5, ge=1, le=1000)
    #: a child's budget where its proposal names none, per dimension; carved out of the
    #: parent's remaining per-run budget (a dimension the parent is limited in must be
    #: named here or by the proposal, or the delegation is refused)
    default_budget: BudgetLimits = BudgetLimits()


class RouteConfig(_Strict):
    task_class: str = Field(min_length=1, max_length=200)
    risk_class: RiskClass
    autonomy_level: AutonomyLevel
    #: how a run of this route is carried out (README "Execution modes"): the default,
    #: ``durable_workflow``, is a run of checkpointed steps on workers
    execution_mode: ExecutionMode = "durable_workflow"
    #: other modes a request may ask for instead (``submit(execution_mode=...)``); empty:
    #: only ``execution_mode``
    execution_modes_allowed: list[ExecutionMode] = Field(default_factory=list, max_length=4)
    #: how long a ``sync`` request waits for the run before it is answered as queued
    sync_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: a key of ``models``
    proposer: str
    prompt_version: Version = "v1"
    retriever_version: Version | None = None
    system_prompt: str = "You are a careful assistant. Use the tools you are given."
    allowed_tools: list[str] = Field(default_factory=list)
    #: routes a run of this route may start child runs on (``delegate`` proposals)
    delegates_to: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100
    )
    delegation: DelegationConfig = DelegationConfig()
    #: a key of ``budget_policies``
    budget_policy: str
    daily_budget: BudgetLimits = BudgetLimits()
    max_steps: int = Field(default=10, gt=0, le=1000)
    concurrency_limit: int = Field(default=10, gt=0, le=MAX_CONCURRENCY)
    priority: PriorityClass = "normal"
    #: tenants allowed on this route; ["*"] = all
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    step_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    run_timeout_s: float = Field(default=3600.0, gt=0, le=30 * DAY_S)
    max_input_bytes: int = Field(default=64 * 1024, gt=0, le=16 * 1024 * 1024)
    #: invalid proposals fed back to the model before the run is refused
    max_invalid_proposals: int = Field(default=0, ge=0, le=1000)
    #: failed tool calls fed back to the model before the run fails
    max_tool_errors: int = Field(default=0, ge=0, le=1000)
    #: times a step waits for a busy lock before the run fails with failed:lock_timeout
    lock_wait_attempts: int = Field(default=20, ge=0, le=10_000)
    #: queued steps of this route before admission pushes back (None = no limit)
    max_queued: int | None = Field(default=None, gt=0, le=MAX_COUNT)
    #: over max_queued: "refuse" (refused:queue_full + retry-after) or "queue" (with an ETA)
    on_queue_full: Literal["refuse", "queue"] = "refuse"
    #: a key of ``retry_policies`` for the route's model calls and tools without their own
    retry_policy: str | None = None
    #: models to ask, in order, while the proposer's circuit breaker is open
    fallback_proposers: list[str] = Field(default_factory=list)
    #: undo succeeded side effects (newest first) when a run fails or is dead-lettered
    compensate_on_failure: bool = False
    #: how long a call waits for a human (approval or escalation) before the run stops
    #: with approval_expired
    approval_ttl_s: float = Field(default=DAY_S, ge=1, le=30 * DAY_S)
    #: a denied call: "stop" the run (approval_denied:<actor>), or "tell_model": feed the
    #: denial back as the call's error so the model can propose something else
    on_approval_denied: Literal["stop", "tell_model"] = "stop"
    #: when the run's own budget (its budget policy's ``per_run``) refuses a step:
    #: "stop" (budget_exhausted:<dimension>) or "ask" (the run waits,
    #: needs_approval:budget_extension, for an approval that raises its per-run limit)
    on_budget_exhausted: Literal["stop", "ask"] = "stop"
    #: the business SLA of an approval wait on this route (``agentrt slo report``'s
    #: approval_latency_p95 measures against it; unset: the route is not measured)
    approval_sla_s: float | None = Field(default=None, gt=0, le=30 * DAY_S)
    #: what an "ask" requests, per dimension; a dimension not named asks for the
    #: shortfall (what the refused step needed beyond what the run had left)
    budget_extension: BudgetLimits = BudgetLimits()
    enabled: bool = True
    #: the release (a key of ``releases``) active at deploy; None: the route runs on its
    #: own fields (proposer, prompt_version, ...) exactly as without releases
    release: str | None = Field(default=None, min_length=1, max_length=100)
    #: a second release given to some runs (``runtime.releases``)
    canary: CanaryConfig | None = None
    #: what the canary's hash is taken of: the run's ``tenant`` (default) or the ``run`` id
    release_assignment: Literal["tenant", "run"] | None = None
    #: ``pinned`` (default): a run keeps its release; ``next_step``: a run takes the
    #: route's current release at its next step
    release_upgrade: Literal["pinned", "next_step"] | None = None
    #: the sources a retrieval query of this route may name (keys of ``sources``); empty:
    #: the route retrieves nothing and its steps assemble no working set
    sources: list[SourceName] = Field(default_factory=list, max_length=100)
    #: a reply citing evidence this run never retrieved, or citing none after it retrieved
    #: some: "off" (not checked), "warn" (traced and flagged), "refuse" (the reply is refused)
    citation_rule: Literal["off", "warn", "refuse"] = "warn"
    #: the working set's budget (tokens): the oldest evidence is dropped first to fit it
    context_budget_tokens: int = Field(default=8000, ge=100, le=MAX_STEP_TOKENS)
    #: what runs of this route may remember (``runtime.memory_config``); None: every
    #: memory write is refused ``memory_not_enabled``
    memory: MemoryRules | None = None
    #: what a proposal that departs from the run's accepted plan leads to (README
    #: "Plans"): "ignore" (traced only as a step), "warn" (a ``plan_deviation`` event),
    #: "require_approval" (the call waits for a human) or "refuse" (``plan_deviation``)
    plan_deviation: Literal["ignore", "warn", "require_approval", "refuse"] = "warn"
    #: a tool call before the run proposed a plan is refused (``plan_required``)
    plan_required: bool = False
    #: proposal kinds beyond tool calls, replies and stops a model with function calling is
    #: offered as functions (``runtime.proposers.kinds``); the runtime decides each one
    #: whatever the model was offered
    proposal_kinds: list[Literal["plan", "retrieval_query", "memory_write", "delegate"]] = Field(
        default_factory=list, max_length=4
    )

    def modes(self) -> tuple[str, ...]:
        """Every mode a run of this route may have: its own first."""
        others = [m for m in self.execution_modes_allowed if m != self.execution_mode]
        return (self.execution_mode, *others)

    @model_validator(mode="after")
    def _kinds_once(self) -> RouteConfig:
        twice = sorted({k for k in self.proposal_kinds if self.proposal_kinds.count(k) > 1})
        if twice:
            raise ValueError(f"proposal_kinds names {', '.join(twice)} twice")
        return self

    @model_validator(mode="after")
    def _modes_once(self) -> RouteConfig:
        twice = sorted({m for m in self.execution_modes_allowed
                        if self.execution_modes_allowed.count(m) > 1})  # fmt: skip
        if twice:
            raise ValueError(f"execution_modes_allowed names {', '.join(twice)} twice")
        return self

    @model_validator(mode="after")
    def _extension_needs_ask(self) -> RouteConfig:
        # a stated extension a route never asks for would be a setting that silently
        # does nothing; one of 0 would ask for nothing
        stated = {k: v for k, v in self.budget_extension.model_dump().items() if v is not None}
        if stated and self.on_budget_exhausted != "ask":
            raise ValueError("budget_extension is only used with on_budget_exhausted: ask")
        zero = sorted(k for k, v in stated.items() if v <= 0)
        if zero:
            raise ValueError(f"budget_extension: {', '.join(zero)} must be above 0")
        return self


class ToolManifestEntry(_Strict):
    version: Version = "1"
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    cost_usd: float = Field(default=0.0, ge=0, le=MAX_USD)
    #: bulkhead: calls of this tool executing at once, across workers (None = no limit)
    max_concurrency: int | None = Field(default=None, gt=0, le=MAX_CONCURRENCY)
    #: global rate limit on calls of this tool
    rate_limit: RateLimit | None = None
    #: a key of ``retry_policies``; without one, the route's policy applies
    retry_policy: str | None = None
    breaker: Breaker | None = None
    enabled: bool = True
    #: the tool a call goes to while this one is disabled (by the manifest or by
    #: ``agentrt ops disable-tool``); None: the call is refused ``tool_disabled``
    fallback: str | None = None


#: seconds per priority class (ageing offsets, longest waits): at most a day each
PrioritySeconds = dict[str, Annotated[float, Field(ge=0, le=DAY_S)]]


def _priority_map(default: dict[str, float]) -> Any:
    return Field(default_factory=lambda: dict(default))


class SchedulingConfig(_Strict):
    #: within a tenant, a step's place is its enqueue time plus this offset: ageing
    priority_offsets_s: PrioritySeconds = _priority_map(
        {"critical": 0.0, "high": 5.0, "normal": 20.0, "low": 60.0}
    )
    #: across tenants, a step waiting longer than this is dispatched first
    max_wait_s: PrioritySeconds = _priority_map(
        {"critical": 5.0, "high": 30.0, "normal": 60.0, "low": 120.0}
    )
    #: items of a tenant examined when its first ones wait for a full route
    lookahead: int = Field(default=8, ge=1, le=128)
    #: steps dispatched beyond live worker processes, as a fraction of them. Default: 0 when
    #: chaining is on (a process that finishes a step runs the next one itself, and a step
    #: waiting in Celery would stop every chain, see ``chain_window_s``), else 1.0
    dispatch_headroom: float | None = Field(default=None, ge=0, le=10)
    #: a step is killed this long after its route's step_timeout_s (Celery hard limit);
    #: its soft limit is half way
    hard_limit_grace_s: float = Field(default=20.0, gt=0, le=600)
    #: a task that finished its step runs the step the scheduler dispatches into the slot it
    #: frees itself, instead of publishing it, for this long after it started (0: never).
    #: Every limit of a step (hard, soft, leases, visibility timeout) grows by this much, so
    #: a step run late in the window still has its whole time.
    chain_window_s: float = Field(default=2.0, ge=0, le=60)
    #: at most this many steps in one task (the first one included)
    chain_max_steps: int = Field(default=32, ge=1, le=1000)
    #: leases (a run's step lease, a step's slots) outlive the hard limit by this much
    lease_margin_s: float = Field(default=15.0, gt=0, le=600)
    #: a dispatched step may wait this long in Celery before its slots count as lost
    queue_allowance_s: float = Field(default=60.0, gt=0, le=3600)
    #: a process instance whose heartbeat is this old is dead: its running steps are handed
    #: back and its locks and run leases may be taken over (refreshed every 1/8 of it)
    worker_dead_after_s: float = Field(default=8.0, ge=2.0, le=300.0)

    def headroom(self) -> float:
        """``dispatch_headroom``, or its default (see there)."""
        if self.dispatch_headroom is not None:
            return self.dispatch_headroom
        return 0.0 if self.chain_window_s > 0 else 1.0

    @model_validator(mode="after")
    def _all_priorities(self) -> SchedulingConfig:
        for name in ("priority_offsets_s", "max_wait_s"):
            value = getattr(self, name)
            missing = {"critical", "high", "normal", "low"} - set(value)
            extra = set(value) - {"critical", "high", "normal", "low"}
            if missing or extra:
                raise ValueError(
                    f"{name} needs exactly critical, high, normal, low"
                    + (f" (missing {sorted(missing)})" if missing else "")
                    + (f" (unknown {sorted(extra)})" if extra else "")
                )
        return self


#: the JSON kinds a comparison can meet (an integer and a float compare as numbers)
JsonKind = Literal["string", "number", "boolean", "null", "array", "object"]
_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains")


def json_kind(value: Any) -> JsonKind:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class Comparison(_Strict):
    """Conditions on one argument; all must hold. Values are JSON (no NaN, 64-bit ints).

    The model takes what the policy engine can evaluate; what a deployment file may say
    is checked by ``comparison_problems`` (no empty or contradictory conditions)."""

    eq: Any = None
    ne: Any = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    in_: list[Any] | None = Field(default=None, alias="in", max_length=1000)
    not_in: list[Any] | None = Field(default=None, max_length=1000)
    contains: str | None = None

    @field_validator("eq", "ne", "in_", "not_in")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        try:
            check_json(value, max_depth=8)
        except BoundsError as exc:
            where = f"item {exc.path.strip('[]')}: " if exc.path else ""
            raise ValueError(f"{where}{exc.detail}") from None
        return value

    def operators(self) -> list[str]:
        """The conditions given, by their names in the file (``in``, not ``in_``)."""
        return [op for op in _OPERATORS if getattr(self, "in_" if op == "in" else op) is not None]

    def kinds(self) -> set[JsonKind] | None:
        """The JSON kinds an argument may have for every condition to hold (None = any)."""
        kinds: set[JsonKind] | None = None
        narrowing: list[set[JsonKind]] = []
        if self.eq is not None:
            narrowing.append({json_kind(self.eq)})
        if self.in_ is not None:
            narrowing.append({json_kind(v) for v in self.in_})
        if any(v is not None for v in (self.gt, self.gte, self.lt, self.lte)):
            narrowing.append({"number"})
        if self.contains is not None:
            narrowing.append({"string"})
        for allowed in narrowing:
            kinds = allowed if kinds is None else kinds & allowed
        return kinds


#: a problem under a key: (sub-key or "", message), e.g. ("eq", "null is no condition")
Problem = tuple[str, str]


def keyed(key: str, problems: Iterable[Problem]) -> list[str]:
    """``key.sub: message`` lines (``key: message`` for an empty sub-key)."""
    return [f"{key}.{sub}: {msg}" if sub else f"{key}: {msg}" for sub, msg in problems]


def comparison_problems(raw: dict[str, Any], cmp: Comparison) -> list[Problem]:
    """Why a comparison from the file can never hold, or is no condition at all: ``raw``
    is its mapping in the file (an explicit ``null`` is not in the model)."""
    if not raw:
        return [("", f"no condition (give one of {', '.join(_OPERATORS)})")]
    nulls = [op for op in _OPERATORS if op in raw and raw[op] is None]
    if nulls:
        return [(nulls[0], "null is no condition (it means unset); compare with a value")]
    problems: list[Problem] = [
        (op, f"an empty list {'matches nothing' if op == 'in' else 'excludes nothing'}")
        for op in ("in", "not_in")
        if raw.get(op) == []
    ]
    if cmp.contains == "":
        problems.append(("contains", "the empty string is in every string: no condition"))
    kinds = cmp.kinds()
    if kinds is not None and not kinds:
        ops = ", ".join(cmp.operators())
        problems.append(("", f"{ops} can never hold together (they need different types)"))
        return problems
    low = max((v for v in (cmp.gt, cmp.gte) if v is not None), default=None)
    high = min((v for v in (cmp.lt, cmp.lte) if v is not None), default=None)
    if low is not None and high is not None:
        strict = (cmp.gt is not None and cmp.gt == low) or (cmp.lt is not None and cmp.lt == high)
        if low > high or (low == high and strict):
            problems.append(("", f"no number is above {low:g} and below {high:g}: never matches"))
    if cmp.eq is not None and not matches_comparison(cmp.eq, cmp, skip_eq=True):
        problems.append(("eq", f"{cmp.eq!r} contradicts the other conditions: never matches"))
    return problems


def equal_values(a: Any, b: Any) -> bool:
    """``==`` as the policy engine compares: a bool only equals a bool."""
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def matches_comparison(value: Any, cmp: Comparison, *, skip_eq: bool = False) -> bool:
    """Would ``value`` meet every condition of ``cmp`` (as ``runtime.policy`` compares)?"""
    if not skip_eq and cmp.eq is not None and not equal_values(value, cmp.eq):
        return False
    if cmp.ne is not None and equal_values(value, cmp.ne):
        return False
    if cmp.in_ is not None and not any(equal_values(value, v) for v in cmp.in_):
        return False
    if cmp.not_in is not None and any(equal_values(value, v) for v in cmp.not_in):
        return False
    if cmp.contains is not None and not (isinstance(value, str) and cmp.contains in value):
        return False
    if all(b is None for b in (cmp.gt, cmp.gte, cmp.lt, cmp.lte)):
        return True
    return json_kind(value) == "number" and all(
        (
            cmp.gt is None or value > cmp.gt,
            cmp.gte is None or value >= cmp.gte,
            cmp.lt is None or value < cmp.lt,
            cmp.lte is None or value <= cmp.lte,
        )
    )


def _globs() -> Any:
    return Field(default=None, max_length=1000)


class RuleMatch(_Strict):
    """Globs (``fnmatch``); a missing key matches anything, an empty list nothing (the
    deployment file may not say that: see ``cross_reference_problems``)."""

    tool: list[Glob] | None = _globs()
    side_effect: list[Glob] | None = _globs()
    tenant: list[Glob] | None = _globs()
    route: list[Glob] | None = _globs()
    risk_class: list[Glob] | None = _globs()
    autonomy_level: list[Glob] | None = _globs()
    #: the sources a retrieval query names; a rule with ``source`` matches retrievals only,
    #: a rule with ``tool`` or ``args`` tool calls only
    source: list[Glob] | None = _globs()
    args: dict[str, Comparison] | None = Field(default=None, max_length=100)
    #: true: only a call that departs from the run's accepted plan; false: only one that
    #: does not (a run without a plan never deviates)
    plan_deviation: bool | None = None


class PolicyRule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_.\-]+$", max_length=100)
    effect: Literal["allow", "deny", "require_approval", "escalate"]
    reason: str | None = Field(default=None, max_length=200)
    #: the group an escalation goes to (``agentrt approvals list --owner <group>``):
    #: required for ``escalate`` (an escalation nobody owns waits for no one), refused
    #: for other effects
    owner: str | None = Field(default=None, pattern=r"^[a-z0-9_.\-]+$", max_length=100)
    match: RuleMatch = RuleMatch()

    @model_validator(mode="after")
    def _owner_for_escalations(self) -> PolicyRule:
        if self.effect == "escalate" and self.owner is None:
            raise ValueError("an escalate rule needs 'owner': the group that decides it")
        if self.effect != "escalate" and self.owner is not None:
            raise ValueError(f"'owner' is for escalate rules only (this one is {self.effect})")
        return self


class PolicyConfig(_Strict):
    version: Version
    default: Literal["allow", "deny"] = "allow"
    rules: list[PolicyRule] = Field(default_factory=list, max_length=10_000)


#: a schedule's name, also part of its runs' request ids (``schedule:<name>@<time>``)
ScheduleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]


class ScheduleConfig(_Strict):
    """A run submitted at every time a cron expression names (README "Scheduled runs")."""

    #: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first)
    cron: str = Field(min_length=1, max_length=200)
    tenant: str = Field(min_length=1, max_length=100)
    route: str = Field(min_length=1, max_length=100)
    goal: str = Field(min_length=1, max_length=8000)
    input: dict[str, Any] = Field(default_factory=dict)
    #: the IANA zone the cron expression's times are in
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    enabled: bool = True
    #: a firing this late (beat was down, the message waited) is skipped; the latest
    #: missed time within it fires once
    misfire_grace_s: float = Field(default=300.0, ge=1, le=7 * DAY_S)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        problem = cron_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        problem = zone_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("goal")
    @classmethod
    def _goal(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("goal must not be blank")
        return value

    @field_validator("input")
    @classmethod
    def _input(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            check_json(value, label="input")
        except BoundsError as exc:
            raise ValueError(f"{exc.path or 'input'}: {exc.detail}") from None
        return value


#: the SLOs ``agentrt slo report`` knows (``runtime.slo`` measures each)
SloKind = Literal[
    "trace_coverage_high_risk",
    "decision_coverage_side_effects",
    "approval_latency_p95",
    "cost_per_completed_run",
    "eval_gate_health",
    "stop_reason_completeness",
]
SLO_KINDS: tuple[str, ...] = typing.get_args(SloKind)
#: the target (percent) of each kind when the file does not give one
SLO_DEFAULT_TARGETS: dict[str, float] = {
    "trace_coverage_high_risk": 100.0,
    "decision_coverage_side_effects": 100.0,
    "approval_latency_p95": 95.0,
    "cost_per_completed_run": 100.0,
    "eval_gate_health": 100.0,
    "stop_reason_completeness": 100.0,
}
#: a cost SLO's target is a percent of the route's per-run cost budget, and may allow more
MAX_COST_TARGET = 10_000.0


class SloConfig(_Strict):
    """One runtime SLO (``slos.<name>``). ``kind`` defaults to the name. Every target is a
    percent: of runs or records that meet the objective (at least the target), except
    ``cost_per_completed_run``: cost per completed run as a percent of the route's
    per-run cost budget (at most the target)."""

    kind: SloKind | None = None
    target: float | None = Field(default=None, ge=0, le=MAX_COST_TARGET)
    owner: str = Field(default="unassigned", min_length=1, max_length=200)
    #: only these routes (globs; unset: every route)
    routes: list[Glob] | None = Field(default=None, min_length=1, max_length=1000)


class DeadLetterConfig(_Strict):
    #: days a retried or purged entry is kept; open entries stay until purged
    retention_days: float = Field(default=30.0, gt=0, le=3650)
    #: bulk retries are sent at most this fast
    retry_rate_per_s: float = Field(default=20.0, ge=0.01, le=10_000)


class RuntimeConfig(_Strict):
    #: release of this file; part of the harness version
    version: Version
    harness_version: Version = "agentrt-0.1"
    tool_modules: list[ModuleName] = Field(default_factory=list, max_length=100)
    #: modules whose ``retrievers(ctx)`` return retrievers sources may name (besides the
    #: built-in ``documents``; ``runtime.retrieval.registry``)
    retriever_modules: list[ModuleName] = Field(default_factory=list, max_length=100)
    models: dict[str, ModelConfig]
    tenants: dict[str, TenantConfig]
    budget_policies: dict[str, BudgetPolicy]
    routes: dict[str, RouteConfig]
    tools: dict[str, ToolManifestEntry] = Field(default_factory=dict)
    policy: PolicyConfig
    scheduling: SchedulingConfig = SchedulingConfig()
    retry_policies: dict[str, RetryPolicy] = Field(default_factory=dict)
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    #: runs submitted on a cron schedule (``agentrt beat``)
    schedules: dict[ScheduleName, ScheduleConfig] = Field(default_factory=dict, max_length=1000)
    #: webhook sources that start runs (``runtime.event_config``)
    event_sources: dict[str, EventSourceConfig] = Field(default_factory=dict, max_length=1000)
    #: where eval fixtures go and which ended runs become fixtures (``runtime.eval_config``)
    evals: EvalsConfig | None = None
    #: named policy sets a release may name (``policy`` stays the default set)
    policies: dict[str, PolicyConfig] = Field(default_factory=dict, max_length=100)
    #: named version sets routes run under (``runtime.releases``)
    releases: dict[str, ReleaseConfig] = Field(default_factory=dict, max_length=1000)
    #: runtime SLOs (``agentrt slo report``); unset: every kind with its default target
    slos: dict[ScheduleName, SloConfig] | None = Field(default=None, max_length=100)
    #: searchable sources a route's ``sources`` may name (README "Retrieval and evidence")
    sources: dict[SourceName, SourceConfig] = Field(default_factory=dict, max_length=1000)
    #: what the runtime knows of the actors runs name (their access labels)
    actors: dict[ActorName, ActorConfig] = Field(default_factory=dict, max_length=100_000)

    @model_validator(mode="wrap")
    @classmethod
    def _cross_references(
        cls, data: Any, handler: ModelWrapValidatorHandler[RuntimeConfig]
    ) -> RuntimeConfig:
        config = handler(data)
        # on what the file says (an explicit null, an empty list), not on the model
        raw = data if isinstance(data, dict) else config.model_dump(by_alias=True)
        problems = cross_reference_problems(raw)
        if problems:
            raise ValueError("\n".join(problems))
        return config

    def slo_list(self) -> list[tuple[str, SloKind, float, SloConfig]]:
        """Every SLO as (name, kind, target, entry): the file's, or when it has no
        ``slos`` section, each kind with its default target and owner ``unassigned``."""
        entries = self.slos if self.slos is not None else {k: SloConfig() for k in SLO_KINDS}
        listed: list[tuple[str, SloKind, float, SloConfig]] = []
        for name, entry in entries.items():
            kind = entry.kind or typing.cast(SloKind, name)
            target = entry.target if entry.target is not None else SLO_DEFAULT_TARGETS[kind]
            listed.append((name, kind, target, entry))
        return listed

    def max_step_timeout_s(self) -> float:
        return max((r.step_timeout_s for r in self.routes.values()), default=60.0)

    def hard_limit_s(self, route: str) -> float:
        """When a task that began with a step of ``route`` is killed: the step's timeout,
        the grace and the chain window (a step chained into the task has at least its own
        timeout and grace left, see ``chain_fits``)."""
        sched = self.scheduling
        return self.routes[route].step_timeout_s + sched.hard_limit_grace_s + sched.chain_window_s

    def soft_limit_s(self, route: str) -> float:
        """When such a task is told to stop (``SoftTimeLimitExceeded``): half way through
        the grace."""
        return self.hard_limit_s(route) - self.scheduling.hard_limit_grace_s / 2

    def max_hard_limit_s(self) -> float:
        return max((self.hard_limit_s(name) for name in self.routes), default=60.0)

    def chain_fits(self, first_route: str, next_route: str, elapsed_s: float) -> bool:
        """May a step of ``next_route`` run in a task that began with a step of
        ``first_route`` ``elapsed_s`` ago? Its limits are the task's: they must leave it
        at least its own timeout and grace (the task's limits end no sooner than its own
        would have) and at most that plus the window (its slot and run leases, sized by
        ``hard_limit_s``, still cover it)."""
        window = self.scheduling.chain_window_s
        if window <= 0 or next_route not in self.routes or first_route not in self.routes:
            return False
        slack = self.routes[first_route].step_timeout_s - self.routes[next_route].step_timeout_s
        return slack <= elapsed_s <= slack + window

    def lease_ttl_s(self) -> float:
        """A run's step lease: outlives the longest possible step."""
        return self.max_hard_limit_s() + self.scheduling.lease_margin_s


_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
#: what each key of a rule's ``match`` names, and where those names are defined
_RULE_VOCABULARY: dict[str, tuple[str, str]] = {
    "tool": ("tool declared under 'tools'", "tools"),
    "tenant": ("tenant", "tenants"),
    "route": ("route", "routes"),
    "side_effect": ("side-effect class", ""),
    "risk_class": ("risk class", ""),
    "autonomy_level": ("autonomy level", ""),
    "source": ("source declared under 'sources'", "sources"),
}
_CLASSES: dict[str, tuple[str, ...]] = {
    "side_effect": typing.get_args(SideEffectClass),
    "risk_class": typing.get_args(RiskClass),
    "autonomy_level": typing.get_args(AutonomyLevel),
}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _listed(names: Iterable[str], limit: int = 20) -> str:
    ordered = sorted(names)
    more = f", ... ({len(ordered) - limit} more)" if len(ordered) > limit else ""
    return (", ".join(ordered[:limit]) + more) or "none"


def globs_match(patterns: list[str] | None, name: str) -> bool:
    """A rule's glob list against one name, as ``runtime.policy`` matches (None = any)."""
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def cross_reference_problems(data: dict[str, Any]) -> list[str]:
    """Names that point nowhere. Works on the raw mapping too, so a file with field errors
    still gets its broken references reported in the same pass."""
    tools, retries = _mapping(data.get("tools")), _mapping(data.get("retry_policies"))
    problems: list[str] = []
    for name, tool in tools.items():
        retry = _mapping(tool).get("retry_policy")
        if isinstance(retry, str) and retry not in retries:
            problems.append(f"tools.{name}.retry_policy: unknown retry policy {retry!r}")
        fallback = _mapping(tool).get("fallback")
        if isinstance(fallback, str) and (fallback not in tools or fallback == name):
            problems.append(
                f"tools.{name}.fallback: {fallback!r} must name another declared tool "
                f"(declared: {_listed(tools)})"
            )
    for section in ("tenants", "routes", "releases", "policies"):
        for name in _mapping(data.get(section)):
            if not isinstance(name, str) or not _NAME.match(name):
                problems.append(
                    f"{section}.{name}: names may use letters, digits, '_', '.' and '-' only"
                )
    for name, route in _mapping(data.get("routes")).items():
        problems += _route_problems(f"routes.{name}", _mapping(route), data)
    for name, schedule in _mapping(data.get("schedules")).items():
        problems += _schedule_problems(f"schedules.{name}", _mapping(schedule), data)
    problems += _policy_problems("policy", _mapping(data.get("policy")), data)
    for name, policy_set in _mapping(data.get("policies")).items():
        problems += _policy_problems(f"policies.{name}", _mapping(policy_set), data)
    for name, release in _mapping(data.get("releases")).items():
        problems += _release_problems(f"releases.{name}", _mapping(release), data)
    for name, slo in _mapping(data.get("slos")).items():
        problems += _slo_problems(f"slos.{name}", name, _mapping(slo), data)
    for name, source in _mapping(data.get("sources")).items():
        problems += _source_problems(f"sources.{name}", _mapping(source), data)
    return problems + event_source_problems(data)


def _policy_problems(key: str, policy: dict[str, Any], data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    rules = policy.get("rules") or []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        rule_id = _mapping(rule).get("id")
        if rule_id in seen:
            problems.append(f"{key}.rules.{i}.id: duplicate rule id {rule_id!r}")
        if isinstance(rule_id, str):
            seen.add(rule_id)
        problems += _rule_reference_problems(f"{key}.rules.{i}.match", rule, data)
    return problems


def _release_problems(key: str, release: dict[str, Any], data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for field, section, what in (
        ("model", "models", "model"),
        ("policy", "policies", "policy set"),
        ("budget_policy", "budget_policies", "budget policy"),
    ):
        value, known = release.get(field), _mapping(data.get(section))
        if isinstance(value, str) and value not in known:
            problems.append(f"{key}.{field}: unknown {what} {value!r} (defined: {_listed(known)})")
    return problems


def _route_release_problems(key: str, route: dict[str, Any], data: dict[str, Any]) -> list[str]:
    releases, tenants = _mapping(data.get("releases")), _mapping(data.get("tenants"))
    problems: list[str] = []
    release, canary = route.get("release"), _mapping(route.get("canary"))
    if isinstance(release, str) and release not in releases:
        problems.append(
            f"{key}.release: unknown release {release!r} (defined: {_listed(releases)})"
        )
    named = canary.get("release")
    if isinstance(named, str) and named not in releases:
        problems.append(
            f"{key}.canary.release: unknown release {named!r} (defined: {_listed(releases)})"
        )
    if canary and release is None:
        problems.append(f"{key}.canary: a canary needs the route's own 'release'")
    elif isinstance(named, str) and named == release:
        problems.append(f"{key}.canary.release: {named!r} is already the route's release")
    for tenant in _list(canary.get("tenants")):
        if isinstance(tenant, str) and tenant not in tenants:
            problems.append(f"{key}.canary.tenants: unknown tenant {tenant!r}")
    for field in ("release_assignment", "release_upgrade"):
        if route.get(field) is not None and release is None:
            problems.append(f"{key}.{field}: only for a route with a 'release'")
    return problems


def _slo_problems(key: str, name: Any, slo: dict[str, Any], data: dict[str, Any]) -> list[str]:
    kind = slo.get("kind", name)
    problems: list[str] = []
    if "kind" not in slo and name not in SLO_KINDS:
        problems.append(
            f"{key}.kind: the name is no SLO kind, so give 'kind' (one of: {_listed(SLO_KINDS)})"
        )
    target = slo.get("target")
    if (
        kind in SLO_KINDS
        and kind != "cost_per_completed_run"
        and isinstance(target, int | float)
        and not isinstance(target, bool)
        and target > 100
    ):
        problems.append(f"{key}.target: a percent of {kind}, at most 100")
    routes = [n for n in _mapping(data.get("routes")) if isinstance(n, str)]
    for pattern in _list(slo.get("routes")):
        if isinstance(pattern, str) and not any(fnmatch.fnmatchcase(n, pattern) for n in routes):
            problems.append(
                f"{key}.routes: {pattern!r} matches no route (defined: {_listed(routes)})"
            )
    return problems


def _route_problems(key: str, route: dict[str, Any], data: dict[str, Any]) -> list[str]:
    models, policies = _mapping(data.get("models")), _mapping(data.get("budget_policies"))
    tools, tenants = _mapping(data.get("tools")), _mapping(data.get("tenants"))
    problems: list[str] = []
    proposer, policy = route.get("proposer"), route.get("budget_policy")
    if isinstance(proposer, str) and proposer not in models:
        problems.append(f"{key}.proposer: unknown model {proposer!r} (defined: {_listed(models)})")
    if isinstance(policy, str) and policy not in policies:
        problems.append(
            f"{key}.budget_policy: unknown budget policy {policy!r} (defined: {_listed(policies)})"
        )
    retry = route.get("retry_policy")
    if isinstance(retry, str) and retry not in _mapping(data.get("retry_policies")):
        problems.append(f"{key}.retry_policy: unknown retry policy {retry!r}")
    for fallback in _list(route.get("fallback_proposers")):
        if isinstance(fallback, str) and fallback not in models:
            problems.append(f"{key}.fallback_proposers: unknown model {fallback!r}")
    for tool in _list(route.get("allowed_tools")):
        if isinstance(tool, str) and tool not in tools:
            problems.append(f"{key}.allowed_tools: tool {tool!r} is not declared under 'tools'")
    for target in _list(route.get("delegates_to")):
        if isinstance(target, str) and target not in _mapping(data.get("routes")):
            problems.append(f"{key}.delegates_to: unknown route {target!r}")
    for tenant in _list(route.get("tenants")):
        if isinstance(tenant, str) and tenant != "*" and tenant not in tenants:
            problems.append(f"{key}.tenants: unknown tenant {tenant!r}")
    sources = _mapping(data.get("sources"))
    for source in _list(route.get("sources")):
        if isinstance(source, str) and source not in sources:
            problems.append(
                f"{key}.sources: source {source!r} is not declared under 'sources' "
                f"(declared: {_listed(sources)})"
            )
    problems += _plan_problems(key, route, models)
    return problems + _route_release_problems(key, route, data)


def _plan_problems(key: str, route: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """A route that needs a plan before any tool call, whose model is never offered one,
    would refuse every call its model makes: a setting that can only fail."""
    if route.get("plan_required") is not True or "plan" in _list(route.get("proposal_kinds")):
        return []
    proposer = route.get("proposer")
    model = _mapping(models.get(proposer)) if isinstance(proposer, str) else {}
    if model.get("kind") != "openai":
        return []  # a scripted run proposes its plan itself
    return [
        f"{key}.plan_required: its model {proposer!r} is never offered a plan "
        "(add 'plan' to proposal_kinds)"
    ]


def _source_problems(key: str, source: dict[str, Any], data: dict[str, Any]) -> list[str]:
    tenants = _mapping(data.get("tenants"))
    return [
        f"{key}.tenants: unknown tenant {tenant!r}"
        for tenant in _list(source.get("tenants"))
        if isinstance(tenant, str) and tenant != "*" and tenant not in tenants
    ]


def _schedule_problems(key: str, schedule: dict[str, Any], data: dict[str, Any]) -> list[str]:
    tenants, routes = _mapping(data.get("tenants")), _mapping(data.get("routes"))
    tenant, route = schedule.get("tenant"), schedule.get("route")
    problems: list[str] = []
    if isinstance(tenant, str) and tenant not in tenants:
        problems.append(f"{key}.tenant: unknown tenant {tenant!r} (defined: {_listed(tenants)})")
    if isinstance(route, str) and route not in routes:
        problems.append(f"{key}.route: unknown route {route!r} (defined: {_listed(routes)})")
    elif isinstance(route, str) and isinstance(tenant, str) and tenant in tenants:
        scope = _list(_mapping(routes[route]).get("tenants", ["*"]))
        if "*" not in scope and tenant not in scope:
            problems.append(f"{key}.tenant: tenant {tenant!r} may not use route {route!r}")
    return problems


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _rule_reference_problems(key: str, rule: Any, data: dict[str, Any]) -> list[str]:
    """Every glob of a rule's ``match`` must match something that exists, and every
    argument condition must be able to hold: a rule naming a tool, tenant, route or class
    that does not exist, or comparing in a way nothing can meet, never matches, silently.
    (Arguments against the tools' input models: ``runtime.rule_check``.)"""
    match = _mapping(_mapping(rule).get("match"))
    problems: list[str] = []
    tool_keys = [k for k in ("tool", "side_effect", "args") if match.get(k) is not None]
    if match.get("source") is not None and tool_keys:
        problems.append(
            f"{key}.source: a rule with 'source' matches searches, one with "
            f"{', '.join(repr(k) for k in tool_keys)} tool calls: together it never matches"
        )
    for field, (what, section) in _RULE_VOCABULARY.items():
        names = [n for n in _mapping(data.get(section)) if isinstance(n, str)]
        known = names if section else list(_CLASSES[field])
        matchable = list(known)
        if field == "tool":
            # synthetic tools: a memory write is decided as ``memory:<namespace>``
            # (runtime.step.memory), a delegation as ``delegate:<route>`` (runtime.step.delegation)
            routes = [r for r in _mapping(data.get("routes")) if isinstance(r, str)]
            matchable += _memory_tools(data) + [f"delegate:{r}" for r in routes]
        if match.get(field) == []:
            problems.append(f"{key}.{field}: an empty list matches nothing (leave it out)")
        for pattern in _list(match.get(field)):
            if isinstance(pattern, str) and not any(
                fnmatch.fnmatchcase(n, pattern) for n in matchable
            ):
                listing = "defined" if section else "one of"
                problems.append(
                    f"{key}.{field}: {pattern!r} matches no {what} ({listing}: {_listed(known)})"
                )
    for name, raw in _mapping(match.get("args")).items():
        if not isinstance(raw, dict):
            continue
        try:
            cmp = Comparison.model_validate(raw)
        except ValidationError:
            continue  # the file's validation names these
        problems += keyed(f"{key}.args.{name}", comparison_problems(raw, cmp))
    return problems


def _memory_tools(data: dict[str, Any]) -> list[str]:
    """``memory:<namespace>`` of every namespace a route's memory rules allow."""
    found: list[str] = []
    for route in _mapping(data.get("routes")).values():
        for ns in _list(_mapping(_mapping(route).get("memory")).get("namespaces")):
            if isinstance(ns, str) and f"memory:{ns}" not in found:
                found.append(f"memory:{ns}")
    return found


def _format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        if err["type"] == "value_error" and "\n" in msg and not loc:
            problems.extend(msg.split("\n"))
            continue
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems


def parse_config(data: Any, source: str = "<config>") -> RuntimeConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, ["the file must be a YAML mapping at the top level"])
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_validation_error(exc)
        # field errors stop validation before the cross-reference check: run it on the raw
        # file so one `config check` reports every problem
        problems += [p for p in cross_reference_problems(data) if p not in problems]
        raise ConfigError(source, problems) from None


def load_config(path: Path | str) -> RuntimeConfig:
    """Read, parse and validate the deployment file (``runtime.config_loader`` refuses
    duplicate keys, aliases and the like). The checks that need the tool modules follow in
    ``runtime.wiring.load_registry``: start-up and ``agentrt config check`` call both."""
    path = Path(path)
    return parse_config(read_yaml(path), str(path))


def config_document(config: RuntimeConfig) -> dict[str, Any]:
    """The validated config as JSON (what ``config apply`` stores and processes load)."""
    # None is "unset" in the file (a rule refuses an explicit null): left out, it reads back
    # as the same default
    document: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    for section in ("event_sources", "policies", "releases"):
        if not document.get(section):
            # a file without the section keeps the digest it had before the section existed
            document.pop(section, None)
    return document


def config_digest(config: RuntimeConfig) -> str:
    """SHA-256 of the validated config as canonical JSON: two files that mean the same
    deployment (defaults spelled out or not, keys in another order) have one digest."""
    raw = json.dumps(config_document(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()
