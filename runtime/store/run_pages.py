"""Pages of runs and of a run's trace for the HTTP API: keyset pagination (newest first by
``(created_at, run_id)``), so a page costs the same however deep it is and a run created
meanwhile never shifts a page; and trace events after a given event id (the SSE stream)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_

from runtime.contract import RunStatus
from runtime.statuses import KNOWN_STATUSES
from runtime.store.connections import StoreConnections
from runtime.store.tables import events_t, runs_t


@dataclass(frozen=True)
class RunPageQuery:
    tenant_id: str | None
    status: str | None = None
    route: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: the last run of the previous page: (created_at, run_id)
    after: tuple[datetime, str] | None = None
    limit: int = 50


class RunPages(StoreConnections):
    def page_runs(self, q: RunPageQuery) -> list[dict[str, Any]]:
        """Newest first, at most ``q.limit``; tolerant like ``read_run``."""
        c = runs_t.c
        query = self._tolerant_select().order_by(c.created_at.desc(), c.run_id.desc())
        if q.tenant_id is not None:
            query = query.where(c.tenant_id == q.tenant_id)
        if q.status == RunStatus.UNKNOWN.value:
            query = query.where(c.status.not_in(KNOWN_STATUSES))
        elif q.status:
            query = query.where(c.status == q.status)
        if q.route:
            query = query.where(c.route == q.route)
        if q.created_after is not None:
            query = query.where(c.created_at > q.created_after)
        if q.created_before is not None:
            query = query.where(c.created_at < q.created_before)
        if q.after is not None:
            at, run_id = q.after
            query = query.where(or_(c.created_at < at, and_(c.created_at == at, c.run_id < run_id)))
        return self._read(query.limit(q.limit))

    def events_after(
        self, run_id: str, tenant_id: str | None, after_id: int, limit: int = 500
    ) -> list[dict[str, Any]]:
        """A run's trace events with an id above ``after_id``, in order."""
        query = (
            self._tolerant_select(events_t)
            .where(events_t.c.run_id == run_id, events_t.c.id > after_id)
            .order_by(events_t.c.id)
            .limit(limit)
        )
        if tenant_id is not None:
            query = query.where(events_t.c.tenant_id == tenant_id)
        return self._read(query, events_t)
