"""Applying a step's decision: the checkpoint (step, run state, trace events, spend, policy
decisions, side effect, stop reason) in one SQL transaction, a compare-and-set on the run's
``next_step``; then one Redis round trip settles the budget, releases the run lease, frees
the step's slot and queues the next step; then the dispatched steps are published."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from runtime import scripts, stop_reasons
from runtime.budgets.ledger import BudgetLedger
from runtime.contract import TERMINAL_STATUSES, RunStatus
from runtime.errors import CancelRequested, StaleWrite
from runtime.locks.leases import Lease, LeaseManager
from runtime.scheduling.scheduler import Item, Ops, Scheduler, item_of, now_ms
from runtime.statuses import read_cancel_request
from runtime.step import timings
from runtime.step.budget import Budgeting, spend_row
from runtime.step.collaborators import (
    AfterCancel,
    AfterFailure,
    AfterTerminal,
    DeadLettering,
    LiveControls,
    Scheduling,
)
from runtime.step.state import Delivery, Move, Step, StepResult
from runtime.step_record import StepKind, WorkflowStep, workflow_step
from runtime.store.db import utcnow
from runtime.store.runs import Checkpoint, RunStore
from runtime.tracing import TraceBuffer, redact

log = logging.getLogger("agentrt.steps")


class Checkpointer:
    def __init__(
        self,
        *,
        store: RunStore,
        ledger: BudgetLedger,
        leases: LeaseManager,
        scheduler: Scheduler,
        redis: redis.Redis,
        dispatch: Scheduling,
        dead_letters: DeadLettering,
        after_failure: AfterFailure,
        budgeting: Budgeting,
        controls: LiveControls,
        after_cancel: AfterCancel,
        after_terminal: AfterTerminal,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.leases = leases
        self.scheduler = scheduler
        self.redis = redis
        self.dispatch = dispatch
        self.dead_letters = dead_letters
        self.after_failure = after_failure
        self.budgeting = budgeting
        self.controls = controls
        self.after_cancel = after_cancel
        self.after_terminal = after_terminal

    def finish(self, st: Step, move: Move, lease: Lease) -> StepResult:
        """Apply ``move``: the one place a step's decision takes effect."""
        actual = self.budgeting.actual_spend(st) if st.budget.reserved else None
        if move.stop_reason:
            st.trace.add("stop", reason=move.stop_reason, status=move.status.value)
        st.trace.add(
            "checkpoint", step=st.step_no, outcome=str(move.outcome), status=move.status.value
        )
        if actual is not None:
            st.trace.add("budget_settle", actual=actual)
        cp = self._checkpoint_of(st, move, actual)
        committing = time.monotonic()
        try:
            move = self._commit(st, move, cp, actual)
        except StaleWrite as exc:
            log.info("step %s/%s lost to another copy: %s", st.run_id, st.step_no, exc)
            if st.budget.reserved:
                # the hold is the step's, shared with the copy that won: settle it to what
                # that copy recorded (a release would drop the winner's spend if it had not
                # settled yet: its own settle then finds no hold)
                self.ledger.settle(
                    st.run_id, st.step_no, self.store.step_spend(st.run_id, st.step_no)
                )
            self.leases.release(lease)
            return StepResult(Delivery.STALE_WRITE.value)
        except Exception:
            # the checkpoint failed for a reason nobody could know before (the database went
            # away): a side effect that ran must still have its outcome on record, or a
            # retry could not tell that it ran
            if st.effect_update is not None:
                self._record_effect_outcome(st.effect_update)
            raise
        st.stage_ms["checkpoint"] = int((time.monotonic() - committing) * 1000)
        _return_unstarted(self.ledger, st, move)
        kept = self._settle_and_schedule(st, move, lease, actual, cp.step["duration_ms"])
        if move.status in TERMINAL_STATUSES:
            # an event run of a per_key source lets the next run of its key start (never
            # raises: the reconciler releases what this could not)
            self.after_terminal(st.run)
        try:
            if move.dead_letter is not None:
                dl_class, error_type, error = move.dead_letter
                self.dead_letters.dead_letter_step(
                    st.run_id, st.step_no + 1, dl_class, error_type=error_type, error=error
                )
                return StepResult.dead_lettered(dl_class, kept)
            if move.status == RunStatus.FAILED:
                self.after_failure(st.run)
            elif move.status == RunStatus.CANCELLED and self._compensate_after(st, move):
                self.after_cancel(st.run_id)
        except BaseException:
            if kept is not None:  # dispatched and not run: it must not wait for its lease
                self.dispatch.publish([kept])
            raise
        return StepResult.of(move, st.step_no, kept)

    def _commit(self, st: Step, move: Move, cp: Checkpoint, actual: dict[str, int] | None) -> Move:
        """Commit the checkpoint; the move that took effect. A run asked to cancel while
        its step worked does not go on as if nothing happened: the same step (its record,
        spend, decisions, side-effect outcome) is committed ending the run ``cancelled``."""
        if (
            move.status == RunStatus.CANCELLED
            and st.run["status"] != RunStatus.CANCEL_REQUESTED.value
        ):
            # the step learned of a cancel while it worked (a refused claim, a tool that
            # stopped on it): what the request asked for is on the row it is about to end
            current = self.store.get_run(st.run_id)
            if current["status"] == RunStatus.CANCEL_REQUESTED.value:
                st.cancel_request = current["workflow_step"]
        try:
            self.store.checkpoint(cp)
            return move
        except CancelRequested as req:
            cancelled = Move(
                RunStatus.CANCELLED,
                move.kind,
                move.outcome,
                observation=move.observation,
                stop_reason=req.stop_reason or stop_reasons.make("cancelled", "operator"),
                output=move.output,
                run_updates={**move.run_updates, "pending_proposal": None},
            )
            # what the step did stays on record; the run's end is the cancel
            cancelled.run_updates.pop("workflow_step", None)
            st.trace.events = [e for e in cp.events if e.get("run_id") == st.run_id]
            st.trace.add("stop", reason=cancelled.stop_reason, status=RunStatus.CANCELLED.value)
            st.cancel_request = req.workflow_step
            st.pending_secrets = None
            self.store.checkpoint(self._checkpoint_of(st, cancelled, actual))
            return cancelled

    @staticmethod
    def _compensate_after(st: Step, move: Move) -> bool:
        """Whether the cancel that ended the run asked for compensation (``--compensate``):
        as the run stored it when the step started, or when its checkpoint found it."""
        stored = st.cancel_request
        if stored is None and st.run["status"] == RunStatus.CANCEL_REQUESTED.value:
            stored = st.run["workflow_step"]
        return stored is not None and read_cancel_request(stored)[1]

    def _checkpoint_of(self, st: Step, move: Move, actual: dict[str, int] | None) -> Checkpoint:
        now = utcnow()
        updates = self._run_updates(st, move, now)
        children, events = _children(st, move)
        return Checkpoint(
            run_id=st.run_id,
            step_no=st.step_no,
            status=move.status,
            run_updates=updates,
            step=_step_row(st, move, now),
            events=events,
            spend=spend_row(st, actual) if actual is not None else None,
            decisions=st.decisions,
            effect_update=st.effect_update,
            pending_secrets=st.pending_secrets,
            approval=st.approval_request,
            evidence=st.evidence,
            rows=st.rows,
            clear_pending_secrets="pending_proposal" in updates
            and bool((st.run["pending_proposal"] or {}).get("secret_args")),
            new_runs=children,
        )

    @staticmethod
    def _run_updates(st: Step, move: Move, now: Any) -> dict[str, Any]:
        """What the checkpoint changes on the run row besides its status."""
        updates: dict[str, Any] = {**st.run_updates, **move.run_updates}
        if "attempt" not in updates and move.kind != StepKind.DEFERRED and st.run["attempt"]:
            updates["attempt"] = 0  # the failing call got past its failure
        if st.used_proposer:
            updates["turns"] = int(st.run["turns"]) + 1
        if move.stop_reason:
            updates["stop_reason"] = move.stop_reason
        if move.output is not None:
            updates["output"] = redact(move.output)
        if move.status in TERMINAL_STATUSES:
            updates["finished_at"] = now
            updates["workflow_step"] = updates.get("workflow_step") or workflow_step(
                WorkflowStep.FINISHED
            )
        if st.run["started_at"] is None:
            updates["started_at"] = st.started_at
        updates["checkpoint_ref"] = f"step:{st.step_no}"
        return updates

    def _settle_and_schedule(
        self,
        st: Step,
        move: Move,
        lease: Lease,
        actual: dict[str, int] | None,
        duration_ms: int,
    ) -> Item | None:
        """One round trip: settle the budget, release the run lease, free the step's slot,
        queue the next step and dispatch what may run now; then publish it, or keep it for
        this task to run next (``runtime.step.chain``): the step kept, if any."""
        ops = Ops().complete(item_of(st.run, st.step_no))
        following = None
        if move.continues and move.dead_letter is None:
            following = item_of(st.run, st.step_no + 1)
            if move.countdown_s:
                ops.delay(following, now_ms() + int(move.countdown_s * 1000))
            else:
                ops.enqueue(following)
        for child in _children(st, move, drain=False)[0]:  # committed: its first step
            ops.enqueue(item_of(child, 0))
        ops.promote().dispatch(1)  # the slot this step frees; the pump fills the rest

        def settle_release_schedule(pipe: Any) -> None:
            if actual is not None:
                self.ledger.settle_in(pipe, st.run_id, st.step_no, actual)
            self.leases.release_in(pipe, lease)
            # before the scheduler's calls: the results read below count from the end
            timings.observe_in(pipe, self.scheduler.k.histograms, st, duration_ms)
            self.scheduler.queue_in(pipe, ops)
            self.scheduler.observe_step_time(pipe, st.run["route"], duration_ms)
            if following is not None:  # a pause asked for while this step ran
                pipe.get(self.controls.pause_key(st.run_id))

        results = scripts.run_pipeline(self.redis, settle_release_schedule)
        scheduled = results[-3] if following is not None else results[-2]
        outcome = self.scheduler.outcome(scheduled)
        dispatched = outcome.dispatched
        if following is not None and results[-1] is not None:
            dispatched = land_pause(
                self.store, self.dispatch, st, following, results[-1], dispatched
            )
        kept = None
        # steps dispatched earlier and not started yet (waiting in Celery, or just kept by
        # another task): the chain decides whether running this one first overtakes them
        waiting = outcome.unstarted - len(dispatched)
        if dispatched and st.keep is not None and st.keep(dispatched[0], waiting):
            kept = dispatched[0]
        self.dispatch.publish([item for item in dispatched if item is not kept])
        return kept

    def fail(self, run_id: str, step_no: int, failure_class: str) -> bool:
        """End a run whose step failed for good outside the loop as ``failed:<class>``.
        A no-op if the step was checkpointed meanwhile."""
        run = self.store.get_run(run_id)
        done = Ops().complete(item_of(run, step_no)).dispatch(2)
        if run["next_step"] == step_no and run["status"] == RunStatus.CANCEL_REQUESTED.value:
            # the run was being cancelled: it ends cancelled, not failed
            trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], step_no)
            trace.add("stop", reason=run["stop_reason"], status=RunStatus.CANCELLED.value)
            ended = self.store.end_cancelled(
                run_id, None, RunStatus.CANCEL_REQUESTED, events=trace.drain(), next_step=step_no
            )
            self.dispatch.schedule(done)
            self.ledger.release(run_id, step_no)
            return ended
        if run["next_step"] != step_no or run["status"] not in (
            RunStatus.QUEUED.value,
            RunStatus.RUNNING.value,
        ):
            self.dispatch.schedule(done)
            return False
        reason = stop_reasons.make("failed", failure_class)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], step_no)
        trace.add("step_failed", error_class=failure_class)
        trace.add("stop", reason=reason, status=RunStatus.FAILED.value)
        now = utcnow()
        cp = Checkpoint(
            run_id=run_id,
            step_no=step_no,
            status=RunStatus.FAILED,
            run_updates={
                "stop_reason": reason,
                "finished_at": now,
                "workflow_step": workflow_step(WorkflowStep.FINISHED),
            },
            step={
                "run_id": run_id,
                "tenant_id": run["tenant_id"],
                "step_no": step_no,
                "kind": StepKind.FAILED.value,
                "proposal": None,
                "outcome": failure_class,
                "observation": {"error_class": failure_class},
                "started_at": now,
                "finished_at": now,
                "duration_ms": 0,
            },
            events=trace.drain(),
        )
        try:
            self.store.checkpoint(cp)
        except StaleWrite:
            return False
        finally:
            self.dispatch.schedule(done)
        self.ledger.release(run_id, step_no)
        return True

    def _record_effect_outcome(self, effect_update: dict[str, Any]) -> None:
        try:
            self.store.record_effect_outcome(effect_update)
        except Exception:
            log.exception(
                "side effect %s: its outcome could not be recorded either; a retry treats it "
                "as unknown (same idempotency key, or an operator for an irreversible tool)",
                effect_update["idempotency_key"],
            )


