"""Cancel, pause and resume a run an operator names; cancel many by filter.

A cancel is written to SQL first, checked before anything is written (another tenant's
run or an unknown id is ``RunNotFound``; a finished one ``InvalidTransition``):

* a **waiting** run (approval, paused) has no step in flight: it ends ``cancelled`` at once;
* a **queued or running** run moves to ``cancel_requested`` (its stop reason already
  ``cancelled:<actor>``, its workflow step ``cancelling:<mode>[+compensate]``). That status
  is the fence, read where it matters, not hoped to be noticed: a side effect's claim reads
  it in the claim's transaction (``immediate``: refused) and a step's checkpoint cannot
  go on from it (the same step is committed ending the run ``cancelled``); a step that
  starts stops at its guards. Then, in Redis, the immediate switch is set (``ctx.cancelled``,
  ``ctx.redis_effect`` refuses to commit), the run's queued or delayed step is taken out
  of the scheduler, and if no step of the run is in flight (none dispatched, its run lease
  free) the run ends ``cancelled`` now; otherwise the step in flight ends it.

``drain`` lets the step in flight finish, side effect included; ``immediate`` interrupts it
at its next boundary (the tool's timeout at the latest; a tool may poll ``ctx.cancelled``).
Either way nothing new starts. ``compensate`` undoes the run's succeeded side effects with
a compensator, newest first, once it has ended (``runtime.compensation``).

A pause finishes the step in flight and then leaves the run ``waiting``
(``paused:<actor>``) holding no slot, lease or budget hold; resume queues its next step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis

from runtime import admission, stop_reasons
from runtime.budgets.ledger import BudgetLedger
from runtime.controls import Controls
from runtime.dispatch import Dispatch
from runtime.errors import InvalidRequest, InvalidTransition, RunNotFound
from runtime.keys import Keys
from runtime.scheduling.scheduler import Item, Ops, Scheduler, item_of
from runtime.statuses import CancelMode, RunStatus, cancel_subject, read_cancel_request
from runtime.step_record import WorkflowStep
from runtime.store.approvals import ApprovalStore
from runtime.store.db import utcnow
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.cancellation")

#: an actor goes into a stop reason (``cancelled:<actor>``, ``paused:<actor>``: 200 chars)
MAX_ACTOR_CHARS = 190
#: most runs one bulk cancel acts on (a larger backlog takes more calls)
MAX_BULK = 100_000
#: furthest back ``older_than`` reaches
MAX_AGE_S = 3650 * 86400.0
#: statuses a bulk cancel may filter by (and looks at when given none)
BULK_STATUSES = (
    RunStatus.QUEUED.value,
    RunStatus.RUNNING.value,
    RunStatus.WAITING.value,
    RunStatus.CANCEL_REQUESTED.value,
)
_DEFAULT_BULK = BULK_STATUSES[:3]
#: a transition that lost a race (the run moved meanwhile) is decided again this often
_ATTEMPTS = 3


@dataclass(frozen=True)
class CancelFilter:
    """Which runs a bulk cancel takes: all the given criteria hold (at least one)."""

    tenant: str | None = None
    route: str | None = None
    #: one of ``BULK_STATUSES``; None: queued, running and waiting
    status: str | None = None
    #: created more than this many seconds ago
    older_than_s: float | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(field, problem) for each bad criterion; none given is a problem too."""
        found: list[tuple[str, str]] = []
        for name in ("tenant", "route"):
            value = getattr(self, name)
            problem = None if value is None else admission.identity_problem(name, value)
            if problem is not None:
                found.append((name, problem))
        if self.status is not None and self.status not in BULK_STATUSES:
            found.append(("status", f"status must be one of {', '.join(BULK_STATUSES)}"))
        age = self.older_than_s
        if age is not None and (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not math.isfinite(age)
            or not 0 <= age <= MAX_AGE_S
        ):
            found.append(("older_than_s", f"older_than_s must be 0..{MAX_AGE_S:g} seconds"))
        if not found and self == CancelFilter():
            found.append(("filter", "give at least one of tenant, route, status, older_than_s"))
        return found


@dataclass
class BulkCancel:
    """What a bulk cancel did (or, ``dry_run``, would do)."""

    #: runs the filter matches now
    matched: int
    #: runs cancelled (ended, or their cancel requested); with ``dry_run``, those it takes
    cancelled: list[str] = field(default_factory=list)
    #: run id -> why it was not (it finished meanwhile)
    skipped: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "cancelled": len(self.cancelled),
            "skipped": len(self.skipped),
            "dryRun": self.dry_run,
            "runIds": self.cancelled,
            "skippedRuns": self.skipped,
        }


