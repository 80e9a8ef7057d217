"""The deployment file (``config/runtime.yaml``): tenants, routes, tools, budgets, policy.

Validated at start-up; every problem names its key, e.g.
``routes.support.triage.max_steps: Input should be greater than 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.contract import AutonomyLevel, ExecutionMode, PriorityClass, RiskClass
from runtime.errors import ConfigError

#: ledger dimensions and their integer units
DIMENSIONS: tuple[str, ...] = (
    "tokens",
    "model_calls",
    "tool_calls",
    "retries",
    "wall_clock_ms",
    "cost_micro_usd",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetLimits(_Strict):
    """Limits per dimension; a missing dimension is unlimited."""

    tokens: int | None = Field(default=None, ge=0)
    model_calls: int | None = Field(default=None, ge=0)
    tool_calls: int | None = Field(default=None, ge=0)
    retries: int | None = Field(default=None, ge=0)
    wall_clock_s: float | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)

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
        }


class BudgetPolicy(_Strict):
    version: str
    per_run: BudgetLimits = BudgetLimits()
    #: worst case reserved for one model call; also the proposer's max output tokens
    tokens_per_step: int = Field(default=4000, gt=0)


class RateLimit(_Strict):
    """GCRA: ``limit`` per ``period_s``, spaced evenly; ``burst`` may pass at once."""

    limit: int = Field(gt=0)
    period_s: float = Field(default=60.0, gt=0)
    burst: int = Field(default=1, ge=1)


class RetryPolicy(_Strict):
    """How a failed tool or model call is tried again before it is dead-lettered."""

    #: calls in all, the first included (1 = never retry)
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: delay before the second attempt; doubled each time, capped by backoff_max_s
    backoff_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    #: +/- this fraction of random jitter on every delay
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: error codes that are never retried (the tool's ToolExecutionError code, or
    #: tool_timeout, invalid_output, model_error, model_bad_reply, ...)
    non_retryable: list[str] = Field(default_factory=list)


class Breaker(_Strict):
    """A circuit breaker shared by every worker: ``failures`` in ``window_s`` open it for
    ``open_s``; then one probe call decides whether it closes."""

    failures: int = Field(default=5, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    open_s: float = Field(default=30.0, gt=0)


class TenantConfig(_Strict):
    name: str | None = None
    #: share of dispatch decisions relative to other tenants (weighted fair queuing)
    weight: int = Field(default=1, ge=1, le=1000)
    daily_budget: BudgetLimits = BudgetLimits()
    #: steps of this tenant executing at once, across routes (None = no cap)
    max_concurrency: int | None = Field(default=None, gt=0)
    #: queued steps of this tenant before admission pushes back (None = no limit)
    max_queued: int | None = Field(default=None, gt=0)
    enabled: bool = True


class ModelConfig(_Strict):
    kind: Literal["scripted", "openai"]
    #: the model version recorded on every run (the version set's ``model``)
    version: str
    #: provider model name (openai kind)
    model: str | None = None
    base_url: str | None = None
    #: name of the environment variable holding the API key (never the key itself)
    api_key_env: str | None = None
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    temperature: float | None = None
    #: global (all workers) limits on calls to this model
    requests_rate: RateLimit | None = None
    tokens_rate: RateLimit | None = None
    breaker: Breaker | None = None

    @model_validator(mode="after")
    def _openai_needs_model(self) -> ModelConfig:
        if self.kind == "openai" and not self.model:
            raise ValueError("kind 'openai' needs 'model' (the provider's model name)")
        return self


class RouteConfig(_Strict):
    task_class: str
    risk_class: RiskClass
    autonomy_level: AutonomyLevel
    execution_mode: ExecutionMode = "async_job"
    #: a key of ``models``
    proposer: str
    prompt_version: str = "v1"
    retriever_version: str | None = None
    system_prompt: str = "You are a careful assistant. Use the tools you are given."
    allowed_tools: list[str] = Field(default_factory=list)
    #: a key of ``budget_policies``
    budget_policy: str
    daily_budget: BudgetLimits = BudgetLimits()
    max_steps: int = Field(default=10, gt=0, le=1000)
    concurrency_limit: int = Field(default=10, gt=0)
    priority: PriorityClass = "normal"
    #: tenants allowed on this route; ["*"] = all
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    step_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    run_timeout_s: float = Field(default=3600.0, gt=0)
    max_input_bytes: int = Field(default=64 * 1024, gt=0)
    #: invalid proposals fed back to the model before the run is refused
    max_invalid_proposals: int = Field(default=0, ge=0)
    #: failed tool calls fed back to the model before the run fails
    max_tool_errors: int = Field(default=0, ge=0)
    #: times a step waits for a busy lock before the run fails with failed:lock_timeout
    lock_wait_attempts: int = Field(default=20, ge=0)
    #: queued steps of this route before admission pushes back (None = no limit)
    max_queued: int | None = Field(default=None, gt=0)
    #: over max_queued: "refuse" (refused:queue_full + retry-after) or "queue" (with an ETA)
    on_queue_full: Literal["refuse", "queue"] = "refuse"
    #: a key of ``retry_policies`` for the route's model calls and tools without their own
    retry_policy: str | None = None
    #: models to ask, in order, while the proposer's circuit breaker is open
    fallback_proposers: list[str] = Field(default_factory=list)
    #: undo succeeded side effects (newest first) when a run fails or is dead-lettered
    compensate_on_failure: bool = False
    enabled: bool = True


class ToolManifestEntry(_Strict):
    version: str = "1"
    timeout_s: float | None = Field(default=None, gt=0)
    cost_usd: float = Field(default=0.0, ge=0)
    #: bulkhead: calls of this tool executing at once, across workers (None = no limit)
    max_concurrency: int | None = Field(default=None, gt=0)
    #: global rate limit on calls of this tool
    rate_limit: RateLimit | None = None
    #: a key of ``retry_policies``; without one, the route's policy applies
    retry_policy: str | None = None
    breaker: Breaker | None = None
    enabled: bool = True


def _priority_map(default: dict[str, float]) -> Any:
    return Field(default_factory=lambda: dict(default))


class SchedulingConfig(_Strict):
    #: within a tenant, a step's place is its enqueue time plus this offset: ageing
    priority_offsets_s: dict[str, float] = _priority_map(
        {"critical": 0.0, "high": 5.0, "normal": 20.0, "low": 60.0}
    )
    #: across tenants, a step waiting longer than this is dispatched first
    max_wait_s: dict[str, float] = _priority_map(
        {"critical": 5.0, "high": 30.0, "normal": 60.0, "low": 120.0}
    )
    #: items of a tenant examined when its first ones wait for a full route
    lookahead: int = Field(default=8, ge=1, le=128)
    #: steps dispatched beyond live worker processes, as a fraction of them
    dispatch_headroom: float = Field(default=1.0, ge=0, le=10)
    #: a step is killed this long after its route's step_timeout_s (Celery hard limit);
    #: its soft limit is half way
    hard_limit_grace_s: float = Field(default=20.0, gt=0, le=600)
    #: leases (a run's step lease, a step's slots) outlive the hard limit by this much
    lease_margin_s: float = Field(default=15.0, gt=0, le=600)
    #: a dispatched step may wait this long in Celery before its slots count as lost
    queue_allowance_s: float = Field(default=60.0, gt=0, le=3600)

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
            if any(v < 0 for v in value.values()):
                raise ValueError(f"{name} values must be >= 0")
        return self


class Comparison(_Strict):
    eq: Any = None
    ne: Any = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    contains: str | None = None


class RuleMatch(_Strict):
    tool: list[str] | None = None
    side_effect: list[str] | None = None
    tenant: list[str] | None = None
    route: list[str] | None = None
    risk_class: list[str] | None = None
    autonomy_level: list[str] | None = None
    args: dict[str, Comparison] | None = None


class PolicyRule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_.\-]+$")
    effect: Literal["allow", "deny", "require_approval", "escalate"]
    reason: str | None = None
    match: RuleMatch = RuleMatch()


class PolicyConfig(_Strict):
    version: str
    default: Literal["allow", "deny"] = "allow"
    rules: list[PolicyRule] = Field(default_factory=list)


class DeadLetterConfig(_Strict):
    #: days a retried or purged entry is kept; open entries stay until purged
    retention_days: float = Field(default=30.0, gt=0)
    #: bulk retries are sent at most this fast
    retry_rate_per_s: float = Field(default=20.0, gt=0)


class RuntimeConfig(_Strict):
    #: release of this file; part of the harness version
    version: str
    harness_version: str = "agentrt-0.1"
    tool_modules: list[str] = Field(default_factory=list)
    models: dict[str, ModelConfig]
    tenants: dict[str, TenantConfig]
    budget_policies: dict[str, BudgetPolicy]
    routes: dict[str, RouteConfig]
    tools: dict[str, ToolManifestEntry] = Field(default_factory=dict)
    policy: PolicyConfig
    scheduling: SchedulingConfig = SchedulingConfig()
    retry_policies: dict[str, RetryPolicy] = Field(default_factory=dict)
    dead_letters: DeadLetterConfig = DeadLetterConfig()

    @model_validator(mode="after")
    def _cross_references(self) -> RuntimeConfig:
        problems = cross_reference_problems(self.model_dump(by_alias=True))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def max_step_timeout_s(self) -> float:
        return max((r.step_timeout_s for r in self.routes.values()), default=60.0)

    def hard_limit_s(self, route: str) -> float:
        """When a step of ``route`` is killed: its timeout plus the grace."""
        return self.routes[route].step_timeout_s + self.scheduling.hard_limit_grace_s

    def max_hard_limit_s(self) -> float:
        return self.max_step_timeout_s() + self.scheduling.hard_limit_grace_s

    def lease_ttl_s(self) -> float:
        """A run's step lease: outlives the longest possible step."""
        return self.max_hard_limit_s() + self.scheduling.lease_margin_s


