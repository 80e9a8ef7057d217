"""The façade: the public Python API (submit, get, wait, trace, list_runs, cancel, pause,
resume, ...).

It is built by the composition root (``runtime.wiring``), which hands it the components it
serves from; no component receives it. Web apps use it as ``Runtime``::

    from runtime import Runtime
    rt = Runtime.from_env()
    run = rt.submit(tenant="acme", route="support.triage", goal="...", input={...},
                    actor="user:42", request_id=request.headers["X-Request-Id"])
    rt.wait(run.run_id, timeout=30)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

from runtime import admission, deployment, new_runs, proposals
from runtime.api_keys import ApiKeys
from runtime.approvals import Approvals
from runtime.budget_extensions import BudgetExtensions
from runtime.budgets.ledger import BudgetLedger
from runtime.cancellation import MAX_ACTOR_CHARS, BulkCancel, CancelFilter, Cancellation
from runtime.catalog import Catalog
from runtime.compensation import Compensations
from runtime.config import RuntimeConfig
from runtime.contract import TERMINAL_STATUSES, RunStatus, RunView, TraceEvent
from runtime.controls import Controls
from runtime.dead_letters import DeadLetters
from runtime.dispatch import Dispatch
from runtime.endpoints import Endpoints
from runtime.errors import AdmissionRefused, InvalidRequest
from runtime.errors import WaitTimeout as WaitTimeout
from runtime.event_ordering import EventOrdering
from runtime.events import EventIntake, event_request
from runtime.events import conflict as events_conflict
from runtime.keys import Keys
from runtime.levers import Levers
from runtime.locks.leases import LeaseManager
from runtime.policy import PolicyEngine
from runtime.ports import StepPublisher
from runtime.recovery import Recovery
from runtime.releases.api import Releases
from runtime.run_rows import trace_fields
from runtime.run_views import run_view
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter
from runtime.scheduling.scheduler import Item, Ops, Outcome, Scheduler
from runtime.settings import Settings
from runtime.state import KnownGeneration, StateMarkers
from runtime.step.chain import Chain, new_chain
from runtime.step.runner import StepRunner
from runtime.step.state import StepResult
from runtime.stop_reasons import awaits_child
from runtime.store.deployment import DeploymentStore
from runtime.store.run_pages import RunPageQuery
from runtime.store.runs import RunStore
from runtime.submissions import Admitted, Submissions
from runtime.sync_runs import SyncRuns
from runtime.tools.registry import ToolRegistry

__all__ = ["MAX_LIST_LIMIT", "WAIT_STATUSES", "RuntimeService", "WaitTimeout"]

log = logging.getLogger("agentrt.service")

WAIT_STATUSES = TERMINAL_STATUSES | {RunStatus.WAITING}
#: most runs one ``list_runs`` call returns
MAX_LIST_LIMIT = 10_000
#: a cancel's actor goes into the stop reason (``cancelled:<actor>``, 200 characters)
MAX_CANCEL_ACTOR_CHARS = MAX_ACTOR_CHARS


class RuntimeService:
    levers: Levers  # rt.levers: operator levers (agentrt ops), set by runtime.wiring

    def __init__(
        self,
        *,
        settings: Settings,
        config: RuntimeConfig,
        config_digest: str,
        endpoints: Endpoints,
        registry: ToolRegistry,
        keys: Keys,
        redis: redis.Redis,
        tool_redis: redis.Redis,
        store: RunStore,
        deployments: DeploymentStore,
        generation: KnownGeneration,
        markers: StateMarkers,
        ledger: BudgetLedger,
        leases: LeaseManager,
        policy: PolicyEngine,
        scheduler: Scheduler,
        limiter: Limiter,
        breakers: Breakers,
        catalog: Catalog,
        controls: Controls,
        dispatch: Dispatch,
        steps: StepRunner,
        dead_letters: DeadLetters,
        compensations: Compensations,
        recovery: Recovery,
        cancellation: Cancellation,
        approvals: Approvals,
        budget_extensions: BudgetExtensions,
        api_keys: ApiKeys,
        events: EventIntake,
        ordering: EventOrdering,
        submissions: Submissions,
        sync_runs: SyncRuns,
        releases: Releases | None = None,
    ) -> None:
        # what the API serves from; the CLI, the workers and tests read these too
        self.settings = settings
        self.config = config
        #: what the published config's digest must be for this process to run steps
        self.config_digest = config_digest
        self.endpoints = endpoints
        self.registry = registry
        self.keys = keys
        self.redis = redis
        #: the tools' Redis (``ctx.redis``): their state and effect journals
        self.tool_redis = tool_redis
        self.store = store
        self.deployments = deployments
        #: whether Redis's state can be trusted (runtime.state)
        self.generation = generation
        self.markers = markers
        self.ledger = ledger
        self.leases = leases
        self.policy = policy
        self.scheduler = scheduler
        self.limiter = limiter
        self.breakers = breakers
        self.catalog = catalog
        self.controls = controls
        self.dispatch = dispatch
        self.steps = steps
        self.dead_letters = dead_letters
        self.compensations = compensations
        self.recovery = recovery
        self.cancellation = cancellation
        self.approvals = approvals  # rt.approvals: the calls that wait for a human
        self.budget_extensions = budget_extensions
        self.api_keys = api_keys
        self.events = events  # webhook sources: verify, parse, dedupe (rt.receive_event)
        self.ordering = ordering  # per_key ordering of event runs
        self.submissions = submissions
        self.sync_runs = sync_runs
        self.releases = releases  # rt.releases: version sets, canaries, promote, rollback
        self.drift: deployment.Drift | None = None  # this file differs from the applied one

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
        execution_mode: str | None = None,
    ) -> RunView:
        """Admit or refuse a run; returns at once (``runtime.admission`` checks every field
        first); a ``sync`` run only once this process ran its steps until it settled or
        its route's ``sync_timeout_s`` passed (``runtime.sync_runs``). ``execution_mode``:
        one of the route's ``execution_modes_allowed``; the run records the mode it got. A
        malformed field raises ``AdmissionRefused`` (``invalid_request``, naming the field
        and its limit); a request id or idempotency key an admitted run holds returns that
        run for the same payload, else raises ``AdmissionRefused`` (``idempotency_conflict``,
        ``.fields`` naming what differs); any other refusal is stored (bounded) as a refused
        run and returned, not holding the request id. What raises stores nothing."""
        req = admission.prepare(
            tenant=tenant,
            route=route,
            goal=goal,
            input=input,
            actor=actor,
            request_id=request_id,
            idempotency_key=idempotency_key,
            priority=priority,
            execution_mode=execution_mode,
        )
        if self.sync_runs.is_sync(req):
            return self._admitted(self.sync_runs.admit_and_run(req))[0]
        return self._admitted(self.submissions.admit(req))[0]

    def receive_event(
        self, source: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[RunView, bool]:
        """A webhook event: ``(run, created)`` (``runtime.events``). ``EventRejected``
        (``event:<code>``) stores nothing; a replay returns the first run."""
        event = self.events.accept(source, headers, body)
        earlier = self.events.earlier_run(event)
        if earlier is not None:
            return self.get(earlier, event.config.tenant), False
        try:
            return self._admitted(self.submissions.admit(event_request(event), event))
        except AdmissionRefused as exc:  # the same event id won a race with another body
            if exc.code != "idempotency_conflict":
                raise
            raise events_conflict(event, exc.run_id) from None

    def _admitted(self, admitted: Admitted) -> tuple[RunView, bool]:
        view = self._view(admitted.row)
        if admitted.pressure is not None:
            view.estimated_wait_s = admitted.pressure.estimated_wait_s
        if admitted.refusal is not None:
            view.retry_after_s = admitted.refusal.retry_after_s
        return view, admitted.created

    def backpressure(self, tenant: str, route: str) -> admission.Backpressure:
        return self.submissions.backpressure(tenant, route)

    def _new_row(self, *request: Any) -> dict[str, Any]:
        """The row ``submit`` stores for a request (``new_runs.request_row``), for tools and
        tests that store a run directly."""
        return new_runs.request_row(self.catalog, *request)

    def get(self, run_id: str, tenant: str | None = None) -> RunView:
        return self._view(self.store.read_run(run_id, tenant))

    def wait(self, run_id: str, timeout: float = 30.0, tenant: str | None = None) -> RunView:
        """Block until the run is terminal or waits for a person (not for a child run it
        delegated to: that one is still working); ``WaitTimeout`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            view = self.get(run_id, tenant)
            if view.status in WAIT_STATUSES and not awaits_child(view.stop_reason):
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

    def page_runs(self, query: RunPageQuery) -> list[RunView]:
        """A page of runs after a keyset cursor, newest first (the HTTP API's listing)."""
        return [self._view(r) for r in self.store.page_runs(query)]

    def cancel(
        self,
        run_id: str,
        actor: str = "operator",
        tenant: str | None = None,
        *,
        mode: str = "immediate",
        compensate: bool = False,
    ) -> RunView:
        """Cancel a run (``immediate`` or ``drain``; ``compensate``: undo its side effects):
        see ``runtime.cancellation``. ``RunNotFound`` / ``InvalidTransition`` write nothing."""
        return self._view(self.cancellation.cancel(run_id, actor, mode, compensate, tenant))

    def cancel_many(
        self, filter: CancelFilter, actor: str = "operator", **options: Any
    ) -> BulkCancel:
        """Cancel the runs ``filter`` matches, oldest first; ``options``: ``mode``,
        ``compensate``, ``dry_run`` (count only), ``limit`` (1000)."""
        return self.cancellation.cancel_many(filter, actor, **options)

    def pause(self, run_id: str, actor: str = "operator", tenant: str | None = None) -> RunView:
        """Its step in flight finishes, then the run waits (``paused:<actor>``), no slot held."""
        return self._view(self.cancellation.pause(run_id, actor, tenant))

    def resume(self, run_id: str, actor: str = "operator", tenant: str | None = None) -> RunView:
        """A paused run's next step goes back into its tenant's queue."""
        return self._view(self.cancellation.resume(run_id, actor, tenant))

    def extend_budget(
        self, run_id: str, amount: dict[str, int], actor: str, tenant: str | None = None
    ) -> RunView:
        """Grant a run that waits on its own budget (``needs_approval:budget_extension``,
        route ``on_budget_exhausted: ask``) ``amount`` more, in ledger units per dimension
        (``tokens``, ``model_calls``, ``tool_calls``, ``retries``, ``wall_clock_ms``,
        ``cost_micro_usd``), and queue the step its budget refused again. Only the run's
        per-run limits are raised, never a tenant's or a route's day. Checked before
        anything is written: ``InvalidRequest`` for a malformed actor or amount,
        ``RunNotFound`` for an unknown run or another tenant's, ``NotWaitingForBudget``
        (an ``InvalidTransition``) for a run that does not wait for an extension."""
        problem = admission.identity_problem("actor", actor)
        if problem is not None:
            raise InvalidRequest(("actor",), problem)
        return self._view(self.budget_extensions.extend(run_id, amount, actor, tenant))

    # --- what workers and operators call (thin: the work is in the components) ----------
    @property
    def publisher(self) -> StepPublisher:
        return self.dispatch.publisher

    def schedule(self, ops: Ops) -> Outcome:
        return self.dispatch.schedule(ops)

    def publish(self, items: list[Item]) -> None:
        self.dispatch.publish(items)

    def pump(self, worker: str | None = None, processes: int = 0, max_items: int = 100) -> Outcome:
        """One round of a worker's scheduler duties (``Dispatch.pump``)."""
        outcome, lost = self.dispatch.pump(worker, processes, max_items)
        for item, deaths in lost.items():
            # a step that keeps killing the process running it (a crash in a tool, an OOM)
            # waits for an operator; the hand-back is its one re-send path and its one
            # count of deaths (Celery does not retry a lost worker's step: tasks.steps)
            self.dead_letters.dead_letter_step(
                item.run_id,
                item.step_no,
                "worker_lost",
                error_type="WorkerLostError",
                error=f"the process running this step died {deaths} times",
            )
        return outcome

    def run_step(self, item: Item, attempt: int = 0, chain: Chain | None = None) -> StepResult:
        return self.steps.run(item, attempt, chain)

    def new_chain(self, task_id: str, first: Item) -> Chain | None:
        """A chain for the task whose message names ``first`` (``runtime.step.chain``)."""
        return new_chain(self.config, task_id, first)

    def chained_step(self, task_id: str) -> Item | None:
        """The step a task ran last when it was a chained one (its chain cursor)."""
        raw = self.redis.get(self.keys.chain_cursor(task_id))
        return Item.decode(raw) if raw else None

    def _view(self, row: dict[str, Any]) -> RunView:
        """Never raises for a stored row (``runtime.run_views``); secrets redacted."""
        return run_view(row, lambda value: proposals.shown_input(value, self.registry))

    def close(self) -> None:
        self.store.engine.dispose()
        self.redis.close()
