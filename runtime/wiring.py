"""The composition root: settings checks, registry loading, and building every component
once, handing each only the collaborators it uses (keyword arguments). Entry points (the
Celery app, the CLI, web apps through ``Runtime.from_env()``) build through here; no
component receives the façade.

The step publisher and the workers' message names come from the entry-point package
(``tasks/``), loaded by name from settings (``AGENTRT_PUBLISHER``,
``AGENTRT_STEP_MESSAGES``): ``runtime/`` never imports Celery.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import redis
from sqlalchemy import Engine

from runtime import deployment, telemetry
from runtime.api_keys import ApiKeys
from runtime.approvals import Approvals
from runtime.budget_extensions import BudgetExtensions
from runtime.budgets.ledger import BudgetLedger
from runtime.cancellation import Cancellation
from runtime.catalog import Catalog
from runtime.compensation import Compensations
from runtime.config import RuntimeConfig, config_digest, load_config
from runtime.controls import Controls
from runtime.dashboard_view import DashboardView
from runtime.dead_letter_entries import DeadLetterEntries
from runtime.dead_letters import DeadLetters
from runtime.delegations import Delegations
from runtime.dispatch import Dispatch
from runtime.endpoints import Endpoints, resolve_endpoints
from runtime.errors import ConfigError, SettingsError
from runtime.eval_config import DEFAULT_EVALS_DIR, FIXTURE_SUFFIXES
from runtime.event_ordering import EventOrdering
from runtime.events import EventIntake
from runtime.keys import Keys
from runtime.levers import Levers
from runtime.locks.leases import LeaseManager
from runtime.memory.retriever import memory_retriever
from runtime.memory.store import MemoryStore
from runtime.mode_check import sync_route_problems
from runtime.policy import PolicyEngine
from runtime.ports import StepMessages, StepPublisher
from runtime.reconciler import DEFAULT_BATCH, DEFAULT_INTERVAL_S, RETENTION_EVERY_S, Reconciler
from runtime.recovery import Recovery
from runtime.release_gate import Gate, GateResult, no_evals_gate
from runtime.releases.api import Releases
from runtime.releases.live import LiveReleases
from runtime.retrieval.documents import DocumentsRetriever
from runtime.retrieval.registry import RetrieverContext, RetrieverRegistry
from runtime.retrieval.registry import from_modules as registry_from_modules
from runtime.rule_check import rule_tool_problems
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter
from runtime.scheduling.scheduler import Scheduler
from runtime.service import RuntimeService
from runtime.settings import Settings
from runtime.slo import EvalGateCheck, SloReporter, release_gate_health
from runtime.state import KnownGeneration, StateMarkers
from runtime.step.build import build_runner
from runtime.step.runner import StepRunner
from runtime.store.api_keys import ApiKeyStore
from runtime.store.approvals import ApprovalStore
from runtime.store.dashboard_reads import DashboardReads
from runtime.store.db import make_engine
from runtime.store.dead_letters import DeadLetterStore
from runtime.store.deployment import DeploymentStore
from runtime.store.documents import DocumentStore
from runtime.store.events import EventStore
from runtime.store.evidence import EvidenceStore
from runtime.store.levers import LeverStore
from runtime.store.recovery_reads import ReconcilerReads, RecoveryReads
from runtime.store.releases import ReleaseStore
from runtime.store.runs import RunStore
from runtime.store.slo_reads import SloReads
from runtime.submissions import Submissions
from runtime.sync_runs import SyncRuns
from runtime.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from runtime.metrics import MetricSources

__all__ = [
    "Endpoints",
    "PublisherFactory",
    "Runtime",
    "build_dashboard_view",
    "build_metric_sources",
    "build_reconciler",
    "build_service",
    "build_slo_reporter",
    "check_redis_policy",
    "deployment_config",
    "load_registry",
    "resolve_endpoints",
    "service_from_settings",
]

log = logging.getLogger("agentrt.service")

#: builds the step publisher of a process (``AGENTRT_PUBLISHER`` names the default one)
PublisherFactory = Callable[[Settings, Endpoints], StepPublisher]
_Redis = redis.Redis


# --- start-up checks -----------------------------------------------------------------
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
    problems += sync_route_problems(config, registry)
    if problems:
        raise ConfigError(source, problems)
    return registry


# --- what the entry-point package provides, by name ----------------------------------
def load_object(spec: str, setting: str) -> Any:
    """The object ``module:attribute`` names (``setting`` is named in the error)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"{setting}={spec!r} must name module:attribute")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"{setting}={spec!r} cannot be loaded: {exc}") from exc


