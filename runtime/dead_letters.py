"""Dead letters: steps and messages that cannot go on by themselves, kept for an operator.

Celery's Redis transport deletes a rejected message, so dead-lettering is ours. A step is
dead-lettered when it exhausts its retries (``exhausted``), when its message is garbage
or names no valid step (``poison``), when its worker died on it more than
``AGENTRT_WORKER_LOST_RETRIES`` times (``worker_lost``), when it hit its hard time limit
(``timeout``), or when a compensation failed (``compensation``). The run stops with
``dead_lettered:<class>`` but keeps its place (``next_step``): a retry resumes that very
step, so side effects it already recorded are not repeated, and budgets and policy are
checked again.

Entries live in SQL (durable, filterable, audited); each queue also has a Redis stream
``<ns>:dlq:<queue>`` (capped) and an open-entry counter for alerting. Flower cannot show a
queue no worker consumes, so use ``agentrt dlq stats`` (or the counter) for depth.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from runtime import stop_reasons
from runtime.budgets.ledger import BudgetLedger
from runtime.compensation import Compensations
from runtime.config import RuntimeConfig
from runtime.dead_letter_entries import DeadLetterEntries, format_exception
from runtime.dispatch import Dispatch
from runtime.errors import AgentRuntimeError
from runtime.errors import DeadLetterNotFound as DeadLetterNotFound
from runtime.keys import Keys
from runtime.ports import StepMessages
from runtime.scheduling.scheduler import Ops, item_of, now_ms
from runtime.store.db import utcnow
from runtime.store.dead_letters import DeadLetterFilter, retention_cutoff
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer, redact

__all__ = ["CLASSES", "DeadLetterNotFound", "DeadLetters", "format_exception"]

CLASSES = ("exhausted", "poison", "worker_lost", "timeout", "compensation")


@dataclass
class RetryOutcome:
    matched: int
    retried: list[str]
    skipped: dict[str, str]
    dry_run: bool


@dataclass
class PurgeOutcome:
    matched: int
    purged: list[str]
    dry_run: bool


class DeadLetters:
    def __init__(
        self,
        *,
        runs: RunStore,
        entries: DeadLetterEntries,
        config: RuntimeConfig,
        redis: redis.Redis,
        keys: Keys,
        ledger: BudgetLedger,
        dispatch: Dispatch,
        compensations: Compensations,
        messages: StepMessages,
    ) -> None:
        self.runs = runs
        self.entries = entries
        self.store = entries.store
        self.config = config
        self.redis = redis
        self.keys = keys
        self.ledger = ledger
        self.dispatch = dispatch
        self.compensations = compensations
        self.messages = messages

    # --- landing -----------------------------------------------------------------------
    def dead_letter_step(
        self,
        run_id: str,
        step_no: int,
        dl_class: str,
        *,
        error_type: str,
        error: str | None = None,
        traceback: str | None = None,
        message: dict[str, Any] | None = None,
        worker: str | None = None,
        task_id: str | None = None,
        queue: str | None = None,
    ) -> str | None:
        """Stop the run at ``step_no`` as ``dead_lettered:<class>`` and keep an entry.
        Returns the entry id, or None if the step had moved on (nothing to dead-letter)."""
        queue = queue or self.messages.queue
        run = self.runs.get_run(run_id)
        item = item_of(run, step_no)
        now = utcnow()
        failure = {
            "run_id": run_id,
            "tenant_id": run["tenant_id"],
            "step_no": step_no,
            "attempt": int(run["attempt"]),
            "kind": dl_class,
            "error_type": error_type,
            "error": (error or "")[:5000],
            "worker": worker,
            "at": now,
        }
        # the failed attempts of this call before the last one (``attempt`` counts them all)
        prior = max(int(run["attempt"]) - 1, 0)
        earlier = self.store.failures(run_id)[-prior:] if prior else []
        history = [*earlier, failure]
        entry_id = uuid.uuid4().hex
        entry = {
            "id": entry_id,
            "queue": queue,
            "task_name": self.messages.step_task,
            "task_id": task_id or self.messages.task_id(run_id, step_no),
            "run_id": run_id,
            "tenant_id": run["tenant_id"],
            "route": run["route"],
            "step_no": step_no,
            "trace_id": run["trace_id"],
            "version_set": run["version_set"],
            "dl_class": dl_class,
            "error_type": error_type,
            "error_message": error,
            "traceback": traceback,
            "message": redact(message) if message else self.messages.describe(run, step_no),
            "attempts": [_jsonable(h) for h in history],
            "attempt_count": len(history),
            "first_failed_at": min(h["at"] for h in history),
            "last_failed_at": now,
            "status": "open",
            "created_at": now,
        }
        reason = stop_reasons.make("dead_lettered", dl_class)
        trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], step_no)
        trace.add(
            "dead_lettered",
            dl_class=dl_class,
            error_type=error_type,
            error=error,
            entry_id=entry_id,
            attempts=len(history),
        )
        trace.add("stop", reason=reason, status="failed")
        if not self.store.dead_letter_step(
            entry, stop_reason=reason, events=trace.drain(), failure=failure
        ):
            self.dispatch.schedule(Ops().complete(item).dispatch(1))
            return None
        self.ledger.release(run_id, step_no)
        # the step may be in flight (a worker dead-letters it) or still queued or delayed
        # (an operator or the reconciler does): it leaves the scheduler either way
        self.dispatch.schedule(Ops().drop(item).dispatch(1))
        self.entries.signal(entry)
        self.compensations.after_failure(run)
        return entry_id

    def poison(self, **fields: Any) -> str:
        """A message that is no valid step: keep it, never run it
        (``DeadLetterEntries.poison``)."""
        return self.entries.poison(**fields)

    def record_failure(
        self,
        run_id: str,
        step_no: int,
        kind: str,
        error_type: str,
        error: str | None,
        worker: str | None = None,
    ) -> None:
        """One failed attempt that will be tried again (attempt history)."""
        run = self.runs.get_run(run_id)
        self.store.record_failure(
            {
                "run_id": run_id,
                "tenant_id": run["tenant_id"],
                "step_no": step_no,
                "attempt": int(run["attempt"]),
                "kind": kind,
                "error_type": error_type,
                "error": (error or "")[:5000],
                "worker": worker,
                "at": utcnow(),
            }
        )

    # --- operations ------------------------------------------------------------------
    def find(self, f: DeadLetterFilter, limit: int | None = 100) -> list[dict[str, Any]]:
        return self.store.find(f, limit)

    def show(self, entry_id: str) -> dict[str, Any]:
        entry = self.store.get(entry_id)
        if entry is None:
            raise DeadLetterNotFound(entry_id)
        return entry

    def stats(self) -> dict[str, Any]:
        rows = self.store.stats()
        counters = {}
        for queue in {r["queue"] for r in rows} | {self.messages.queue}:
            counters[queue] = int(self.redis.get(self.keys.dlq_open(queue)) or 0)
        return {"queues": rows, "open": sum(r["open"] for r in rows), "counters": counters}

    def retry(
        self,
        f: DeadLetterFilter,
        actor: str,
        *,
        dry_run: bool = False,
        rate_per_s: float | None = None,
        limit: int | None = None,
    ) -> RetryOutcome:
        """Resume the runs of matching open entries at the step they stopped at. Bulk
        retries are spread out (``rate_per_s``) through the scheduler, not sent at once."""
        entries = self.store.find(f, limit)
        retried: list[str] = []
        skipped: dict[str, str] = {}
        rate = rate_per_s or self.config.dead_letters.retry_rate_per_s
        start = now_ms()
        try:
            for entry in entries:
                problem = self._retry_problem(entry)
                if problem:
                    skipped[entry["id"]] = problem
                    continue
                if dry_run:
                    retried.append(entry["id"])
                    continue
                # claim the entry first (open -> retried): of two operators acting on one
                # entry, one wins and the other is told why it skipped
                if not self.store.mark([entry["id"]], "retried", actor, retried=True):
                    skipped[entry["id"]] = "another operator resolved it meanwhile"
                    continue
                due = start + int(len(retried) * 1000 / rate)
                try:
                    problem = self._retry_one(entry, due, actor)
                except Exception as exc:  # keep what was done; report this one
                    problem = f"error: {type(exc).__name__}: {exc}"
                if problem:
                    self.store.reopen_entry(entry["id"])
                    skipped[entry["id"]] = problem
                else:
                    retried.append(entry["id"])
        finally:
            if not dry_run:
                self._adjust_open(entries, retried)
                self.store.audit(
                    actor,
                    "dlq.retry",
                    f.as_dict(),
                    retried,
                    {"skipped": skipped, "rate_per_s": rate},
                )
        return RetryOutcome(len(entries), retried, skipped, dry_run)

    def purge(
        self, f: DeadLetterFilter, actor: str, *, dry_run: bool = False, limit: int | None = None
    ) -> PurgeOutcome:
        """Mark matching open entries purged (kept until the retention removes them)."""
        entries = self.store.find(f, limit)
        ids = [e["id"] for e in entries if e["status"] == "open"]
        if not dry_run:
            # only entries still open are purged (and counted, and audited)
            ids = self.store.mark(ids, "purged", actor)
            self._adjust_open(entries, ids)
            self.store.audit(actor, "dlq.purge", f.as_dict(), ids)
        return PurgeOutcome(len(entries), ids, dry_run)

    def apply_retention(self) -> int:
        return self.store.delete_resolved_before(
            retention_cutoff(self.config.dead_letters.retention_days)
        )

    # --- helpers ---------------------------------------------------------------------
    def _retry_problem(self, entry: dict[str, Any]) -> str | None:
        if entry["status"] != "open":
            return f"entry is {entry['status']}"
        if entry["dl_class"] == "compensation":
            return None
        if not entry["run_id"] or entry["step_no"] is None:
            return "a poison message names no step to resume; purge it"
        if not entry["tenant_id"]:
            return "the entry names no tenant; purge it"
        try:  # scoped by the entry's tenant: an entry never reaches another tenant's run
            run = self.runs.get_run(entry["run_id"], entry["tenant_id"])
        except AgentRuntimeError:
            return f"its run no longer exists for tenant {entry['tenant_id']!r}"
        if run["status"] != "failed" or not str(run["stop_reason"]).startswith("dead_lettered:"):
            return f"its run is {run['status']} ({run['stop_reason']})"
        if run["next_step"] != entry["step_no"]:
            return "the run moved on since it was dead-lettered"
        return None

    def _resume(self, entry: dict[str, Any], due_ms: int, actor: str) -> bool:
        run = self.runs.get_run(entry["run_id"], entry["tenant_id"])
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], entry["step_no"])
        trace.add("dead_letter_retried", entry_id=entry["id"], actor=actor)
        if not self.store.reopen_run(run["run_id"], entry["step_no"], trace.drain()):
            return False
        item = item_of(run, entry["step_no"])
        self.redis.delete(self.keys.run_cancelled(run["run_id"]))
        ops = Ops().delay(item, due_ms) if due_ms > now_ms() + 5 else Ops().enqueue(item)
        self.dispatch.schedule(ops.dispatch(1))
        return True

    def _retry_one(self, entry: dict[str, Any], due_ms: int, actor: str) -> str | None:
        """Retry one claimed entry; the reason it could not be, or None."""
        if entry["dl_class"] == "compensation":
            return self._recompensate(entry, actor)
        if not self._resume(entry, due_ms, actor):
            return "the run moved on since it was dead-lettered"
        return None

    def _recompensate(self, entry: dict[str, Any], actor: str) -> str | None:
        """Run a failed compensation again (in this process: the operator's retry)."""
        effect_id = (entry["message"] or {}).get("effect_id")
        if effect_id is None or entry["run_id"] is None:
            return "the entry names no side effect"
        run = self.runs.get_run(entry["run_id"], entry["tenant_id"] or "")
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], entry["step_no"])
        trace.add("dead_letter_retried", entry_id=entry["id"], actor=actor)
        if not self.runs.set_effect_status(
            int(effect_id), "compensation_failed", "succeeded", trace.drain()
        ):
            return "the effect is no longer compensation_failed"
        report = self.compensations.compensate(entry["run_id"])
        if report.failed:
            return "the compensation failed again (a new entry holds the error)"
        return None

    def _adjust_open(self, entries: list[dict[str, Any]], resolved: list[str]) -> None:
        done = set(resolved)
        per_queue: dict[str, int] = {}
        for e in entries:
            if e["id"] in done:
                per_queue[e["queue"]] = per_queue.get(e["queue"], 0) + 1
        for queue, n in per_queue.items():
            self.redis.decrby(self.keys.dlq_open(queue), n)


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return loaded
