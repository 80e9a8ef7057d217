"""The composition root: every entry point (tasks, CLI, web apps) calls ``RuntimeService``.

``Runtime.from_env()`` is the Python API for web apps::

    from runtime import Runtime
    rt = Runtime.from_env()
    run = rt.submit(tenant="acme", route="support.triage", goal="...", input={...},
                    actor="user:42", request_id=request.headers["X-Request-Id"])
    rt.wait(run.run_id, timeout=30)
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import redis

from runtime import admission, deployment, proposals, proposers, stop_reasons
from runtime.budgets.ledger import BudgetLedger
from runtime.compensation import Compensations
from runtime.config import RetryPolicy, RuntimeConfig, config_digest, load_config
from runtime.contract import TERMINAL_STATUSES, RunStatus, RunView, TraceEvent, VersionSet
from runtime.dead_letters import DeadLetters
from runtime.embedded_redis import EmbeddedRedis, ensure_embedded
from runtime.errors import (
    AdmissionRefused,
    ConfigError,
    InvalidRequest,
    SettingsError,
)
from runtime.errors import WaitTimeout as WaitTimeout
from runtime.keys import Keys
from runtime.locks.leases import LeaseManager
from runtime.policy import PolicyEngine
from runtime.proposers.base import Proposer, ToolDescription
from runtime.recovery import Recovery
from runtime.rule_check import rule_tool_problems
from runtime.run_rows import trace_fields
from runtime.run_views import run_view
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter
from runtime.scheduling.scheduler import Item, Ops, Outcome, Scheduler
from runtime.settings import Settings
from runtime.state import KnownGeneration, StateMarkers
from runtime.step.build import build_runner
from runtime.step.state import StepResult
from runtime.store.db import default_sqlite_url, make_engine, utcnow
from runtime.store.deployment import DeploymentStore
from runtime.store.runs import RunStore
from runtime.tools.registry import ToolRegistry, ToolSpec
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.service")

WAIT_STATUSES = TERMINAL_STATUSES | {RunStatus.WAITING}
#: most runs one ``list_runs`` call returns
MAX_LIST_LIMIT = 10_000
#: a cancel's actor goes into the stop reason (``cancelled:<actor>``, 200 characters)
MAX_CANCEL_ACTOR_CHARS = 190
#: a worker that has not reported for this long no longer counts as capacity
HEARTBEAT_TTL_MS = 6000


class StepPublisher(Protocol):
    """Hands a dispatched step to the workers. ``tasks.publish.CeleryPublisher`` is the
    default; only steps the scheduler dispatched are published."""

    def publish(self, item: Item) -> None: ...


@dataclass
class Endpoints:
    redis_url: str
    broker_url: str
    database_url: str
    embedded_redis: EmbeddedRedis | None = None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Fill in what the environment left unset: an embedded Redis, SQLite under ``home``."""
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = ensure_embedded(settings.home)
        redis_url = embedded.url
    database_url = settings.database_url or default_sqlite_url(settings.home)
    return Endpoints(redis_url, settings.broker_url or redis_url, database_url, embedded)


