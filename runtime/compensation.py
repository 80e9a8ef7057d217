"""Compensation: undo the side effects of a run that failed, newest first.

A route with ``compensate_on_failure: true`` asks for it. The run's memory writes are
forgotten first (``forgotten_by: compensation``; idempotent). Every succeeded side effect whose
tool registered a compensator (``@tool.compensator``) is undone in reverse order of
completion. Each effect moves ``succeeded -> compensating -> compensated`` by
compare-and-set, so two workers never undo the same effect twice; a compensator that fails
marks the effect ``compensation_failed`` and lands in the dead-letter queue (class
``compensation``), from where an operator's retry runs it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from runtime.config import RuntimeConfig
from runtime.dead_letter_entries import DeadLetterEntries
from runtime.keys import Keys
from runtime.memory.store import MemoryStore
from runtime.store.db import utcnow
from runtime.store.runs import RunStore
from runtime.tools.context import ToolContext
from runtime.tools.registry import ToolRegistry
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.compensation")


@dataclass
class CompensationReport:
    compensated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: succeeded effects whose tool has no compensator
    skipped: list[str] = field(default_factory=list)


class Compensations:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        store: RunStore,
        registry: ToolRegistry,
        tool_redis: redis.Redis,
        keys: Keys,
        entries: DeadLetterEntries,
        memories: MemoryStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        #: the run's memory writes are undone with its side effects (None: no memories)
        self.memories = memories
        self.registry = registry
        self.tool_redis = tool_redis
        self.keys = keys
        self.entries = entries

    def after_failure(self, run: dict[str, Any]) -> None:
        """A run failed or was dead-lettered: compensate its side effects now, in this
        process, if its route asks for it (the reconciler resumes one left unfinished)."""
        route = self.config.routes.get(run["route"])
        if route is not None and route.compensate_on_failure:
            self.compensate(run["run_id"])

    def compensate(self, run_id: str) -> CompensationReport:
        """Undo the run's succeeded side effects, newest first. Idempotent: effects already
        undone (or taken by another worker) are skipped."""
        run = self.store.get_run(run_id)
        report = CompensationReport()
        if self.memories is not None:
            self._forget_memories(run, report)
        effects = [e for e in self.store.side_effects(run_id) if e["status"] == "succeeded"]
        effects.sort(
            key=lambda e: (e["finished_at"] is not None, e["finished_at"], e["id"]), reverse=True
        )
        for effect in effects:
            key = str(effect["idempotency_key"])
            trace = TraceBuffer(run_id, run["tenant_id"], run["trace_id"], effect["step_no"])
            spec = self.registry.get(effect["tool"])
            if spec is None or spec.compensate is None:
                report.skipped.append(key)
                trace.add(
                    "compensation_skipped",
                    tool=effect["tool"],
                    idempotency_key=key,
                    reason="no compensator",
                )
                self.store.add_events(trace.drain())
                continue
            trace.add("compensation_start", tool=spec.name, idempotency_key=key)
            if not self.store.set_effect_status(
                effect["id"],
                "succeeded",
                "compensating",
                trace.drain(),
                compensation_started_at=utcnow(),
            ):
                continue  # another worker took it
            ctx = ToolContext(
                run_id=run_id,
                tenant_id=run["tenant_id"],
                route=run["route"],
                step=effect["step_no"],
                call_index=0,
                idempotency_key=f"{key}:compensate",
                fencing_token=None,
                redis=self.tool_redis,
                keys=self.keys,
            )
            try:
                args = spec.input_model.model_validate(effect["args"] or {})
                spec.compensate(args, effect["result"] or {}, ctx)
            except Exception as exc:  # a compensator is user code: any failure is recorded
                log.warning("compensation of %s (%s) failed: %r", key, spec.name, exc)
                report.failed.append(key)
                trace.add(
                    "compensation_failed",
                    tool=spec.name,
                    idempotency_key=key,
                    error=f"{type(exc).__name__}: {exc}",
                )
                self.store.set_effect_status(
                    effect["id"],
                    "compensating",
                    "compensation_failed",
                    trace.drain(),
                    error=str(exc)[:2000],
                )
                self.entries.compensation_failed(run, effect, exc)
                continue
            trace.add("compensated", tool=spec.name, idempotency_key=key)
            self.store.set_effect_status(effect["id"], "compensating", "compensated", trace.drain())
            report.compensated.append(key)
        return report

    def _forget_memories(self, run: dict[str, Any], report: CompensationReport) -> None:
        """A memory write is undone by forgetting it: hidden from every later retrieval at
        once (retention deletes the row); a second compensation finds nothing to do."""
        assert self.memories is not None
        forgotten = self.memories.undo_run(run["run_id"], run["tenant_id"], utcnow())
        if not forgotten:
            return
        trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], None)
        trace.add("memories_compensated", memory_ids=forgotten)
        self.store.add_events(trace.drain())
        report.compensated.extend(forgotten)

    def resume_stuck(self, before: datetime) -> list[str]:
        """Compensations whose worker died mid-way (``compensating`` since before
        ``before``) run again; compensators get the same idempotency key, so one that
        journals its writes (``ctx.redis_effect``) does not repeat them."""
        resumed: list[str] = []
        for effect in self.store.stuck_compensations(before):
            run = self.store.get_run(effect["run_id"])
            trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], effect["step_no"])
            trace.add("compensation_resumed", idempotency_key=effect["idempotency_key"])
            if self.store.set_effect_status(
                effect["id"], "compensating", "succeeded", trace.drain()
            ):
                log.warning(
                    "compensation of %s was left unfinished: running it again",
                    effect["idempotency_key"],
                )
                self.compensate(effect["run_id"])
                resumed.append(str(effect["idempotency_key"]))
        return resumed

    def retry_effect(self, effect: dict[str, Any]) -> bool:
        """An operator retries a failed compensation: make the effect eligible again."""
        return self.store.set_effect_status(effect["id"], "compensation_failed", "succeeded")