def _delegates(move: Move) -> bool:
    """Whether ``move`` makes the run wait for a child run its step started."""
    reason = move.stop_reason or ""
    return move.status == RunStatus.WAITING and stop_reasons.kind_of(reason) == "delegated"


def _children(
    st: Step, move: Move, *, drain: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The child runs ``move`` commits (those the step started, if it makes the run wait
    for them; else none: a child exists only with the checkpoint that waits for it) and
    the step's trace events (drained), the children's first ones included."""
    children = st.new_runs if _delegates(move) else []
    events = st.trace.drain() if drain else []
    if children and drain:
        events.extend(st.new_run_events)
    return children, events


def _return_unstarted(ledger: BudgetLedger, st: Step, move: Move) -> None:
    """A step that carved a child's budget and did not start the child (a cancel ended
    the run at its checkpoint): the budget goes back to the run."""
    if st.new_runs and not _delegates(move):
        ledger.settle_child(st.run_id, st.step_no, {})


def land_pause(
    store: RunStore,
    dispatch: Scheduling,
    st: Step,
    following: Item,
    raw_actor: Any,
    dispatched: list[Item],
) -> list[Item]:
    """The run was paused while its step ran: that step was its last. Its next step, just
    queued (or dispatched and not yet published), is taken back - freeing the slot it may
    have taken - and the run waits (``paused:<actor>``) holding nothing. If a cancel got
    there first, the step goes back to the queue: its guards end the run. Returns what
    is left to publish."""
    actor = raw_actor.decode(errors="replace") if isinstance(raw_actor, bytes) else str(raw_actor)
    actor = actor[:190] or "operator"
    dispatch.schedule(Ops().drop(following).dispatch(1))
    trace = TraceBuffer(st.run_id, st.tenant_id, st.run["trace_id"], following.step_no)
    trace.add("paused", actor=actor, at_step=following.step_no)
    if not store.pause_run(
        st.run_id,
        following.step_no,
        actor_reason=stop_reasons.make("paused", actor),
        subject=actor,
        events=trace.drain(),
    ):
        dispatch.schedule(Ops().enqueue(following).dispatch(1))
    return [item for item in dispatched if item != following]


def _step_row(st: Step, move: Move, now: Any) -> dict[str, Any]:
    """The step's row: what it proposed, decided and observed (redacted), and its usage."""
    return {
        "run_id": st.run_id,
        "tenant_id": st.tenant_id,
        "step_no": st.step_no,
        "kind": str(move.kind),
        "proposal": redact(st.proposal),
        "outcome": str(move.outcome),
        "observation": redact(move.observation),
        "input_tokens": st.usage.input_tokens,
        "output_tokens": st.usage.output_tokens,
        "model_version": st.model_version,
        "started_at": st.started_at,
        "finished_at": now,
        "duration_ms": int((time.monotonic() - st.started) * 1000),
    }