_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def cross_reference_problems(data: dict[str, Any]) -> list[str]:
    """Names that point nowhere. Works on the raw mapping too, so a file with field errors
    still gets its broken references reported in the same pass."""
    models, policies = _mapping(data.get("models")), _mapping(data.get("budget_policies"))
    tools, tenants = _mapping(data.get("tools")), _mapping(data.get("tenants"))
    retries = _mapping(data.get("retry_policies"))
    problems: list[str] = []
    for name, tool in tools.items():
        retry = _mapping(tool).get("retry_policy")
        if isinstance(retry, str) and retry not in retries:
            problems.append(f"tools.{name}.retry_policy: unknown retry policy {retry!r}")
    for section in ("tenants", "routes"):
        for name in _mapping(data.get(section)):
            if not isinstance(name, str) or not _NAME.match(name):
                problems.append(
                    f"{section}.{name}: names may use letters, digits, '_', '.' and '-' only"
                )
    for name, route in _mapping(data.get("routes")).items():
        route = _mapping(route)
        proposer, policy = route.get("proposer"), route.get("budget_policy")
        if isinstance(proposer, str) and proposer not in models:
            problems.append(
                f"routes.{name}.proposer: unknown model {proposer!r} "
                f"(defined: {', '.join(sorted(models)) or 'none'})"
            )
        if isinstance(policy, str) and policy not in policies:
            problems.append(
                f"routes.{name}.budget_policy: unknown budget policy {policy!r} "
                f"(defined: {', '.join(sorted(policies)) or 'none'})"
            )
        retry = route.get("retry_policy")
        if isinstance(retry, str) and retry not in retries:
            problems.append(f"routes.{name}.retry_policy: unknown retry policy {retry!r}")
        for fallback in route.get("fallback_proposers") or []:
            if isinstance(fallback, str) and fallback not in models:
                problems.append(f"routes.{name}.fallback_proposers: unknown model {fallback!r}")
        for tool in route.get("allowed_tools") or []:
            if isinstance(tool, str) and tool not in tools:
                problems.append(
                    f"routes.{name}.allowed_tools: tool {tool!r} is not declared under 'tools'"
                )
        for tenant in route.get("tenants") or []:
            if isinstance(tenant, str) and tenant != "*" and tenant not in tenants:
                problems.append(f"routes.{name}.tenants: unknown tenant {tenant!r}")
    seen: set[str] = set()
    rules = _mapping(data.get("policy")).get("rules") or []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        rule_id = _mapping(rule).get("id")
        if rule_id in seen:
            problems.append(f"policy.rules.{i}.id: duplicate rule id {rule_id!r}")
        if isinstance(rule_id, str):
            seen.add(rule_id)
    return problems


def _format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        if err["type"] == "value_error" and "; " in msg and not loc:
            problems.extend(msg.split("; "))
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
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), ["file not found (set AGENTRT_CONFIG to its path)"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}YAML syntax error: {problem}"]) from None
    return parse_config(data, str(path))
