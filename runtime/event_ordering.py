"""``per_key`` ordering of event runs: the runs of one (source, key) run one at a time, in
arrival order.

A run of a ``per_key`` source is admitted waiting (``ordered:<source>``, no slot, no
queued step). ``release(source, key)`` starts the next one when the key's last started run
(``event_keys.active_run_id``) has ended: it picks the key's earliest-arrived waiting run
(``event_records.seq``), moves the key to it by a compare-and-set in SQL - so of any
number of processes releasing the same key at once exactly one wins - and then moves the
run to ``queued`` and queues its first step. Nothing of this lives in one process or in
Redis: any receiver, worker or reconciler may release, and a crash between the
compare-and-set and the run's start is healed by the next release (the key's active run
still waits: it is started, not skipped).

Who releases: the receiver after storing an event; a worker when a step ends a run
(``after_terminal``, a check of the run's actor, free for runs that are not events); the
reconciler every round for keys with a waiting run (runs that ended elsewhere: a cancel,
an expired approval, a dead letter).

Arrival order is the order in which event records were committed as seen by the releaser;
two events of a key received at the same moment on PostgreSQL may start in either order,
but never together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runtime.contract import TERMINAL_STATUSES
from runtime.event_config import EventSourceConfig
from runtime.scheduling.scheduler import Item, Ops
from runtime.step.collaborators import Scheduling
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.db import utcnow
from runtime.store.events import EventStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.events")

#: actors of event runs: ``event:<source>``
EVENT_ACTOR_PREFIX = "event:"
_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
#: compare-and-set attempts of one release before it leaves the key to the next releaser
_ATTEMPTS = 4


def _gated(run: Mapping[str, Any]) -> bool:
    step = str(run.get("workflow_step") or "")
    return run.get("status") == "waiting" and step.startswith(f"{WorkflowStep.ORDERED.value}:")


def _deadline_from_now(run: Mapping[str, Any]) -> datetime | None:
    """The run's whole ``run_timeout_s`` from its start: waiting for its turn is not
    running (a key with a long queue must not time its runs out before they start)."""
    created, deadline = run.get("created_at"), run.get("deadline_at")
    if not isinstance(created, datetime) or not isinstance(deadline, datetime):
        return deadline if isinstance(deadline, datetime) else None
    return utcnow() + (deadline - created)


class EventOrdering:
    def __init__(
        self,
        *,
        store: EventStore,
        dispatch: Scheduling,
        sources: Mapping[str, EventSourceConfig],
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.sources = sources

    def release(self, source: str, order_key: str, tenant: str) -> str | None:
        """Start the key's next run if its previous one ended; the run started (or None)."""
        for _ in range(_ATTEMPTS):
            active = self.store.active_run(source, order_key, tenant)
            if active is not None:
                run = self.store.run_brief(active)
                if run is not None and run["status"] not in _TERMINAL:
                    if _gated(run):  # won the key, never started: a crash in between
                        self._start(source, run)
                    return None
            nxt = self.store.next_waiting(source, order_key)
            if nxt is None:
                return None
            if self.store.claim_key(source, order_key, active, nxt["run_id"]):
                self._start(source, nxt)
                return str(nxt["run_id"])
        return None  # others are releasing this key right now: one of them wins

    def after_terminal(self, run: Mapping[str, Any]) -> None:
        """A run ended: if it is an event run of a ``per_key`` source, start the next run
        of its key. Never raises (the reconciler releases what this could not)."""
        actor = str(run.get("actor_id") or "")
        if not actor.startswith(EVENT_ACTOR_PREFIX):
            return
        source = self.sources.get(actor[len(EVENT_ACTOR_PREFIX) :])
        if source is None or source.ordering.policy != "per_key":
            return
        try:
            record = self.store.of_run(str(run["run_id"]))
            if record is not None and record["order_key"] is not None:
                self.release(record["source"], record["order_key"], record["tenant_id"])
        except Exception:
            log.warning("run %s: its key's next run was not released", run.get("run_id"),
                        exc_info=True)  # fmt: skip

    def reconcile(self, limit: int = 200) -> list[str]:
        """Release every key with a waiting run (at most ``limit`` keys): the runs started."""
        started = []
        for source, order_key, tenant in self.store.waiting_keys(limit):
            run_id = self.release(source, order_key, tenant)
            if run_id is not None:
                started.append(run_id)
        return started

    def _start(self, source: str, run: Mapping[str, Any]) -> None:
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], None)
        trace.add("released", source=source)
        moved = self.store.start_waiting(
            run["run_id"],
            workflow_step(WorkflowStep.RELEASED, source),
            trace.drain(),
            _deadline_from_now(run),
        )
        if not moved:
            return  # another releaser started it
        item = Item(run["run_id"], int(run["next_step"]), run["tenant_id"], run["route"],
                    run["priority"])  # fmt: skip
        # a crash before this leaves a queued run whose step is nowhere: the reconciler's
        # zombie scan queues it
        self.dispatch.schedule(Ops().enqueue(item).dispatch(1))