def default_publisher_factory(settings: Settings) -> PublisherFactory:
    return cast(PublisherFactory, load_object(settings.publisher, "AGENTRT_PUBLISHER"))


def step_messages(settings: Settings) -> StepMessages:
    return cast(StepMessages, load_object(settings.step_messages, "AGENTRT_STEP_MESSAGES"))


# --- building ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Mechanisms:
    """Connections and the mechanisms over them, shared by the flows of one process."""

    keys: Keys
    redis: _Redis
    #: the tools' Redis (``ctx.redis``): their state and effect journals
    tool_redis: _Redis
    store: RunStore
    deployments: DeploymentStore
    generation: KnownGeneration
    markers: StateMarkers
    ledger: BudgetLedger
    leases: LeaseManager
    scheduler: Scheduler
    limiter: Limiter
    breakers: Breakers
    dead_letter_store: DeadLetterStore
    approvals: ApprovalStore


def _mechanisms(settings: Settings, config: RuntimeConfig, endpoints: Endpoints) -> _Mechanisms:
    keys = Keys(settings.namespace)
    client = redis.Redis.from_url(endpoints.redis_url, health_check_interval=30)
    tool_redis = (
        redis.Redis.from_url(settings.tool_redis_url, health_check_interval=30)
        if settings.tool_redis_url
        else client
    )
    check_redis_policy(client, settings.allow_evicting_redis)
    store = RunStore(make_engine(endpoints.database_url))
    deployments = DeploymentStore(store.engine, settings.namespace)
    # whether Redis's state can be trusted (runtime.state): the scheduler and the ledger
    # refuse to work on a state older than the generation SQL knows
    generation = KnownGeneration(deployments)
    return _Mechanisms(
        keys=keys,
        redis=client,
        tool_redis=tool_redis,
        store=store,
        deployments=deployments,
        generation=generation,
        markers=StateMarkers(client, keys),
        ledger=BudgetLedger(client, keys, generation.value),
        leases=LeaseManager(client, keys, int(config.scheduling.worker_dead_after_s * 1000)),
        # the published limits have one owner (apply_config); building a service never
        # publishes them
        scheduler=Scheduler(client, keys, config, generation.value),
        limiter=Limiter(client, keys),
        breakers=Breakers(client, keys),
        dead_letter_store=DeadLetterStore(store),
        approvals=ApprovalStore(store.engine),
    )


def _dispatch(
    settings: Settings,
    endpoints: Endpoints,
    m: _Mechanisms,
    publisher: StepPublisher | None,
    publisher_factory: PublisherFactory | None,
) -> Dispatch:
    factory = publisher_factory or default_publisher_factory(settings)
    return Dispatch(
        scheduler=m.scheduler,
        redis=m.redis,
        keys=m.keys,
        worker_lost_retries=settings.worker_lost_retries,
        publisher=publisher,
        publisher_factory=lambda: factory(settings, endpoints),
    )


def _report_dead_letter(entry: Mapping[str, Any]) -> None:
    # imported on first use: sentry_sdk takes ~0.3 s to import, and only a DSN needs it
    from runtime.error_reporting import report_dead_letter

    report_dead_letter(entry)


