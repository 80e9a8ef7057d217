"""The writes of an operator's cancel, pause and resume, and the reads bulk cancel filters
by. Each write is one compare-and-set on the run (with its trace events, in the same
transaction): it names the status it expects - and, where a step could be in flight, the
step - so it never overrides what a step or another operator did meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.engine import Connection

from runtime.errors import CancelRequested, StaleWrite
from runtime.statuses import RunStatus
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.connections import StoreConnections
from runtime.store.db import utcnow
from runtime.store.tables import events_t, runs_t


def lost_checkpoint(conn: Connection, run_id: str, step_no: int) -> StaleWrite:
    """Why a checkpoint's compare-and-set matched nothing: another copy of the step won
    (``StaleWrite``), or the run was asked to cancel while its step worked
    (``CancelRequested``: the caller ends the run ``cancelled`` instead - a run in
    ``cancel_requested`` never checkpoints a step as if nothing happened)."""
    row = (
        conn.execute(
            select(
                runs_t.c.status, runs_t.c.next_step, runs_t.c.stop_reason, runs_t.c.workflow_step
            ).where(runs_t.c.run_id == run_id)
        )
        .mappings()
        .first()
    )
    if (
        row is not None
        and row["status"] == RunStatus.CANCEL_REQUESTED.value
        and row["next_step"] == step_no
    ):
        return CancelRequested(run_id, row["stop_reason"], row["workflow_step"])
    return StaleWrite(run_id, f"step {step_no} was checkpointed already")


class RunControlRows(StoreConnections):
    def _cas(
        self,
        run_id: str,
        where: Sequence[ColumnElement[bool]],
        values: dict[str, Any],
        events: Sequence[dict[str, Any]],
    ) -> bool:
        """``UPDATE runs SET values WHERE run_id AND where``, with the events if it matched."""
        now = utcnow()
        with self._write() as conn:
            result = conn.execute(
                update(runs_t)
                .where(runs_t.c.run_id == run_id, *where)
                .values(updated_at=now, version=runs_t.c.version + 1, **values)
            )
            if result.rowcount != 1:
                return False
            if events:
                conn.execute(insert(events_t), list(events))
        return True

    @staticmethod
    def _scope(tenant_id: str | None, status: RunStatus) -> list[ColumnElement[bool]]:
        where = [runs_t.c.status == status.value]
        if tenant_id is not None:
            where.append(runs_t.c.tenant_id == tenant_id)
        return where

    def request_cancel(
        self,
        run_id: str,
        tenant_id: str | None,
        from_status: RunStatus,
        *,
        stop_reason: str,
        subject: str,
        events: Sequence[dict[str, Any]],
    ) -> bool:
        """queued/running -> ``cancel_requested``: from now on no step starts, and (mode
        immediate) no side effect is claimed; the stop reason already names the actor."""
        return self._cas(
            run_id,
            self._scope(tenant_id, from_status),
            {
                "status": RunStatus.CANCEL_REQUESTED.value,
                "stop_reason": stop_reason,
                "workflow_step": workflow_step(WorkflowStep.CANCELLING, subject),
            },
            events,
        )

    def set_cancel_subject(self, run_id: str, subject: str) -> bool:
        """A second cancel of a run in ``cancel_requested`` makes a drain immediate."""
        return self._cas(
            run_id,
            self._scope(None, RunStatus.CANCEL_REQUESTED),
            {"workflow_step": workflow_step(WorkflowStep.CANCELLING, subject)},
            (),
        )

    def end_cancelled(
        self,
        run_id: str,
        tenant_id: str | None,
        from_status: RunStatus,
        *,
        events: Sequence[dict[str, Any]],
        stop_reason: str | None = None,
        next_step: int | None = None,
    ) -> bool:
        """End the run ``cancelled`` when no step of it is in flight: a waiting (paused or
        approval) run at once, a run in ``cancel_requested`` whose step was taken from the
        scheduler (``next_step``: only if no step checkpointed meanwhile)."""
        where = self._scope(tenant_id, from_status)
        if next_step is not None:
            where.append(runs_t.c.next_step == next_step)
        now = utcnow()
        values: dict[str, Any] = {
            "status": RunStatus.CANCELLED.value,
            "finished_at": now,
            "workflow_step": workflow_step(WorkflowStep.FINISHED),
        }
        if stop_reason is not None:
            values["stop_reason"] = stop_reason
        return self._cas(run_id, where, values, events)

    def pause_run(
        self,
        run_id: str,
        next_step: int,
        *,
        actor_reason: str,
        subject: str,
        events: Sequence[dict[str, Any]],
    ) -> bool:
        """queued/running -> ``waiting`` (``paused:<actor>``) when its next step is taken
        from the scheduler (or was never queued): only if no step checkpointed meanwhile."""
        return self._cas(
            run_id,
            [
                runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
                runs_t.c.next_step == next_step,
            ],
            {
                "status": RunStatus.WAITING.value,
                "stop_reason": actor_reason,
                "workflow_step": workflow_step(WorkflowStep.PAUSED, subject),
            },
            events,
        )

    def resume_run(
        self, run_id: str, tenant_id: str | None, *, actor: str, events: Sequence[dict[str, Any]]
    ) -> bool:
        """A paused run (``waiting``, ``paused:...``) -> ``running``; the caller queues its
        next step."""
        where = self._scope(tenant_id, RunStatus.WAITING)
        where.append(runs_t.c.workflow_step.like(f"{WorkflowStep.PAUSED.value}%"))
        return self._cas(
            run_id,
            where,
            {
                "status": RunStatus.RUNNING.value,
                "stop_reason": None,
                "workflow_step": workflow_step(WorkflowStep.RESUMED, actor),
            },
            events,
        )

    # --- bulk cancel -------------------------------------------------------------------
    def cancel_candidates(
        self,
        *,
        tenant_id: str | None,
        route: str | None,
        statuses: Sequence[str],
        created_before: datetime | None,
        limit: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many runs match, the oldest ``limit`` of them as ``run_id``/``tenant_id``)."""
        where: list[ColumnElement[bool]] = [runs_t.c.status.in_(list(statuses))]
        if tenant_id is not None:
            where.append(runs_t.c.tenant_id == tenant_id)
        if route is not None:
            where.append(runs_t.c.route == route)
        if created_before is not None:
            where.append(runs_t.c.created_at < created_before)
        with self.engine.connect() as conn:
            matched = int(
                conn.execute(select(func.count()).select_from(runs_t).where(*where)).scalar() or 0
            )
            rows = conn.execute(
                select(runs_t.c.run_id, runs_t.c.tenant_id)
                .where(*where)
                .order_by(runs_t.c.created_at, runs_t.c.run_id)
                .limit(limit)
            ).mappings()
            return matched, [dict(r) for r in rows]
