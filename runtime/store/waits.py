"""Writes that move a waiting run on (a budget extension granted; approvals to come)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert

from runtime.statuses import RunStatus
from runtime.store.connections import StoreConnections
from runtime.store.db import utcnow
from runtime.store.tables import events_t, runs_t


class WaitRows(StoreConnections):
    def resume_waiting(
        self,
        run_id: str,
        *,
        tenant_id: str,
        version: int,
        stop_reason: str,
        values: dict[str, Any],
        events: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any] | None:
        """A waiting run, as it was read (``version``) and waiting for ``stop_reason``,
        back to running with ``values``, and its trace events, in one transaction: the
        updated row, or None if the run changed meanwhile (nothing written then). Its next
        step is the caller's to queue, after this committed."""
        where = {
            "run_id": run_id,
            "tenant_id": tenant_id,
            "version": version,
            "stop_reason": stop_reason,
        }
        row_values = {
            **values,
            "status": RunStatus.RUNNING.value,
            "stop_reason": None,
            "updated_at": utcnow(),
        }
        with self._write() as conn:
            matched, row = self._sql.update(
                conn, runs_t, row_values, where, (RunStatus.WAITING.value,), returning=True
            )
            if matched != 1:
                return None  # nothing was written
            if events:
                conn.execute(insert(events_t), list(events))
        return row