def _failure_flows(
    settings: Settings,
    config: RuntimeConfig,
    registry: ToolRegistry,
    m: _Mechanisms,
    dispatch: Dispatch,
) -> tuple[Compensations, DeadLetters]:
    messages = step_messages(settings)
    entries = DeadLetterEntries(
        store=m.dead_letter_store,
        redis=m.redis,
        keys=m.keys,
        messages=messages,
        # no DSN, no reporter: dead-lettering pays nothing for Sentry
        on_new=_report_dead_letter if settings.sentry_dsn else None,
    )
    compensations = Compensations(
        config=config,
        store=m.store,
        memories=MemoryStore(m.store.engine),
        registry=registry,
        tool_redis=m.tool_redis,
        keys=m.keys,
        entries=entries,
    )
    dead_letters = DeadLetters(
        runs=m.store,
        entries=entries,
        config=config,
        redis=m.redis,
        keys=m.keys,
        ledger=m.ledger,
        dispatch=dispatch,
        compensations=compensations,
        messages=messages,
    )
    return compensations, dead_letters


def release_gate_for(config: RuntimeConfig) -> Gate:
    """The gate ``Releases.promote`` asks when its caller passes none. The eval gate (the
    blocking fixtures replayed under the candidate: ``runtime.evals.gate.eval_gate``) sits
    above this layer, so ``agentrt releases promote`` passes it in; here, a deployment
    whose evals directory holds fixtures is refused rather than promoted unchecked."""
    directory = Path(config.evals.dir if config.evals is not None else DEFAULT_EVALS_DIR)
    fixtures = [
        p
        for p in (directory.iterdir() if directory.is_dir() else [])
        if p.suffix in FIXTURE_SUFFIXES
    ]
    if not fixtures:
        return no_evals_gate

    def unwired(route: str, release: str) -> GateResult:
        return GateResult(
            passed=False,
            summary=f"{len(fixtures)} eval fixture(s) in {directory} and no eval gate given: "
            "promote with `agentrt releases promote`, or pass "
            "gate=runtime.evals.gate.eval_gate(config, settings)",
        )

    return unwired


def _live_releases(
    settings: Settings, config: RuntimeConfig, m: _Mechanisms, catalog: Catalog
) -> LiveReleases:
    return LiveReleases(
        config=config,
        catalog=catalog,
        redis=m.redis,
        keys=m.keys,
        store=ReleaseStore(m.store.engine, settings.namespace),
    )


def _levers(config: RuntimeConfig, m: _Mechanisms, dispatch: Dispatch, store: LeverStore) -> Levers:
    return Levers(
        config=config,
        store=store,
        redis=m.redis,
        keys=m.keys,
        schedule=dispatch.schedule,
    )


def _recovery(
    settings: Settings,
    config: RuntimeConfig,
    m: _Mechanisms,
    dispatch: Dispatch,
    levers: Levers,
    live: LiveReleases | None = None,
) -> Recovery:
    return Recovery(
        config=config,
        config_source=str(settings.config),
        redis=m.redis,
        keys=m.keys,
        scheduler=m.scheduler,
        dispatch=dispatch,
        deployments=m.deployments,
        markers=m.markers,
        generation=m.generation,
        runs=m.store,
        reads=RecoveryReads(m.store.engine),
        audit=m.dead_letter_store,
        rebuild_releases=live.rebuild if live is not None else None,
        restore_levers=levers.restore,
    )


def _step_runner(
    config: RuntimeConfig,
    digest: str,
    registry: ToolRegistry,
    m: _Mechanisms,
    catalog: Catalog,
    controls: Controls,
    policy: PolicyEngine,
    dispatch: Dispatch,
    failures: tuple[Compensations, DeadLetters],
    ordering: EventOrdering,
    live: LiveReleases,
    retrievers: RetrieverRegistry,
    delegations: Delegations,
) -> StepRunner:
    compensations, dead_letters = failures

    def after_terminal(run: Mapping[str, Any]) -> None:
        ordering.after_terminal(run)
        delegations.after_terminal(run)

    return build_runner(
        config=config,
        config_digest=digest,
        catalog=catalog,
        controls=controls,
        dispatch=dispatch,
        registry=registry,
        policy=policy,
        store=m.store,
        approvals=m.approvals,
        redis=m.redis,
        tool_redis=m.tool_redis,
        keys=m.keys,
        ledger=m.ledger,
        leases=m.leases,
        scheduler=m.scheduler,
        limiter=m.limiter,
        breakers=m.breakers,
        markers=m.markers,
        generation=m.generation,
        dead_letters=dead_letters,
        after_failure=compensations.after_failure,
        after_cancel=compensations.compensate,
        after_terminal=after_terminal,
        releases=live,
        policy_sets={name: PolicyEngine(p) for name, p in config.policies.items()},
        retrievers=retrievers,
        evidence=EvidenceStore(m.store.engine),
        memories=MemoryStore(m.store.engine),
        children=delegations,
    )


