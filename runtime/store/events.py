"""SQL of event-triggered runs: event records (dedupe, arrival order) and ordering keys.

An event record is inserted in the transaction of its run (``RunStore.insert_run``'s
``also``), so a stored event always has its run and a run of an event its record. The
ordering of a ``per_key`` source lives here too: ``claim_key`` is the compare-and-set on
``event_keys.active_run_id`` that lets exactly one run of a key start after the previous
one ended, whichever process (receiver, worker, reconciler) asks first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from runtime.contract import RunStatus
from runtime.step_record import WorkflowStep
from runtime.store.db import utcnow
from runtime.store.tables import event_keys_t, event_records_t, events_t, runs_t

#: a run that waits for its turn: ``waiting`` with ``workflow_step`` ``ordered:<source>``
_GATED = and_(
    runs_t.c.status == RunStatus.WAITING.value,
    runs_t.c.workflow_step.like(f"{WorkflowStep.ORDERED.value}:%"),
)

#: the columns of a run that releasing it needs
_BRIEF = (
    runs_t.c.run_id,
    runs_t.c.tenant_id,
    runs_t.c.route,
    runs_t.c.priority,
    runs_t.c.next_step,
    runs_t.c.trace_id,
    runs_t.c.status,
    runs_t.c.workflow_step,
    runs_t.c.created_at,
    runs_t.c.deadline_at,
)


class EventStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def record(
        *,
        source: str,
        event_id: str,
        tenant_id: str,
        run_id: str,
        body_sha256: str,
        order_key: str | None,
        received_at: datetime,
    ) -> dict[str, Any]:
        """The event record row a new run is inserted with."""
        return {
            "source": source,
            "event_id": event_id,
            "tenant_id": tenant_id,
            "run_id": run_id,
            "body_sha256": body_sha256,
            "order_key": order_key,
            "received_at": received_at,
        }

    def find(self, source: str, event_id: str) -> dict[str, Any] | None:
        query = select(event_records_t).where(
            event_records_t.c.source == source, event_records_t.c.event_id == event_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def of_run(self, run_id: str) -> dict[str, Any] | None:
        query = select(event_records_t).where(event_records_t.c.run_id == run_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def count(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(event_records_t)
        if source is not None:
            query = query.where(event_records_t.c.source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # --- ordering keys ------------------------------------------------------------------
    def active_run(self, source: str, order_key: str, tenant_id: str) -> str | None:
        """The key's last admitted run (None: none yet); creates the key's row if new."""
        where = (event_keys_t.c.source == source, event_keys_t.c.order_key == order_key)
        with self.engine.connect() as conn:
            found = conn.execute(select(event_keys_t.c.active_run_id).where(*where)).first()
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        values = {"source": source, "order_key": order_key, "tenant_id": tenant_id}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(event_keys_t), [{**values, "updated_at": utcnow()}])
        except IntegrityError:  # another process made it first: read what it holds
            with self.engine.connect() as conn:
                found = conn.execute(select(event_keys_t.c.active_run_id).where(*where)).first()
            return found[0] if found else None
        return None

    def claim_key(self, source: str, order_key: str, expected: str | None, run_id: str) -> bool:
        """Compare-and-set the key's active run from ``expected`` to ``run_id``: True for
        the one caller that wins."""
        held = (
            event_keys_t.c.active_run_id.is_(None)
            if expected is None
            else event_keys_t.c.active_run_id == expected
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                update(event_keys_t)
                .where(event_keys_t.c.source == source, event_keys_t.c.order_key == order_key, held)
                .values(active_run_id=run_id, updated_at=utcnow())
            )
        return result.rowcount == 1

    def next_waiting(self, source: str, order_key: str) -> dict[str, Any] | None:
        """The key's earliest-arrived run that waits for its turn (``_BRIEF``)."""
        query = (
            select(*_BRIEF)
            .select_from(event_records_t.join(runs_t, runs_t.c.run_id == event_records_t.c.run_id))
            .where(
                event_records_t.c.source == source,
                event_records_t.c.order_key == order_key,
                _GATED,
            )
            .order_by(event_records_t.c.seq)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def waiting_keys(self, limit: int) -> list[tuple[str, str, str]]:
        """(source, order key, tenant) of keys with a run waiting for its turn: what the
        reconciler releases when no end of a run did (a cancel, a lost worker)."""
        query = (
            select(event_records_t.c.source, event_records_t.c.order_key, runs_t.c.tenant_id)
            .select_from(event_records_t.join(runs_t, runs_t.c.run_id == event_records_t.c.run_id))
            .where(event_records_t.c.order_key.is_not(None), _GATED)
            .distinct()
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(query).all()]

    def run_brief(self, run_id: str) -> dict[str, Any] | None:
        """What releasing a run needs of it (``_BRIEF``); None if there is no such run."""
        query = select(*_BRIEF).where(runs_t.c.run_id == run_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def start_waiting(
        self,
        run_id: str,
        workflow_step: str,
        events: list[dict[str, Any]],
        deadline_at: datetime | None,
    ) -> bool:
        """A run waiting for its turn -> ``queued`` (as admitted; its first step is queued
        next), with its deadline from now: True for the one caller that moved it."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs_t)
                .where(runs_t.c.run_id == run_id, _GATED)
                .values(
                    status=RunStatus.QUEUED.value,
                    stop_reason=None,
                    workflow_step=workflow_step,
                    deadline_at=deadline_at,
                    updated_at=utcnow(),
                    version=runs_t.c.version + 1,
                )
            )
            if result.rowcount != 1:
                return False
            if events:
                conn.execute(insert(events_t), events)
        return True