def check_redis_policy(client: redis.Redis, allow_evicting: bool) -> None:
    """The ledger and leases must never be evicted: refuse a Redis that may evict keys."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
    except redis.ResponseError as exc:
        if allow_evicting:
            return
        raise SettingsError(
            "cannot read maxmemory-policy of the ledger Redis (CONFIG is disabled?): "
            f"{exc}. Make sure it is 'noeviction' and set AGENTRT_ALLOW_EVICTING_REDIS=1"
        ) from exc
    if policy != "noeviction" and not allow_evicting:
        raise SettingsError(
            f"the ledger Redis has maxmemory-policy={policy!r}; budgets, leases and locks "
            "would silently vanish under memory pressure. Run it with "
            "'maxmemory-policy noeviction' (CONFIG SET maxmemory-policy noeviction)"
        )


class RuntimeService:
    def __init__(
        self,
        settings: Settings,
        config: RuntimeConfig,
        *,
        endpoints: Endpoints,
        registry: ToolRegistry,
        publisher: StepPublisher | None = None,
        publisher_factory: Callable[[RuntimeService], StepPublisher] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.endpoints = endpoints
        self.registry = registry
        self.keys = Keys(settings.namespace)
        self.redis = redis.Redis.from_url(endpoints.redis_url, health_check_interval=30)
        #: the tools' Redis (``ctx.redis``): their state and effect journals
        self.tool_redis = (
            redis.Redis.from_url(settings.tool_redis_url, health_check_interval=30)
            if settings.tool_redis_url
            else self.redis
        )
        check_redis_policy(self.redis, settings.allow_evicting_redis)
        self.store = RunStore(make_engine(endpoints.database_url))
        self.deployments = DeploymentStore(self.store.engine, settings.namespace)
        #: whether Redis's state can be trusted (runtime.state): the scheduler and the ledger
        #: refuse to work on a state older than the generation SQL knows
        self.generation = KnownGeneration(self.deployments)
        self.markers = StateMarkers(self.redis, self.keys)
        self.ledger = BudgetLedger(self.redis, self.keys, self.generation.value)
        self.leases = LeaseManager(
            self.redis, self.keys, int(config.scheduling.worker_dead_after_s * 1000)
        )
        self.policy = PolicyEngine(config.policy)
        # the published limits have one owner (apply_config); building a service never
        # publishes them
        self.scheduler = Scheduler(self.redis, self.keys, config, self.generation.value)
        #: set when this process's own file differs from the applied config it enforces
        self.drift: deployment.Drift | None = None
        #: what the published config's digest must be for this process to run steps
        self.config_digest = config_digest(config)
        self.limiter = Limiter(self.redis, self.keys)
        self.breakers = Breakers(self.redis, self.keys)
        self.dead_letters = DeadLetters(self)
        self.compensations = Compensations(self)
        # catalog, controls and dispatch are this service's own methods for now
        self.steps = build_runner(
            config=config,
            config_digest=self.config_digest,
            registry=registry,
            store=self.store,
            redis=self.redis,
            tool_redis=self.tool_redis,
            keys=self.keys,
            ledger=self.ledger,
            leases=self.leases,
            scheduler=self.scheduler,
            limiter=self.limiter,
            breakers=self.breakers,
            policy=self.policy,
            markers=self.markers,
            generation=self.generation,
            catalog=self,
            controls=self,
            dispatch=self,
            dead_letters=self.dead_letters,
            after_failure=self.after_failure,
        )
        self._publisher = publisher
        self._publisher_factory = publisher_factory
        self._proposers: dict[str, Proposer] = {}
        self._tool_descriptions: dict[tuple[str, frozenset[str]], list[ToolDescription]] = {}

    # --- construction ----------------------------------------------------------------
    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        publisher: StepPublisher | None = None,
        publisher_factory: Callable[[RuntimeService], StepPublisher] | None = None,
        create_schema: bool = True,
        enforce_applied: bool = True,
    ) -> RuntimeService:
        """The service for ``settings``. It enforces the deployment's applied config: if
        this process's own file differs, it says so (``drift``, a warning) and loads the
        applied one - unless ``enforce_applied`` is False (the process is about to apply
        its file: ``agentrt config apply``, the demo)."""
        settings = settings or Settings()
        config = load_config(settings.config)
        registry = load_registry(config, str(settings.config))
        endpoints = resolve_endpoints(settings)
        svc = cls(
            settings,
            config,
            endpoints=endpoints,
            registry=registry,
            publisher=publisher,
            publisher_factory=publisher_factory,
        )
        if create_schema:
            svc.store.create_schema()
        gap = deployment.drift(config, svc.deployments)
        if gap is None or not enforce_applied:
            svc.drift = gap
            return svc
        # every process enforces the applied config; this one's file says otherwise
        log.warning(
            "config drift: %s; enforcing the applied one", gap.describe(str(settings.config))
        )
        svc.close()
        applied = deployment.load_applied(gap.applied)
        svc = cls(
            settings,
            applied,
            endpoints=endpoints,
            registry=load_registry(applied, f"applied config {gap.applied.version}"),
            publisher=publisher,
            publisher_factory=publisher_factory,
        )
        svc.drift = gap
        return svc

    def apply_config(self, actor: str) -> deployment.ConfigChange:
        """Make this process's config the deployment's (record it in SQL, publish its limits)
        and build Redis's state from SQL when no step can be in flight (a new deployment,
        runs submitted before any worker started). After a loss with steps possibly in
        flight, workers rebuild it after the in-flight wait, or ``agentrt recover`` does."""
        change = deployment.apply(
            self.scheduler, self.deployments, source=str(self.settings.config), actor=actor
        )
        self.drift = None
        recovery = self.recovery
        if not self.markers.known(self.generation.refresh()) and not recovery.may_be_in_flight():
            recovery.ensure(actor)
        return change

    @property
    def publisher(self) -> StepPublisher:
        if self._publisher is None:
            factory = self._publisher_factory or _default_publisher_factory
            self._publisher = factory(self)
        return self._publisher

    # --- config lookups used by the step loop ------------------------------------------
    def proposer_for(self, model_name: str) -> Proposer:
        proposer = self._proposers.get(model_name)
        if proposer is None:
            # model clients (the openai SDK) are imported on first use, not with the service
            proposer = proposers.build(self.config.models[model_name])
            self._proposers[model_name] = proposer
        return proposer

    def tool_timeout(self, spec: ToolSpec, route: str | None = None) -> float:
        """The manifest's timeout, else the tool's own; never beyond the route's step."""
        entry = self.config.tools.get(spec.name)
        timeout = entry.timeout_s if entry and entry.timeout_s else spec.timeout_s
        if route is not None and route in self.config.routes:
            timeout = min(timeout, self.config.routes[route].step_timeout_s)
        return timeout

    def retry_policy(self, route: str, tool: str | None = None) -> RetryPolicy | None:
        """The tool's own retry policy, else the route's; None: failures are not retried."""
        name = None
        entry = self.config.tools.get(tool) if tool else None
        if entry is not None and entry.retry_policy:
            name = entry.retry_policy
        elif route in self.config.routes:
            name = self.config.routes[route].retry_policy
        return self.config.retry_policies[name] if name else None

    def after_failure(self, run: dict[str, Any]) -> None:
        """A run failed or was dead-lettered: compensate its side effects now, in this
        process, if its route asks for it (the reconciler resumes one left unfinished)."""
        route = self.config.routes.get(run["route"])
        if route is not None and route.compensate_on_failure:
            self.compensations.compensate(run["run_id"])

    def tool_cost_micro(self, name: str) -> int:
        entry = self.config.tools.get(name)
        return round(entry.cost_usd * 1_000_000) if entry else 0

    def tool_enabled(self, name: str, disabled_live: frozenset[str] = frozenset()) -> bool:
        entry = self.config.tools.get(name)
        return entry is not None and entry.enabled and name not in disabled_live

    def tool_descriptions(self, route: str, disabled_live: frozenset[str]) -> list[ToolDescription]:
        """What the proposer is shown: the route's enabled tools with their JSON schemas.
        Cached: building pydantic JSON schemas costs more than the rest of a scripted step."""
        key = (route, disabled_live)
        cached = self._tool_descriptions.get(key)
        if cached is None:
            cached = []
            for name in self.config.routes[route].allowed_tools:
                spec = self.registry.get(name)
                if spec is not None and self.tool_enabled(name, disabled_live):
                    cached.append(ToolDescription(name, spec.description, spec.json_schema()))
            self._tool_descriptions[key] = cached
        return list(cached)

    def live_controls(
        self, run_id: str, route: str, tools: list[str]
    ) -> tuple[bool, bool, frozenset[str]]:
        """(cancelled, route stopped, tools disabled) from the kill switches: one round trip."""
        return self.parse_controls(self.redis.mget(self.control_keys(run_id, route, tools)), tools)

    def control_keys(self, run_id: str, route: str, tools: list[str]) -> list[str]:
        keys = [self.keys.run_cancelled(run_id), self.keys.route_stopped(route)]
        return keys + [self.keys.tool_disabled(t) for t in tools]

    @staticmethod
    def parse_controls(values: list[Any], tools: list[str]) -> tuple[bool, bool, frozenset[str]]:
        disabled = frozenset(t for t, v in zip(tools, values[2:], strict=True) if v)
        return bool(values[0]), bool(values[1]), disabled

    def route_stopped(self, route: str) -> bool:
        return bool(self.redis.exists(self.keys.route_stopped(route)))

    def version_set(self, route_name: str) -> VersionSet:
        route = self.config.routes[route_name]
        model = self.config.models[route.proposer]
        versions = {n: e.version for n, e in self.config.tools.items()}
        return VersionSet(
            model=model.version,
            prompt=route.prompt_version,
            policy=self.config.policy.version,
            tool_schema=self.registry.schema_digest(route.allowed_tools, versions),
            retriever=route.retriever_version,
            harness=f"{self.config.harness_version}+config:{self.config.version}",
        )

    # --- the Python API ----------------------------------------------------------------
    def submit(
        self,
        tenant: str,
        route: str,
        goal: str,
        input: dict[str, Any] | None = None,
        actor: str = "anonymous",
        request_id: str | None = None,
        idempotency_key: str | None = None,
        priority: str | None = None,
    ) -> RunView:
        """Admit or refuse a run; returns at once. Every field is checked before anything
        is stored (``runtime.admission``):

        * a malformed tenant, route, actor, request id or idempotency key raises
          ``AdmissionRefused`` (``invalid_request``, naming the field and its limit);
        * a request id or idempotency key an admitted run holds returns that run when the
          payload is the same, else raises ``AdmissionRefused`` (``idempotency_conflict``,
          ``.fields`` naming what differs);
        * any other refusal is stored (bounded) as a refused run and returned. It does not
          hold the request id: a retry with the same id is decided afresh.

        What raises stores nothing."""
        req = admission.prepare(
            tenant=tenant,
            route=route,
            goal=goal,
            input=input,
            actor=actor,
            request_id=request_id,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        held = self.store.find_admitted(req.tenant, req.request_id, req.idempotency_key)
        if held:
            return self._same_request(req, held)
        refusal, pressure = self._decide(req)
        row = self._row_for(req, refusal)
        stored, created = self.store.insert_run(row, admission_events(row, refusal))
        if not created:  # an identical request (or a conflicting one) won the race
            return self._same_request(req, [stored])
        if refusal is None:
            first = Item(row["run_id"], 0, row["tenant_id"], row["route"], row["priority"])
            self.schedule(Ops().enqueue(first).dispatch(1))
        view = self._view(stored)
        if pressure is not None:
            view.estimated_wait_s = pressure.estimated_wait_s
        if refusal is not None:
            view.retry_after_s = refusal.retry_after_s
        return view

    def _decide(
        self, req: admission.AdmissionRequest
    ) -> tuple[admission.Refusal | None, admission.Backpressure | None]:
        """Admission's refusal (or None), then the proposer's input checks, then the queue
        limits (only limited routes and tenants pay those round trips)."""
        route_cfg = self.config.routes.get(req.route)
        stopped = route_cfg is not None and self.route_stopped(req.route)
        refusal = admission.decide(self.config, req, route_stopped=stopped)
        if refusal is not None or route_cfg is None:
            return refusal, None
        problems = self.proposer_for(route_cfg.proposer).input_problems(req.input)
        if problems:
            return admission.Refusal("invalid_input", admission.bounded("; ".join(problems))), None
        if route_cfg.max_queued is None and self.config.tenants[req.tenant].max_queued is None:
            return None, None
        pressure = self.backpressure(req.tenant, req.route)
        return admission.queue_full(self.config, req.tenant, req.route, pressure), pressure

    def _same_request(self, req: admission.AdmissionRequest, held: list[dict[str, Any]]) -> RunView:
        """The admitted run a repeated request id / idempotency key names, if the payload is
        the same; ``AdmissionRefused`` (``idempotency_conflict``) otherwise."""
        if len(held) > 1:
            by_key = next(r for r in held if r["idempotency_key"] == req.idempotency_key)
            by_id = next(r for r in held if r is not by_key)
            raise admission_conflict(
                f"request_id {req.request_id!r} names run {by_id['run_id']} but "
                f"idempotency_key {req.idempotency_key!r} names run {by_key['run_id']}",
                None,
                ("request_id", "idempotency_key"),
            )
        run = held[0]
        differ = admission.differing_fields(run.get("request_digest"), req.digest)
        if differ:
            if req.idempotency_key is not None and run["idempotency_key"] == req.idempotency_key:
                via = f"idempotency_key {req.idempotency_key!r}"
            else:
                via = f"request_id {req.request_id!r}"
            stored = isinstance(run.get("request_digest"), dict)
            raise admission_conflict(
                f"{via} is held by run {run['run_id']} whose request differs in "
                f"{', '.join(differ)}"
                + ("" if stored else " (stored without a request digest; cannot compare)"),
                run["run_id"],
                tuple(differ),
            )
        return self._view(run)

    def backpressure(self, tenant: str, route: str) -> admission.Backpressure:
        tenant_queued, route_queued = self.scheduler.depth(tenant, route)
        eta = self.scheduler.estimated_wait_s(route, route_queued)
        return admission.Backpressure(tenant_queued, route_queued, eta)

    def _new_row(
        self,
        tenant: str,
        route: str,
        goal: str,
        run_input: Any,
        actor: str,
        request_id: str | None,
        idempotency_key: str | None,
        priority: str | None,
        refusal: admission.Refusal | None,
    ) -> dict[str, Any]:
        """The row ``submit`` stores for this request (for tools and tests that store a run
        directly); ``AdmissionRefused`` for a malformed identity, like ``submit``."""
        req = admission.prepare(
            tenant=tenant,
            route=route,
            goal=goal,
            input=run_input,
            actor=actor,
            request_id=request_id,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        return self._row_for(req, refusal)

    def _recorded_versions(self, route: str) -> tuple[dict[str, Any], str]:
        """(version set, budget policy version) a new run records; ``-`` for what an
        unknown route has none of."""
        route_cfg = self.config.routes.get(route)
        if route_cfg is not None:
            budget_policy = self.config.budget_policies[route_cfg.budget_policy]
            return self.version_set(route).model_dump(), budget_policy.version
        unknown = {"model": "-", "prompt": "-", "tool_schema": "-", "retriever": None}
        return {
            **unknown,
            "policy": self.config.policy.version,
            "harness": self.config.harness_version,
        }, "-"

    def _row_for(
        self, req: admission.AdmissionRequest, refusal: admission.Refusal | None
    ) -> dict[str, Any]:
        """The run row of a prepared request (what it stores of the request:
        ``admission.stored_content``)."""
        now = utcnow()
        route_cfg = self.config.routes.get(req.route)
        vs, bp_version = self._recorded_versions(req.route)
        keep = route_cfg.max_input_bytes if route_cfg else admission.KEEP_REFUSED_INPUT_BYTES
        content = admission.stored_content(req, refusal, keep)
        status = RunStatus.QUEUED if refusal is None else RunStatus.REFUSED
        return {
            "run_id": uuid.uuid4().hex,
            "trace_id": uuid.uuid4().hex,
            "request_id": req.request_id or uuid.uuid4().hex,
            "actor_id": req.actor,
            "tenant_id": req.tenant,
            "route": req.route,
            "goal": content.goal,
            "autonomy_level": route_cfg.autonomy_level if route_cfg else "advisory",
            "risk_class": route_cfg.risk_class if route_cfg else "high",
            "execution_mode": route_cfg.execution_mode if route_cfg else "async_job",
            "status": status.value,
            "version_set": vs,
            "budget_policy_version": bp_version,
            "policy_version": self.config.policy.version,
            "workflow_step": "queued" if refusal is None else "refused",
            "allowed_tools": list(route_cfg.allowed_tools) if route_cfg else [],
            "idempotency_key": req.idempotency_key,
            "stop_reason": None if refusal is None else stop_reasons.make("refused", refusal.code),
            "priority": (content.priority or (route_cfg.priority if route_cfg else "normal")),
            "input": content.input,
            "output": content.output,
            "admitted": refusal is None,
            "request_digest": req.digest,
            "created_at": now,
            "updated_at": now,
            "finished_at": now if refusal else None,
            "deadline_at": now + timedelta(seconds=route_cfg.run_timeout_s) if route_cfg else None,
            "started_at": None,
            "approval_id": None,
            "checkpoint_ref": None,
            "pending_proposal": None,
            "next_step": 0,
            "turns": 0,
            "invalid_proposals": 0,
            "tool_errors": 0,
            "lock_waits": 0,
            "attempt": 0,
            "version": 1,
        }

    def get(self, run_id: str, tenant: str | None = None) -> RunView:
        return self._view(self.store.read_run(run_id, tenant))

    def wait(self, run_id: str, timeout: float = 30.0, tenant: str | None = None) -> RunView:
        """Block until the run is terminal or waiting; ``WaitTimeout`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            view = self.get(run_id, tenant)
            if view.status in WAIT_STATUSES:
                return view
            if time.monotonic() >= deadline:
                raise WaitTimeout(run_id, timeout, view.status.value)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)

    def trace(self, run_id: str, tenant: str | None = None) -> list[TraceEvent]:
        self.store.read_run(run_id, tenant)  # RunNotFound (or wrong tenant) before an empty list
        # a stored event that does not read back (edited by hand) is shown, never raised
        return [
            TraceEvent(**trace_fields(e, i)) for i, e in enumerate(self.store.trace(run_id, tenant))
        ]

    def list_runs(
        self,
        tenant: str | None = None,
        status: str | None = None,
        route: str | None = None,
        limit: int = 50,
    ) -> list[RunView]:
        """Newest first, at most ``limit`` (1..MAX_LIST_LIMIT). A row this version cannot
        read is listed with marked values (``RunView.unreadable_fields``), never dropped and
        never an error; ``status="unknown"`` lists exactly those with an unknown status."""
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidRequest(("limit",), f"limit must be an integer 1..{MAX_LIST_LIMIT}")
        return [self._view(r) for r in self.store.list_runs(tenant, status, route, limit)]

    def cancel(self, run_id: str, actor: str = "operator", tenant: str | None = None) -> RunView:
        """Cancel a run. Checked before anything is written (``store.run_for_write``): an
        unknown run or another tenant's is ``RunNotFound``, a finished one
        ``InvalidTransition``, and neither writes anything, in SQL or Redis. Then the run
        is cancelled in SQL (a conditional update, tenant-scoped), and only after that the
        Redis flag is set that stops a step in flight at its next boundary (a step past it
        cannot checkpoint: its conditional update finds the run cancelled)."""
        problem = admission.identity_problem("actor", actor)
        if problem is None and len(actor) > MAX_CANCEL_ACTOR_CHARS:
            problem = f"actor is {len(actor)} characters; at most {MAX_CANCEL_ACTOR_CHARS}"
        if problem is not None:
            raise InvalidRequest(("actor",), problem)
        run = self.store.run_for_write(run_id, tenant, RunStatus.CANCELLED)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], None)
        reason = stop_reasons.make("cancelled", actor)
        trace.add("stop", reason=reason, status="cancelled", actor=actor)
        row = self.store.transition(
            run_id,
            RunStatus.CANCELLED,
            stop_reason=reason,
            events=trace.drain(),
            tenant_id=run["tenant_id"],
        )
        try:
            self.redis.set(self.keys.run_cancelled(run_id), actor, ex=7 * 86400)
        except redis.RedisError:
            # SQL is the truth: the run is cancelled and no step of it can checkpoint; the
            # flag only stops a step in flight sooner
            log.warning(
                "run %s cancelled; could not set its Redis cancel flag", run_id, exc_info=True
            )
        return self._view(row)

    # --- scheduling and workers ----------------------------------------------------------
    def schedule(self, ops: Ops) -> Outcome:
        """Run scheduler operations and publish what they dispatched."""
        outcome = self.scheduler.run(ops)
        self.publish(outcome.dispatched)
        return outcome

    def publish(self, items: list[Item]) -> None:
        for item in items:
            try:
                self.publisher.publish(item)
            except Exception:
                # the step is in flight in the scheduler with a slot lease: when the lease
                # expires it is dispatched again, so a broker hiccup loses nothing
                log.warning(
                    "could not publish step %s/%s; it is dispatched again when its "
                    "slot lease expires",
                    item.run_id,
                    item.step_no,
                    exc_info=True,
                )

    def pump(self, worker: str | None = None, processes: int = 0, max_items: int = 100) -> Outcome:
        """The periodic scheduler duties a worker runs: report capacity, promote delayed
        steps whose time came, expire slot leases of dead workers, dispatch."""
        ops = Ops()
        if worker:
            ops.heartbeat(worker, processes, HEARTBEAT_TTL_MS)
        outcome = self.scheduler.run(ops.promote(max_items).expire(max_items).dispatch(max_items))
        lost = self._lost_too_often(outcome.handed_back)
        self.publish([item for item in outcome.dispatched if item not in lost])
        for item, deaths in lost.items():
            # a step that keeps killing the process running it (a crash in a tool, an OOM)
            # waits for an operator, as Celery's bounded retry-on-worker-lost does
            self.dead_letters.dead_letter_step(
                item.run_id,
                item.step_no,
                "worker_lost",
                error_type="WorkerLostError",
                error=f"the process running this step died {deaths} times",
            )
        return outcome

    def _lost_too_often(self, handed_back: list[Item]) -> dict[Item, int]:
        """Handed-back steps whose owner died more often than AGENTRT_WORKER_LOST_RETRIES."""
        if not handed_back:
            return {}
        counts = self.redis.hmget(
            self.keys.scheduler().deaths, [item.encode() for item in handed_back]
        )
        limit = self.settings.worker_lost_retries
        return {
            item: int(n)
            for item, n in zip(handed_back, counts, strict=True)
            if n is not None and int(n) > limit
        }

    @property
    def recovery(self) -> Recovery:
        return Recovery(self)

    def run_step(self, item: Item, attempt: int = 0) -> StepResult:
        return self.steps.run(item, attempt)

    # --- helpers -----------------------------------------------------------------------
    def _view(self, row: dict[str, Any]) -> RunView:
        """Never raises for what a stored row holds (see ``runtime.run_views``); the input
        is shown with secrets redacted (``proposals.shown_input``)."""
        return run_view(row, lambda value: proposals.shown_input(value, self.registry))

    def close(self) -> None:
        self.store.engine.dispose()
        self.redis.close()


def admission_events(row: dict[str, Any], refusal: admission.Refusal | None) -> list[Any]:
    """The trace events a new run is stored with."""
    trace = TraceBuffer(row["run_id"], row["tenant_id"], row["trace_id"], None)
    if refusal is None:
        trace.add(
            "admission",
            decision="admitted",
            route=row["route"],
            priority=row["priority"],
            version_set=row["version_set"],
        )
    else:
        detail = row["output"]["detail"]
        trace.add("admission", decision="refused", code=refusal.code, detail=detail)
        trace.add("stop", reason=row["stop_reason"], status=row["status"])
    return trace.drain()


def admission_conflict(
    detail: str, run_id: str | None, fields: tuple[str, ...]
) -> AdmissionRefused:
    return AdmissionRefused("idempotency_conflict", detail, run_id=run_id, fields=fields)


def load_registry(config: RuntimeConfig, source: str) -> ToolRegistry:
    """Import ``tool_modules`` and check the file against what they register: the manifest
    (every tool declared is registered) and the policy rules (arguments, side effects).
    With ``load_config``, this is every check start-up makes; ``agentrt config check``
    runs the same two. Raises ``ConfigError`` listing every problem."""
    module_problems: list[str] = []
    registry = ToolRegistry.from_modules(config.tool_modules, module_problems)
    problems = [f"tool_modules: {p}" for p in module_problems]
    modules = ", ".join(config.tool_modules) or "none"
    problems += [
        f"tools.{name}: no tool module registers it (tool_modules: {modules})"
        for name in config.tools
        if registry.get(name) is None
    ]
    problems += rule_tool_problems(config, registry)
    if problems:
        raise ConfigError(source, problems)
    return registry


def _default_publisher_factory(svc: RuntimeService) -> StepPublisher:
    """The entry-point package provides the publisher; runtime/ never imports Celery."""
    module = importlib.import_module("tasks.publish")
    factory: Callable[[RuntimeService], StepPublisher] = module.publisher_for
    return factory(svc)


class Runtime(RuntimeService):
    """The Python API for web apps (same object as the service)."""

    @classmethod
    def from_env(cls) -> Runtime:
        svc = cls.from_settings(Settings())
        assert isinstance(svc, Runtime)
        return svc