def _delegations(
    store: RunStore,
    ledger: BudgetLedger,
    keys: Keys,
    dispatch: Dispatch,
    catalog: Catalog,
    controls: Controls,
) -> Delegations:
    """Child runs (``delegate``), admitted as a submit would admit them."""
    return Delegations(
        store=store,
        ledger=ledger,
        keys=keys,
        dispatch=dispatch,
        catalog=catalog,
        route_stopped=controls.route_stopped,
    )


def build_retrievers(config: RuntimeConfig, m: _Mechanisms) -> RetrieverRegistry:
    """The retrievers sources may name (the built-in ``documents`` and those of
    ``retriever_modules``); every source's retriever must be registered (``ConfigError``
    naming the source otherwise)."""
    engine = m.store.engine
    retrievers = registry_from_modules(
        config.retriever_modules,
        RetrieverContext(engine=engine, redis=m.tool_redis, keys=m.keys),
        [DocumentsRetriever(documents=DocumentStore(engine)), memory_retriever(engine)],
    )
    problems = retrievers.problems(config)
    if problems:
        raise ConfigError("sources", problems)
    return retrievers


def _intake(
    config: RuntimeConfig,
    m: _Mechanisms,
    dispatch: Dispatch,
    catalog: Catalog,
    controls: Controls,
    live: LiveReleases,
) -> tuple[EventOrdering, EventIntake, Submissions]:
    """What admits runs: submits and webhook events (``event_sources``)."""
    event_store = EventStore(m.store.engine)
    ordering = EventOrdering(store=event_store, dispatch=dispatch, sources=config.event_sources)
    events = EventIntake(sources=config.event_sources, store=event_store)
    submissions = Submissions(
        config=config,
        catalog=catalog,
        controls=controls,
        scheduler=m.scheduler,
        store=m.store,
        dispatch=dispatch,
        events=events,
        ordering=ordering,
        releases=live if any(r.release for r in config.routes.values()) else None,
    )
    return ordering, events, submissions


def start_telemetry(settings: Settings) -> bool:
    """OpenTelemetry spans for this process if an OTLP endpoint is configured; whether they
    are on. No endpoint: the SDK is not even imported (``runtime.telemetry``)."""
    if telemetry.endpoint(settings) is None:
        return False
    from runtime.otel import configure

    return configure(settings)


