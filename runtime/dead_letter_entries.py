"""Landing dead-letter entries that stop no run (a poison message, a failed
compensation) and signalling every new entry (the queue's Redis stream and open counter).

Apart from ``runtime.dead_letters`` so compensation can file its failures without
depending on the dead-letter flows that themselves run compensations.
"""

from __future__ import annotations

import logging
import traceback as tb
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis

from runtime.keys import Keys
from runtime.ports import StepMessages
from runtime.store.db import utcnow
from runtime.store.dead_letters import DeadLetterStore
from runtime.tracing import redact

log = logging.getLogger("agentrt.dead_letters")

#: told of every new entry (its stored fields) after it is stored: an error reporter
OnDeadLetter = Callable[[Mapping[str, Any]], None]


def format_exception(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))[-20_000:]


class DeadLetterEntries:
    def __init__(
        self,
        *,
        store: DeadLetterStore,
        redis: redis.Redis,
        keys: Keys,
        messages: StepMessages,
        on_new: OnDeadLetter | None = None,
    ) -> None:
        self.store = store
        self.redis = redis
        self.keys = keys
        self.messages = messages
        self.on_new = on_new

    def poison(
        self,
        *,
        queue: str,
        error_type: str,
        error: str,
        message: dict[str, Any] | None,
        task_name: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
    ) -> str:
        """A message that is no valid step: keep it, never run it."""
        return self.keep(
            queue=queue,
            task_name=task_name,
            task_id=task_id,
            run_id=run_id,
            tenant_id=tenant_id,
            dl_class="poison",
            error_type=error_type,
            error_message=error[:5000],
            message=redact(message) if message else None,
        )

    def compensation_failed(
        self, run: dict[str, Any], effect: dict[str, Any], exc: BaseException
    ) -> str:
        """A compensator raised: keep an entry whose retry runs the compensation again."""
        return self.keep(
            queue=self.messages.queue,
            task_name=self.messages.compensate_task,
            task_id=f"{effect['idempotency_key']}:compensate",
            run_id=run["run_id"],
            tenant_id=run["tenant_id"],
            route=run["route"],
            step_no=effect["step_no"],
            trace_id=run["trace_id"],
            version_set=run["version_set"],
            dl_class="compensation",
            error_type=type(exc).__name__,
            error_message=str(exc)[:5000],
            traceback=format_exception(exc),
            message={
                "effect_id": effect["id"],
                "tool": effect["tool"],
                "idempotency_key": effect["idempotency_key"],
            },
        )

    def keep(self, **fields: Any) -> str:
        """Store a one-failure entry that stops no run (poison, compensation) and signal it."""
        now = utcnow()
        entry_id = uuid.uuid4().hex
        entry = {
            "id": entry_id,
            "attempts": [],
            "attempt_count": 1,
            "first_failed_at": now,
            "last_failed_at": now,
            "status": "open",
            "created_at": now,
            **fields,
        }
        self.store.insert(entry)
        self.signal(entry)
        return entry_id

    def signal(self, entry: Mapping[str, Any]) -> None:
        """A new entry is stored: its queue's stream and open counter, then ``on_new``."""
        queue, entry_id, dl_class = entry["queue"], entry["id"], entry["dl_class"]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            self.keys.dlq_stream(queue),
            {"id": entry_id, "class": dl_class},
            maxlen=10_000,
            approximate=True,
        )
        pipe.incr(self.keys.dlq_open(queue))
        pipe.execute()
        if self.on_new is not None:
            try:
                self.on_new(entry)
            except Exception:  # a report that failed must not undo or hide the entry
                log.warning("could not report dead letter %s", entry_id, exc_info=True)
