"""Dispatch: run scheduler operations, then publish what they dispatched.

The publisher (``runtime.ports.StepPublisher``) is built on first use: a process that
never dispatches (a read-only command) never builds a Celery app.

A ``sync`` run's caller claims its run's steps on its own thread (``claiming``): a step of
that run the scheduler dispatches from this thread is kept for the caller to run
(``runtime.sync_runs``) instead of being published; every other step is published as
usual. The scheduler still decides which step takes which slot; a claim only changes where
a dispatched step is delivered, and what a claim still holds when it ends is published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from runtime.keys import Keys
from runtime.ports import StepPublisher
from runtime.scheduling.scheduler import Item, Ops, Outcome, Scheduler

log = logging.getLogger("agentrt.service")

#: a worker that has not reported for this long no longer counts as capacity
HEARTBEAT_TTL_MS = 6000


@dataclass
class Claim:
    """The steps of one run dispatched on the claiming thread, kept for it to run. Before
    the run exists (``run_id`` None, during its admission) every step is held, and
    ``narrow`` hands back the other runs' ones."""

    run_id: str | None = None
    items: list[Item] = field(default_factory=list)

    def wants(self, item: Item) -> bool:
        return self.run_id is None or item.run_id == self.run_id

    def narrow(self, run_id: str) -> list[Item]:
        """Keep only ``run_id``'s steps from now on; the others held so far (to publish)."""
        self.run_id = run_id
        others = [item for item in self.items if item.run_id != run_id]
        self.items = [item for item in self.items if item.run_id == run_id]
        return others

    def take(self) -> Item | None:
        return self.items.pop(0) if self.items else None


class Dispatch:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        redis: redis.Redis,
        keys: Keys,
        worker_lost_retries: int,
        publisher: StepPublisher | None = None,
        publisher_factory: Callable[[], StepPublisher] | None = None,
    ) -> None:
        if publisher is None and publisher_factory is None:
            raise ValueError("Dispatch needs a publisher or a publisher factory")
        self.scheduler = scheduler
        self.redis = redis
        self.keys = keys
        self.worker_lost_retries = worker_lost_retries
        self._publisher = publisher
        self._publisher_factory = publisher_factory
        # a claim belongs to the thread that runs its sync run (an API request's thread)
        self._local = threading.local()

    @property
    def publisher(self) -> StepPublisher:
        if self._publisher is None:
            assert self._publisher_factory is not None
            self._publisher = self._publisher_factory()
        return self._publisher

    def schedule(self, ops: Ops) -> Outcome:
        """Run scheduler operations and publish what they dispatched."""
        outcome = self.scheduler.run(ops)
        self.publish(outcome.dispatched)
        return outcome

    @contextmanager
    def claiming(self) -> Iterator[Claim]:
        """Keep the steps dispatched on this thread for the caller (see the module doc);
        on exit, whatever the claim still holds is published: nothing dispatched is lost.
        A claim made inside another (a sync submit from a sync step's tool) replaces it
        until it ends: the outer run's steps dispatched meanwhile go to the workers."""
        outer: Claim | None = getattr(self._local, "claim", None)
        claim = Claim()
        self._local.claim = claim
        try:
            yield claim
        finally:
            self._local.claim = outer
            left, claim.items = claim.items, []
            self.publish(left)

    def publish(self, items: list[Item]) -> None:
        claim: Claim | None = getattr(self._local, "claim", None)
        for item in items:
            if claim is not None and claim.wants(item):
                claim.items.append(item)
                continue
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

    def pump(
        self, worker: str | None = None, processes: int = 0, max_items: int = 100
    ) -> tuple[Outcome, dict[Item, int]]:
        """The periodic scheduler duties a worker runs: report capacity, promote delayed
        steps whose time came, expire slot leases of dead workers, dispatch. Returns the
        outcome and the handed-back steps whose owner died too often (not published: the
        caller dead-letters them), with how often it died."""
        ops = Ops()
        if worker:
            ops.heartbeat(worker, processes, HEARTBEAT_TTL_MS)
        outcome = self.scheduler.run(ops.promote(max_items).expire(max_items).dispatch(max_items))
        lost = self._lost_too_often(outcome.handed_back)
        self.publish([item for item in outcome.dispatched if item not in lost])
        return outcome, lost

    def _lost_too_often(self, handed_back: list[Item]) -> dict[Item, int]:
        """Handed-back steps whose owner died more often than AGENTRT_WORKER_LOST_RETRIES:
        dead-lettered on the (retries + 1)th death, the one that brings the count over."""
        if not handed_back:
            return {}
        counts = self.redis.hmget(
            self.keys.scheduler().deaths, [item.encode() for item in handed_back]
        )
        limit = self.worker_lost_retries
        return {
            item: int(n)
            for item, n in zip(handed_back, counts, strict=True)
            if n is not None and int(n) > limit
        }