def build_service(
    settings: Settings,
    config: RuntimeConfig,
    *,
    endpoints: Endpoints,
    registry: ToolRegistry,
    publisher: StepPublisher | None = None,
    publisher_factory: PublisherFactory | None = None,
    cls: type[RuntimeService] = RuntimeService,
) -> RuntimeService:
    """Every component of one process for ``config``, and the façade over them. The
    publisher is built on first use (by ``publisher_factory``, else the one
    ``AGENTRT_PUBLISHER`` names) unless one is given."""
    start_telemetry(settings)
    m = _mechanisms(settings, config, endpoints)
    dispatch = _dispatch(settings, endpoints, m, publisher, publisher_factory)
    failures = _failure_flows(settings, config, registry, m, dispatch)
    compensations, dead_letters = failures
    retrievers = build_retrievers(config, m)
    catalog = Catalog(config=config, registry=registry, retrievers=retrievers)
    lever_store = LeverStore(m.store.engine)
    controls = Controls(redis=m.redis, keys=m.keys, stopped_in_record=lever_store.route_stopped)
    policy = PolicyEngine(config.policy)
    digest = config_digest(config)
    live = _live_releases(settings, config, m, catalog)
    ordering, events, submissions = _intake(config, m, dispatch, catalog, controls, live)
    delegations = _delegations(m.store, m.ledger, m.keys, dispatch, catalog, controls)
    steps = _step_runner(
        config,
        digest,
        registry,
        m,
        catalog,
        controls,
        policy,
        dispatch,
        failures,
        ordering,
        live,
        retrievers,
        delegations,
    )
    levers = _levers(config, m, dispatch, lever_store)
    svc = cls(
        settings=settings,
        config=config,
        config_digest=digest,
        endpoints=endpoints,
        registry=registry,
        keys=m.keys,
        redis=m.redis,
        tool_redis=m.tool_redis,
        store=m.store,
        deployments=m.deployments,
        generation=m.generation,
        markers=m.markers,
        ledger=m.ledger,
        leases=m.leases,
        policy=policy,
        scheduler=m.scheduler,
        limiter=m.limiter,
        breakers=m.breakers,
        catalog=catalog,
        controls=controls,
        dispatch=dispatch,
        steps=steps,
        dead_letters=dead_letters,
        compensations=compensations,
        recovery=_recovery(settings, config, m, dispatch, levers, live),
        cancellation=Cancellation(
            store=m.store,
            controls=controls,
            scheduler=m.scheduler,
            dispatch=dispatch,
            ledger=m.ledger,
            redis=m.redis,
            keys=m.keys,
            compensate=compensations.compensate,
            approvals=m.approvals,
            live_children=delegations.live_children,
            child_ended=delegations.follow_up,
        ),
        approvals=Approvals(
            config=config,
            store=m.approvals,
            runs=m.store,
            dispatch=dispatch,
            after_failure=compensations.after_failure,
        ),
        budget_extensions=BudgetExtensions(store=m.store, dispatch=dispatch),
        api_keys=ApiKeys(store=ApiKeyStore(m.store.engine)),
        events=events,
        ordering=ordering,
        submissions=submissions,
        sync_runs=SyncRuns(
            config=config, submissions=submissions, dispatch=dispatch, steps=steps, store=m.store
        ),
        releases=Releases(
            config=config, live=live, store=live.store, gate=release_gate_for(config)
        ),
    )
    # rt.levers: the operator levers (``agentrt ops``); kept out of the façade's class
    svc.levers = levers
    return svc


def service_from_settings(
    settings: Settings | None = None,
    *,
    publisher: StepPublisher | None = None,
    publisher_factory: PublisherFactory | None = None,
    create_schema: bool = True,
    enforce_applied: bool = True,
    cls: type[RuntimeService] = RuntimeService,
) -> RuntimeService:
    """The service for ``settings``. It enforces the deployment's applied config: if
    this process's own file differs, it says so (``drift``, a warning) and loads the
    applied one - unless ``enforce_applied`` is False (the process is about to apply
    its file: ``agentrt config apply``, the demo)."""
    settings = settings or Settings()
    config = load_config(settings.config)
    registry = load_registry(config, str(settings.config))
    endpoints = resolve_endpoints(settings)
    svc = build_service(
        settings,
        config,
        endpoints=endpoints,
        registry=registry,
        publisher=publisher,
        publisher_factory=publisher_factory,
        cls=cls,
    )
    if create_schema:
        svc.store.create_schema()
    gap = deployment.drift(config, svc.deployments)
    if gap is None or not enforce_applied:
        svc.drift = gap
        return svc
    # every process enforces the applied config; this one's file says otherwise
    log.warning("config drift: %s; enforcing the applied one", gap.describe(str(settings.config)))
    svc.close()
    applied = deployment.load_applied(gap.applied)
    svc = build_service(
        settings,
        applied,
        endpoints=endpoints,
        registry=load_registry(applied, f"applied config {gap.applied.version}"),
        publisher=publisher,
        publisher_factory=publisher_factory,
        cls=cls,
    )
    svc.drift = gap
    return svc


