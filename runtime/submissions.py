"""Admission of a prepared request: the decision, the row, the insert, the first step.

What ``submit`` and ``receive_event`` share (``RuntimeService``): a request id or
idempotency key an admitted run holds returns that run (or raises the conflict); else
admission decides (``runtime.admission``), the proposer checks the input, the queue limits
push back, and the run is stored - refused, queued with its first step in its tenant's
queue, or, for an event of a ``per_key`` source, waiting for its turn
(``runtime.event_ordering``) with its event record in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from runtime import admission, new_runs, telemetry
from runtime.catalog import Catalog
from runtime.config import RuntimeConfig
from runtime.controls import Controls
from runtime.errors import ReleaseError
from runtime.event_ordering import EventOrdering
from runtime.events import EventIntake, Incoming
from runtime.scheduling.scheduler import Item, Ops, Scheduler
from runtime.step.collaborators import Scheduling
from runtime.store.runs import RunStore


@dataclass(frozen=True)
class Admitted:
    """A request's run: the stored row, whether this request created it, and what
    admission said (queue pressure, the refusal)."""

    row: dict[str, Any]
    created: bool
    pressure: admission.Backpressure | None = None
    refusal: admission.Refusal | None = None


class ReleaseStamp(Protocol):
    """Gives an admitted run's row its release (``runtime.releases.live``)."""

    def stamp(self, row: dict[str, Any]) -> None: ...


class Submissions:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        catalog: Catalog,
        controls: Controls,
        scheduler: Scheduler,
        store: RunStore,
        dispatch: Scheduling,
        events: EventIntake,
        ordering: EventOrdering,
        releases: ReleaseStamp | None = None,
    ) -> None:
        self.config = config
        #: the release a run gets (None: no route has releases in this process)
        self.releases = releases
        self.catalog = catalog
        self.controls = controls
        self.scheduler = scheduler
        self.store = store
        self.dispatch = dispatch
        self.events = events
        self.ordering = ordering

    def admit(self, req: admission.AdmissionRequest, event: Incoming | None = None) -> Admitted:
        """The run of a prepared request (see the module doc); ``AdmissionRefused``
        (``idempotency_conflict``) when its request id names another payload."""
        held = self.store.find_admitted(req.tenant, req.request_id, req.idempotency_key)
        if held:
            return Admitted(new_runs.held_run(req, held), False)
        refusal, pressure = self.decide(req)
        row = new_runs.row_for(self.catalog, req, refusal)
        if refusal is None and self.releases is not None:
            try:
                self.releases.stamp(row)
            except ReleaseError as exc:  # never a run under a release nobody can name
                refusal = admission.Refusal("unknown_release", admission.bounded(str(exc)))
                row = new_runs.row_for(self.catalog, req, refusal)
        key = event.order_key if event is not None and refusal is None else None
        if key is not None and event is not None:
            new_runs.hold_for_turn(row, event.source)
        with telemetry.run_span(row):
            also = self.events.record_rows(event, row) if event and refusal is None else []
            events = new_runs.admission_events(row, refusal)
            stored, created = self.store.insert_run(row, events, also)
            if not created:  # an identical request (or a conflicting one) won the race
                return Admitted(new_runs.held_run(req, [stored]), False)
            if key is not None and event is not None:
                self.ordering.release(event.source, key, req.tenant)
            elif refusal is None:
                first = Item(row["run_id"], 0, row["tenant_id"], row["route"], row["priority"])
                self.dispatch.schedule(Ops().enqueue(first).dispatch(1))
        return Admitted(stored, True, pressure, refusal)

    def decide(
        self, req: admission.AdmissionRequest
    ) -> tuple[admission.Refusal | None, admission.Backpressure | None]:
        """Admission's refusal (or None), then the proposer's input checks, then the queue
        limits (only limited routes and tenants pay those round trips)."""
        route_cfg = self.config.routes.get(req.route)
        stopped = route_cfg is not None and self.controls.route_stopped(req.route)
        refusal = admission.decide(self.config, req, route_stopped=stopped)
        if refusal is not None or route_cfg is None:
            return refusal, None
        problems = self.catalog.proposer_for(route_cfg.proposer).input_problems(req.input)
        if problems:
            return admission.Refusal("invalid_input", admission.bounded("; ".join(problems))), None
        if route_cfg.max_queued is None and self.config.tenants[req.tenant].max_queued is None:
            return None, None
        pressure = self.backpressure(req.tenant, req.route)
        return admission.queue_full(self.config, req.tenant, req.route, pressure), pressure

    def backpressure(self, tenant: str, route: str) -> admission.Backpressure:
        tenant_queued, route_queued = self.scheduler.depth(tenant, route)
        eta = self.scheduler.estimated_wait_s(route, route_queued)
        return admission.Backpressure(tenant_queued, route_queued, eta)
