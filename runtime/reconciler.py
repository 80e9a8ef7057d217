"""The reconciler: heals what dying workers and lost messages leave behind.

Every worker's pump thread calls ``reconcile()`` every few seconds; a Redis lock (``SET NX
PX`` on ``keys.reconciler_lock()``, held for the whole interval and never released early)
makes that one round per interval across all workers. A round:

1. releases budget holds whose step died without settling (``ledger.release_expired``);
2. re-enqueues *zombie* runs: queued or running, not updated for longer than a grace (the
   step lease ttl by default, so a step still executing is never one), whose current step
   (``next_step``) is nowhere in the scheduler - not in its tenant's ready queue, not
   delayed, not in flight - and whose step lease is free. A process that dies between a
   SQL write and the Redis write that schedules the next step (admission's insert, a
   checkpoint) leaves one. Re-enqueueing is safe: the enqueue is idempotent, and a
   duplicate step stops at the run lease or at the checkpoint's compare-and-set;
3. runs again compensations whose worker died half-way;
4. expires approvals nobody decided in time: the approval ``expired``, its run stopped
   ``approval_expired`` (``Approvals.expire_due``);
4b. starts event runs whose key's previous run ended where nothing released the key (a
   cancel, an expired approval; ``EventOrdering.reconcile``);
5. applies dead-letter retention, at most once an hour (per process);
6. applies memory retention every round: deletes memories past their expiry and
   ``run``-retention memories of ended runs (``MemoryStore.delete_expired``, batched).

Each round looks at no more than ``batch`` candidates, oldest first; a cursor carries the
scan on where the previous round of this process stopped, so a long backlog of runs that
legitimately wait in ready queues cannot hide a zombie behind it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from runtime.approvals import Approvals
from runtime.budgets.ledger import BudgetLedger
from runtime.compensation import Compensations
from runtime.contract import RunStatus
from runtime.dead_letters import DeadLetters
from runtime.dispatch import Dispatch
from runtime.keys import Keys
from runtime.scheduling.scheduler import Item, Ops, Scheduler
from runtime.store.db import utcnow
from runtime.store.recovery_reads import ReconcilerReads
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.reconciler")

#: one round per this many seconds across all workers (the lock's ttl)
DEFAULT_INTERVAL_S = 5.0
#: candidate runs examined per round
DEFAULT_BATCH = 500
#: dead-letter retention runs at most this often (per process)
RETENTION_EVERY_S = 3600.0
#: a run in cancel_requested whose step was lost is healed too: its step ends it cancelled
ACTIVE_STATUSES = (
    RunStatus.QUEUED.value,
    RunStatus.RUNNING.value,
    RunStatus.CANCEL_REQUESTED.value,
)


@dataclass
class ReconcileReport:
    #: False: another process holds this interval's round; nothing else was done
    held_lock: bool
    #: budget holds of dead steps released
    expired_holds: int = 0
    #: runs whose lost step was queued again
    zombies: list[str] = field(default_factory=list)
    #: side effects whose unfinished compensation was run again
    compensations: list[str] = field(default_factory=list)
    #: approvals expired this round (their runs stopped approval_expired)
    expired_approvals: list[str] = field(default_factory=list)
    #: event runs started because the runs before them on their key had ended
    released: list[str] = field(default_factory=list)
    #: parents resumed because their child had ended (``runtime.delegations``)
    parents_resumed: list[str] = field(default_factory=list)
    #: dead letters deleted by retention; None when retention was not due this round
    retention_deleted: int | None = None
    #: memories deleted by retention this round
    memories_expired: int = 0
    #: phases that failed this round (each logged with its traceback)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Candidate:
    item: Item
    status: str
    version: int
    trace_id: str
    updated_at: datetime


class Reconciler:
    def __init__(
        self,
        *,
        redis: redis.Redis,
        keys: Keys,
        ledger: BudgetLedger,
        scheduler: Scheduler,
        dispatch: Dispatch,
        runs: RunStore,
        reads: ReconcilerReads,
        compensations: Compensations,
        dead_letters: DeadLetters,
        approvals: Approvals,
        lease_ttl_s: float,
        release_ordered: Callable[[], list[str]] | None = None,
        expire_memories: Callable[[datetime], int] | None = None,
        resume_parents: Callable[[], list[str]] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        grace_s: float | None = None,
        batch: int = DEFAULT_BATCH,
        retention_every_s: float = RETENTION_EVERY_S,
    ) -> None:
        if interval_s <= 0 or batch <= 0:
            raise ValueError("interval_s and batch must be positive")
        self.redis = redis
        self.keys = keys
        self.ledger = ledger
        self.scheduler = scheduler
        self.dispatch = dispatch
        self.runs = runs
        self.reads = reads
        self.compensations = compensations
        self.dead_letters = dead_letters
        self.approvals = approvals
        #: starts event runs whose turn came while nothing released them (a cancel)
        self.release_ordered = release_ordered
        #: memory retention (deletes expired memories; None: a deployment without them)
        self.expire_memories = expire_memories
        #: resumes parents whose child ended while nothing resumed them (a crash)
        self.resume_parents = resume_parents
        self.interval_s = interval_s
        #: a run not updated for this long may be a zombie; by default the step lease ttl,
        #: so a step that is still executing (it updates the run when it checkpoints) is not
        self.grace_s = lease_ttl_s if grace_s is None else grace_s
        self.batch = batch
        self.retention_every_s = retention_every_s
        self.owner = f"reconciler|{uuid.uuid4().hex[:12]}"
        self._cursor: tuple[datetime, str] | None = None
        self._last_retention: datetime | None = None

    # --- the round -------------------------------------------------------------------
    def reconcile(self, now: datetime | None = None) -> ReconcileReport:
        """One round, unless another process holds this interval's round. ``now`` (aware
        UTC) stands in for the clock: grace, expired holds and retention use it."""
        if not self._acquire():
            return ReconcileReport(held_lock=False)
        report = ReconcileReport(held_lock=True)
        clock = now or utcnow()
        now_ms = None if now is None else int(now.timestamp() * 1000)
        try:
            report.expired_holds = self.ledger.release_expired(now_ms, spent=self.runs.step_spend)
            if report.expired_holds:
                log.info("released %d expired budget holds", report.expired_holds)
        except Exception as exc:
            self._failed(report, "expired_holds", exc)
        try:
            report.zombies = self.heal_zombies(clock)
        except Exception as exc:
            self._failed(report, "zombies", exc)
        try:
            before = clock - timedelta(seconds=self.grace_s)
            report.compensations = self.compensations.resume_stuck(before)
        except Exception as exc:
            self._failed(report, "compensations", exc)
        try:
            report.expired_approvals = self.approvals.expire_due(clock)
        except Exception as exc:
            self._failed(report, "approval_expiry", exc)
        if self.release_ordered is not None:
            try:
                report.released = self.release_ordered()
            except Exception as exc:
                self._failed(report, "event_ordering", exc)
        if self.expire_memories is not None:
            try:
                report.memories_expired = self.expire_memories(clock)
            except Exception as exc:
                self._failed(report, "memory_retention", exc)
        if self.resume_parents is not None:
            try:
                report.parents_resumed = self.resume_parents()
            except Exception as exc:
                self._failed(report, "delegations", exc)
        if self._retention_due(clock):
            self._last_retention = clock  # also on failure: try again in an hour, not 5 s
            try:
                report.retention_deleted = self.dead_letters.apply_retention()
            except Exception as exc:
                self._failed(report, "retention", exc)
        return report

    def _acquire(self) -> bool:
        px = max(1, int(self.interval_s * 1000))
        key = self.keys.reconciler_lock()
        return bool(self.redis.set(key, self.owner, nx=True, px=px))

    def _retention_due(self, clock: datetime) -> bool:
        last = self._last_retention
        return last is None or (clock - last).total_seconds() >= self.retention_every_s

    @staticmethod
    def _failed(report: ReconcileReport, phase: str, exc: Exception) -> None:
        log.exception("reconciler: %s failed", phase)
        report.errors.append(f"{phase}: {exc!r}")

    # --- zombies ---------------------------------------------------------------------
    def heal_zombies(self, now: datetime) -> list[str]:
        """Queue again the current step of every zombie among this round's candidates."""
        candidates = self._candidates(now - timedelta(seconds=self.grace_s))
        if not candidates:
            return []
        known = self.scheduler.known([c.item for c in candidates])
        lost = [c for c, k in zip(candidates, known, strict=True) if not k]
        lost = self._lease_free(lost)
        # a worker may have moved the run on since it was read: only unchanged rows
        lost = self._unchanged(lost)
        if not lost:
            return []
        self.reads.add_events([self._event(c, now) for c in lost])
        ops = Ops()
        for c in lost:
            ops.enqueue(c.item)
        self.dispatch.schedule(ops.dispatch(len(lost)))
        for c in lost:
            log.warning(
                "run %s (%s) step %s was in no scheduler queue for %.0fs: queued again",
                c.item.run_id,
                c.status,
                c.item.step_no,
                _idle_s(c, now),
            )
        return [c.item.run_id for c in lost]

    def _candidates(self, cutoff: datetime) -> list[_Candidate]:
        """Active runs not updated since ``cutoff``: one bounded page, oldest first, from
        where the previous round stopped (back to the oldest once the end is reached)."""
        rows = self.reads.idle_runs(cutoff, self.batch, self._cursor)
        full = len(rows) == self.batch
        self._cursor = (rows[-1]["updated_at"], rows[-1]["run_id"]) if full else None
        return [
            _Candidate(
                Item(
                    row["run_id"],
                    int(row["next_step"]),
                    row["tenant_id"],
                    row["route"],
                    row["priority"],
                ),
                str(row["status"]),
                int(row["version"]),
                str(row["trace_id"]),
                row["updated_at"],
            )
            for row in rows
        ]

    def _lease_free(self, candidates: list[_Candidate]) -> list[_Candidate]:
        """Drop runs whose step lease is held: a step of theirs is executing right now."""
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for c in candidates:
            pipe.exists(self.keys.run_lease(c.item.run_id))
        held = pipe.execute()
        return [c for c, h in zip(candidates, held, strict=True) if not h]

    def _unchanged(self, candidates: list[_Candidate]) -> list[_Candidate]:
        if not candidates:
            return []
        versions = self.reads.versions([c.item.run_id for c in candidates])
        return [c for c in candidates if versions.get(c.item.run_id) == c.version]

    def _event(self, c: _Candidate, now: datetime) -> dict[str, Any]:
        trace = TraceBuffer(c.item.run_id, c.item.tenant, c.trace_id, c.item.step_no)
        trace.add(
            "reconciled",
            reason="step_not_scheduled",
            step=c.item.step_no,
            status=c.status,
            idle_s=round(_idle_s(c, now), 3),
        )
        return trace.drain()[0]


def _idle_s(c: _Candidate, now: datetime) -> float:
    return (now - c.updated_at).total_seconds()