def build_reconciler(
    svc: RuntimeService,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    grace_s: float | None = None,
    batch: int = DEFAULT_BATCH,
    retention_every_s: float = RETENTION_EVERY_S,
) -> Reconciler:
    """A reconciler over the components of ``svc`` (it keeps a scan cursor: one per
    process and config)."""
    return Reconciler(
        redis=svc.redis,
        keys=svc.keys,
        ledger=svc.ledger,
        scheduler=svc.scheduler,
        dispatch=svc.dispatch,
        runs=svc.store,
        reads=ReconcilerReads(svc.store.engine),
        compensations=svc.compensations,
        dead_letters=svc.dead_letters,
        approvals=svc.approvals,
        release_ordered=svc.ordering.reconcile,
        expire_memories=MemoryStore(svc.store.engine).delete_expired,
        resume_parents=_delegations(
            svc.store, svc.ledger, svc.keys, svc.dispatch, svc.catalog, svc.controls
        ).reconcile,
        lease_ttl_s=svc.config.lease_ttl_s(),
        interval_s=interval_s,
        grace_s=grace_s,
        batch=batch,
        retention_every_s=retention_every_s,
    )


def build_slo_reporter(
    config: RuntimeConfig, engine: Engine, *, eval_gate: EvalGateCheck = release_gate_health
) -> SloReporter:
    """The SLO report over the store on ``engine`` (``agentrt slo report``, the
    dashboard): SQL only, no Redis. ``eval_gate`` is the evals feature's check."""
    return SloReporter(config=config, reads=SloReads(engine), eval_gate=eval_gate)


def build_dashboard_view(svc: RuntimeService) -> DashboardView:
    """The operating dashboard's panels over the components of ``svc`` (one per app)."""
    return DashboardView(
        config=svc.config,
        reads=DashboardReads(svc.store.engine),
        approvals=svc.approvals,
        releases=svc.releases,
        levers=svc.levers,
        dead_letters=svc.dead_letters,
        runs=svc.store,
        slos=build_slo_reporter(svc.config, svc.store.engine),
    )


def deployment_config(settings: Settings, engine: Engine) -> tuple[RuntimeConfig, str]:
    """The config the deployment enforces, and where it came from: the applied one (what
    every process loads) or, before any was applied, the file. Read-only, SQL only."""
    applied = DeploymentStore(engine, settings.namespace).applied()
    if applied is None:
        return load_config(settings.config), str(settings.config)
    return deployment.load_applied(applied), f"applied config {applied.version}"


class Runtime(RuntimeService):
    """The Python API for web apps: the façade, built from settings."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        publisher: StepPublisher | None = None,
        publisher_factory: PublisherFactory | None = None,
        create_schema: bool = True,
        enforce_applied: bool = True,
    ) -> Runtime:
        svc = service_from_settings(
            settings,
            publisher=publisher,
            publisher_factory=publisher_factory,
            create_schema=create_schema,
            enforce_applied=enforce_applied,
            cls=cls,
        )
        assert isinstance(svc, Runtime)
        return svc

    @classmethod
    def from_env(cls) -> Runtime:
        return cls.from_settings(Settings())


def build_metric_sources(svc: RuntimeService) -> MetricSources:
    """What a Prometheus scrape reads (``runtime.metrics``): the shared state under
    ``svc``'s config, the same whichever process serves ``/metrics``."""
    # imported here: prometheus_client (and its http.server) only in a process that serves
    # metrics, not in every process that builds a runtime
    from runtime.metrics import MetricSources
    from runtime.store.metric_reads import MetricReads

    return MetricSources(
        redis=svc.redis,
        keys=svc.keys,
        config=svc.config,
        reads=MetricReads(svc.store.engine),
        state_known=lambda: svc.markers.known(svc.generation.refresh()),
        release_of=svc.releases.live.state if svc.releases is not None else _no_release,
    )


def _no_release(route: str) -> None:
    return None
