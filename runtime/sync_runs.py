"""The ``sync`` execution mode: the caller's process runs its run's steps itself, with the
same step runner a worker uses (guards, budget reservations, policy, leases, checkpoints,
trace), under the route's ``sync_timeout_s``.

The scheduler still decides when a step runs: the run is admitted and its steps dispatched
through ``sched.lua`` like any other (route concurrency, tenant caps, fairness), and only
the delivery differs. The caller's thread claims its run's steps (``Dispatch.claiming``): a
step of that run dispatched on this thread (at admission, by this run's own checkpoints, or
by the dispatch this loop asks for while it waits) is run here instead of published to
Celery. A step dispatched anywhere else (a worker's checkpoint or pump took the slot) runs
on a worker; the caller then only watches the run.

Bounded: once the deadline passes, no further step starts here (the step given to the
caller at admission always starts here, however long admitting took); a step this thread holds
but has not started is published (the claim does that when it ends), and the rest runs on
workers. A step already started finishes under its own limits (its tools' timeouts), so a
caller waits at most ``sync_timeout_s`` plus one step. Nothing is run twice: a step is run
by whoever it was delivered to, and a copy that finds it checkpointed only settles it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from runtime import admission, report_context
from runtime.config import RuntimeConfig
from runtime.contract import TERMINAL_STATUSES, RunStatus
from runtime.dispatch import Claim, Dispatch
from runtime.scheduling.scheduler import Item, Ops
from runtime.step.runner import StepRunner
from runtime.step.state import Delivery
from runtime.store.runs import RunStore
from runtime.submissions import Admitted, Submissions

log = logging.getLogger("agentrt.sync")

#: a sync run's caller stops waiting once its run is in one of these
SETTLED = frozenset(s.value for s in TERMINAL_STATUSES | {RunStatus.WAITING})
#: results after which this process must not run the run's steps: the step goes to the
#: workers (a new config was applied) or to recovery (Redis lost its state)
_HAND_OVER = (Delivery.CONFIG_CHANGED.value,)
_STOP = (Delivery.STATE_UNKNOWN.value,)
#: how long the caller sleeps between looks at a run whose step it was not given (grows)
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25


class SyncRuns:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        submissions: Submissions,
        dispatch: Dispatch,
        steps: StepRunner,
        store: RunStore,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.submissions = submissions
        self.dispatch = dispatch
        self.steps = steps
        self.store = store
        self.clock = clock
        self.sleep = sleep

    def is_sync(self, req: admission.AdmissionRequest) -> bool:
        """Does this request's run get the ``sync`` mode (its route's, or one it may ask)?"""
        route = self.config.routes.get(req.route) if isinstance(req.route, str) else None
        return route is not None and admission.execution_mode(route, req) == "sync"

    def admit_and_run(self, req: admission.AdmissionRequest) -> Admitted:
        """Admit the request and, for a run it created, run its steps here until the run
        settles or the route's ``sync_timeout_s`` passes; the admitted run as it is then.
        A repeat of an admitted request returns its run as it is (it does not wait)."""
        route = self.config.routes[req.route]
        deadline = self.clock() + route.sync_timeout_s
        with self.dispatch.claiming() as claim:
            admitted = self.submissions.admit(req)
            run_id = str(admitted.row["run_id"])
            self.dispatch.publish(claim.narrow(run_id))
            if not admitted.created or admitted.refusal is not None:
                return admitted
            self._drive(claim, run_id, deadline)
            # read before the claim hands what it holds to the workers: the run as it was
            # when this caller stopped, not a race with the worker that takes over
            return dataclasses.replace(admitted, row=self.store.read_run(run_id))

    def _drive(self, claim: Claim, run_id: str, deadline: float) -> None:
        delay = POLL_FIRST_S
        # a step given to this caller at admission runs here even if admitting took the
        # whole timeout (a loaded database): the caller waits at most the timeout plus one
        # step either way, and a sync run never goes to the workers without having started
        first = claim.take()
        if first is not None and not self._run(claim, first):
            return
        while self.clock() < deadline:
            item = claim.take()
            if item is not None:
                if not self._run(claim, item):
                    return
                delay = POLL_FIRST_S
                continue
            if self.store.statuses([run_id]).get(run_id) in SETTLED:
                return
            # not given this run's step (yet): its route or tenant is at its limit, or a
            # worker runs it. Ask the scheduler for what may run now, as a worker's pump
            # does; a step of this run it dispatches here is run here, others are published
            self.dispatch.schedule(Ops().promote().dispatch(1))
            if not claim.items:
                self.sleep(min(delay, max(0.0, deadline - self.clock())))
                delay = min(delay * 1.5, POLL_MAX_S)

    def _run(self, claim: Claim, item: Item) -> bool:
        """Run one delivered step; False when this process must stop running the run (the
        step handed back to the claim is then published to the workers)."""
        # the step's report notes (ids, secret values) end with it: this thread goes on to
        # serve other requests (tasks.steps scopes a worker's steps the same way)
        with report_context.step_context():
            try:
                result = self.steps.run(item, 0, sync=True)
            except Exception:
                # an infrastructure error (the database or Redis went away): a worker runs
                # the step instead, or finds it checkpointed and only settles it
                log.warning(
                    "sync step %s/%s failed here; handed to the workers",
                    item.run_id,
                    item.step_no,
                    exc_info=True,
                )
                claim.items.insert(0, item)
                return False
        if result.outcome in _HAND_OVER:
            claim.items.insert(0, item)
            return False
        return result.outcome not in _STOP