def check_actor(actor: Any) -> str:
    problem = admission.identity_problem("actor", actor)
    if problem is None and len(actor) > MAX_ACTOR_CHARS:
        problem = f"actor is {len(actor)} characters; at most {MAX_ACTOR_CHARS}"
    if problem is not None:
        raise InvalidRequest(("actor",), problem)
    return str(actor)


def check_mode(mode: Any) -> CancelMode:
    try:
        return CancelMode(mode)
    except ValueError:
        modes = ", ".join(m.value for m in CancelMode)
        raise InvalidRequest(("mode",), f"mode must be one of {modes}") from None


class Cancellation:
    def __init__(
        self,
        *,
        store: RunStore,
        controls: Controls,
        scheduler: Scheduler,
        dispatch: Dispatch,
        ledger: BudgetLedger,
        redis: redis.Redis,
        keys: Keys,
        compensate: Callable[[str], Any],
        approvals: ApprovalStore,
        live_children: Callable[[str, str], list[str]] | None = None,
        child_ended: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.store = store
        self.approvals = approvals
        self.controls = controls
        self.scheduler = scheduler
        self.dispatch = dispatch
        self.ledger = ledger
        self.redis = redis
        self.keys = keys
        #: undo a run's succeeded side effects, newest first (``Compensations.compensate``)
        self.compensate = compensate
        #: (run, tenant) -> its child runs that have not ended: cancelled with it
        self.live_children = live_children
        #: (run, tenant): a run that ended here may be a child its parent waits for
        self.child_ended = child_ended

    # --- cancel ----------------------------------------------------------------------
    def cancel(
        self,
        run_id: str,
        actor: str,
        mode: str = CancelMode.IMMEDIATE.value,
        compensate: bool = False,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Cancel one run (see the module doc); returns its row after the cancel."""
        actor, how = check_actor(actor), check_mode(mode)
        if not isinstance(compensate, bool):
            raise InvalidRequest(("compensate",), "compensate must be true or false")
        for _ in range(_ATTEMPTS):
            run = self.store.get_run(run_id, tenant)  # RunNotFound: nothing written
            status = str(run["status"])
            if status == RunStatus.WAITING.value:
                if self._end_waiting(run, actor, compensate):
                    self._cancel_children(run, actor, how, compensate)
                    return self.store.read_run(run_id)
            elif status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value):
                if self._request(run, actor, how, compensate):
                    break
            elif status == RunStatus.CANCEL_REQUESTED.value:
                self._request_again(run, how, compensate)
                break
            else:
                raise InvalidTransition(run_id, status, RunStatus.CANCELLED.value)
        else:  # it kept moving under us: say where it is now
            now = self.store.get_run(run_id, tenant)
            raise InvalidTransition(run_id, str(now["status"]), RunStatus.CANCELLED.value)
        if how is CancelMode.IMMEDIATE:
            self._switch_on(run_id, actor)
        self.settle(run_id)
        self._cancel_children(run, actor, how, compensate)
        return self.store.read_run(run_id)

    def _cancel_children(
        self, run: dict[str, Any], actor: str, how: CancelMode, compensate: bool
    ) -> None:
        """A cancelled run's children are cancelled too (theirs in turn, as they are)."""
        if self.live_children is None:
            return
        for child in self.live_children(str(run["run_id"]), str(run["tenant_id"])):
            with contextlib.suppress(InvalidTransition):  # it ended meanwhile
                self.cancel(child, actor, how.value, compensate, str(run["tenant_id"]))

    def _request(self, run: dict[str, Any], actor: str, mode: CancelMode, compensate: bool) -> bool:
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], None)
        trace.add("cancel_requested", actor=actor, mode=mode.value, compensate=compensate)
        return self.store.request_cancel(
            run["run_id"],
            run["tenant_id"],
            RunStatus(run["status"]),
            stop_reason=stop_reasons.make("cancelled", actor),
            subject=cancel_subject(mode, compensate),
            events=trace.drain(),
        )

    def _request_again(self, run: dict[str, Any], mode: CancelMode, compensate: bool) -> None:
        """A run already being cancelled: a drain may become immediate, and compensation
        may be added; the first actor stays the one named."""
        old_mode, old_compensate = read_cancel_request(run["workflow_step"])
        new_mode = CancelMode.IMMEDIATE if CancelMode.IMMEDIATE in (mode, old_mode) else mode
        subject = cancel_subject(new_mode, compensate or old_compensate)
        if subject != cancel_subject(old_mode, old_compensate):
            self.store.set_cancel_subject(run["run_id"], subject)

    def _end_waiting(self, run: dict[str, Any], actor: str, compensate: bool) -> bool:
        """A waiting run (approval, paused) has no step in flight: it ends now."""
        reason = stop_reasons.make("cancelled", actor)
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], None)
        trace.add("cancel_requested", actor=actor, mode="immediate", compensate=compensate)
        trace.add("stop", reason=reason, status=RunStatus.CANCELLED.value, actor=actor)
        if not self.store.end_cancelled(
            run["run_id"],
            run["tenant_id"],
            RunStatus.WAITING,
            events=trace.drain(),
            stop_reason=reason,
        ):
            return False
        self._quietly(self.controls.clear_paused, run["run_id"])
        if run.get("approval_id"):
            # nobody may decide a call whose run is gone: out of the pending list
            self.approvals.withdraw(run["tenant_id"], run["run_id"], run["approval_id"], utcnow())
        self._finished(run["run_id"], int(run["next_step"]), compensate)
        return True

    def settle(self, run_id: str) -> bool:
        """For a run in ``cancel_requested``: take its queued or delayed step out of the
        scheduler and, if no step of it is in flight, end it ``cancelled`` now. True if it
        ended here. Safe to call again (a second cancel, an operator's retry)."""
        run = self.store.get_run(run_id)
        if run["status"] != RunStatus.CANCEL_REQUESTED.value:
            return False
        item = item_of(run, int(run["next_step"]))
        where = self.position(item)
        if where in ("queued", "delayed"):
            self.dispatch.schedule(Ops().drop(item).dispatch(1))
        elif where == "in_flight":
            return False  # dispatched or running: that step's guards or checkpoint end it
        if self.redis.exists(self.keys.run_lease(run_id)):
            return False  # a step is executing (between its checkpoint and its next step)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], item.step_no)
        trace.add("stop", reason=run["stop_reason"], status=RunStatus.CANCELLED.value)
        if not self.store.end_cancelled(
            run_id,
            None,
            RunStatus.CANCEL_REQUESTED,
            events=trace.drain(),
            next_step=item.step_no,
        ):
            return False  # a step ended it (or moved it on and will end it) meanwhile
        self._finished(run_id, item.step_no, read_cancel_request(run["workflow_step"])[1])
        return True

    def _finished(self, run_id: str, next_step: int, compensate: bool) -> None:
        """After the run ended cancelled here: no budget hold outlives it (a step that died
        holding one is settled to what it recorded), and compensation if asked."""
        for step in (next_step - 1, next_step):
            if step >= 0 and self.redis.exists(self.keys.budget_hold(run_id, step)):
                self.ledger.settle(run_id, step, self.store.step_spend(run_id, step))
        if self.child_ended is not None:
            # a child's carved budget is settled and its waiting parent told, now
            row = self.store.get_run(run_id)
            if row.get("parent_run_id") is not None:
                self.child_ended(run_id, str(row["tenant_id"]))
        if compensate:
            self.compensate(run_id)

    def _switch_on(self, run_id: str, actor: str) -> None:
        try:
            self.controls.set_cancelled(run_id, actor)
        except redis.RedisError:
            # SQL is the fence (claims and checkpoints read it); the switch only lets a
            # step in flight and a polling tool learn it sooner
            log.warning("run %s: could not set its immediate-cancel switch", run_id, exc_info=True)

    # --- bulk ------------------------------------------------------------------------
    def cancel_many(
        self,
        filter: CancelFilter,
        actor: str,
        *,
        mode: str = CancelMode.IMMEDIATE.value,
        compensate: bool = False,
        dry_run: bool = False,
        limit: int = 1000,
    ) -> BulkCancel:
        """Cancel the runs ``filter`` matches, oldest first, at most ``limit``; with
        ``dry_run``, count them and change nothing. Each is cancelled as by ``cancel``
        (scoped to the filter's tenant, if it names one)."""
        actor, how = check_actor(actor), check_mode(mode)
        problems = filter.problems()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BULK:
            problems.append(("limit", f"limit must be an integer 1..{MAX_BULK}"))
        if problems:
            raise InvalidRequest(
                tuple(name for name, _ in problems), "; ".join(text for _, text in problems)
            )
        before = None
        if filter.older_than_s is not None:
            before = utcnow() - timedelta(seconds=filter.older_than_s)
        matched, rows = self.store.cancel_candidates(
            tenant_id=filter.tenant,
            route=filter.route,
            statuses=[filter.status] if filter.status else _DEFAULT_BULK,
            created_before=before,
            limit=limit,
        )
        report = BulkCancel(matched, dry_run=dry_run)
        if dry_run:
            report.cancelled = [str(r["run_id"]) for r in rows]
            return report
        for row in rows:
            run_id = str(row["run_id"])
            try:
                self.cancel(run_id, actor, how.value, compensate, filter.tenant)
            except (InvalidTransition, RunNotFound) as exc:
                report.skipped[run_id] = str(exc)
            else:
                report.cancelled.append(run_id)
        return report

    # --- pause and resume --------------------------------------------------------------
    def pause(self, run_id: str, actor: str, tenant: str | None = None) -> dict[str, Any]:
        """Pause a queued or running run: its step in flight finishes, then it waits
        (``paused:<actor>``) holding nothing. A run that has no step in flight waits at
        once. ``InvalidTransition`` for any other run (finished, waiting, being cancelled)."""
        actor = check_actor(actor)
        run = self.store.get_run(run_id, tenant)
        if run["status"] not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value):
            raise InvalidTransition(run_id, str(run["status"]), "paused")
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], None)
        trace.add("pause_requested", actor=actor)
        self.store.add_events(trace.drain())
        # the switch the step in flight (its checkpoint) and the next step's guards read
        self.controls.set_paused(run_id, actor)
        self._land_pause(run_id, actor)
        return self.store.read_run(run_id)

    def _land_pause(self, run_id: str, actor: str) -> None:
        run = self.store.get_run(run_id)
        if run["status"] not in (RunStatus.QUEUED.value, RunStatus.RUNNING.value):
            return
        item = item_of(run, int(run["next_step"]))
        where = self.position(item)
        taken = where in ("queued", "delayed")
        if taken:
            self.dispatch.schedule(Ops().drop(item).dispatch(1))
        elif where == "in_flight" or self.redis.exists(self.keys.run_lease(run_id)):
            return  # the step in flight is the last: its checkpoint lands the pause
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], item.step_no)
        trace.add("paused", actor=actor, at_step=item.step_no)
        landed = self.store.pause_run(
            run_id,
            item.step_no,
            actor_reason=stop_reasons.make("paused", actor),
            subject=actor,
            events=trace.drain(),
        )
        if not landed and taken:
            # a step moved the run on, or a cancel came: the step goes back in the queue
            # (its guards pause it, or end the cancelled run)
            self.dispatch.schedule(Ops().enqueue(item).dispatch(1))

    def resume(self, run_id: str, actor: str, tenant: str | None = None) -> dict[str, Any]:
        """Resume a paused run: its next step goes back into its tenant's queue."""
        actor = check_actor(actor)
        run = self.store.get_run(run_id, tenant)
        if not _paused(run):
            shown = str(run["status"])
            if run["stop_reason"]:
                shown += f" ({run['stop_reason']})"
            raise InvalidTransition(run_id, shown, "resumed")
        # first, or the next step would pause again
        self.controls.clear_paused(run_id)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], None)
        trace.add("resumed", actor=actor, at_step=run["next_step"])
        if not self.store.resume_run(run_id, run["tenant_id"], actor=actor, events=trace.drain()):
            now = self.store.get_run(run_id, tenant)
            raise InvalidTransition(run_id, str(now["status"]), "resumed")
        self.dispatch.schedule(Ops().enqueue(item_of(run, int(run["next_step"]))).dispatch(1))
        return self.store.read_run(run_id)

    # --- helpers -----------------------------------------------------------------------
    def position(self, item: Item) -> str | None:
        """Where the scheduler holds the step: ``queued``, ``delayed``, ``in_flight``
        (dispatched or running) or None. One MULTI: an item moving is seen in one place."""
        k = self.scheduler.k
        member = item.encode()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zscore(k.ready(item.tenant), member)
        pipe.zscore(k.delayed, member)
        pipe.zscore(k.inflight, member)
        queued, delayed, in_flight = pipe.execute()
        if in_flight is not None:
            return "in_flight"
        if queued is not None:
            return "queued"
        return "delayed" if delayed is not None else None

    @staticmethod
    def _quietly(action: Callable[[str], Any], run_id: str) -> None:
        try:
            action(run_id)
        except redis.RedisError:
            log.warning("run %s: a live switch could not be updated", run_id, exc_info=True)


def _paused(run: dict[str, Any]) -> bool:
    state = str(run["workflow_step"] or "").partition(":")[0]
    return run["status"] == RunStatus.WAITING.value and state == WorkflowStep.PAUSED.value
