"""SQL for dead letters, failed attempts and the operator audit log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.sql import Select

from runtime.contract import RunStatus
from runtime.store.db import utcnow
from runtime.store.models import AuditRow, DeadLetterRow, StepFailureRow
from runtime.store.runs import RunStore, events_t, runs_t

dl_t = DeadLetterRow.__table__  # type: ignore[attr-defined]
failures_t = StepFailureRow.__table__  # type: ignore[attr-defined]
audit_t = AuditRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation applies to; every field narrows it."""

    ids: tuple[str, ...] = ()
    run_id: str | None = None
    queue: str | None = None
    tenant: str | None = None
    route: str | None = None
    dl_class: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = "open"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if value in (None, ()):
                continue
            out[name] = (
                list(value)
                if isinstance(value, tuple)
                else (value.isoformat() if isinstance(value, datetime) else value)
            )
        return out


def _apply(query: Select[Any], f: DeadLetterFilter) -> Select[Any]:
    if f.ids:
        query = query.where(dl_t.c.id.in_(list(f.ids)))
    for column, value in (
        ("run_id", f.run_id),
        ("queue", f.queue),
        ("tenant_id", f.tenant),
        ("route", f.route),
        ("dl_class", f.dl_class),
        ("error_type", f.error_type),
        ("status", f.status),
    ):
        if value is not None:
            query = query.where(dl_t.c[column] == value)
    if f.since is not None:
        query = query.where(dl_t.c.last_failed_at >= f.since)
    if f.until is not None:
        query = query.where(dl_t.c.last_failed_at < f.until)
    return query


class DeadLetterStore:
    def __init__(self, runs: RunStore) -> None:
        self.runs = runs
        self.engine = runs.engine

    # --- writes ----------------------------------------------------------------------
    def dead_letter_step(
        self,
        entry: dict[str, Any],
        *,
        stop_reason: str,
        events: Sequence[dict[str, Any]],
        failure: dict[str, Any] | None,
    ) -> bool:
        """Stop the run at this step (``next_step`` stays, so a retry resumes it) and store
        the entry, in one transaction. False if the step moved on meanwhile."""
        now = utcnow()
        allowed = [RunStatus.QUEUED.value, RunStatus.RUNNING.value]
        with self.runs._write() as conn:
            result = conn.execute(
                update(runs_t)
                .where(
                    runs_t.c.run_id == entry["run_id"],
                    runs_t.c.next_step == entry["step_no"],
                    runs_t.c.status.in_(allowed),
                )
                .values(
                    status=RunStatus.FAILED.value,
                    stop_reason=stop_reason,
                    workflow_step=f"dead_lettered:step:{entry['step_no']}",
                    finished_at=now,
                    updated_at=now,
                    version=runs_t.c.version + 1,
                )
            )
            if result.rowcount != 1:
                return False
            if failure is not None:
                conn.execute(insert(failures_t), [failure])
            conn.execute(insert(dl_t), [entry])
            if events:
                conn.execute(insert(events_t), list(events))
        return True

    def insert(self, entry: dict[str, Any]) -> None:
        with self.runs._write() as conn:
            conn.execute(insert(dl_t), [entry])

    def record_failure(self, failure: dict[str, Any]) -> None:
        with self.runs._write() as conn:
            conn.execute(insert(failures_t), [failure])

    def reopen_run(self, run_id: str, step_no: int, events: Sequence[dict[str, Any]]) -> bool:
        """A dead-lettered run goes back to queued at the step it stopped at."""
        now = utcnow()
        with self.runs._write() as conn:
            result = conn.execute(
                update(runs_t)
                .where(
                    runs_t.c.run_id == run_id,
                    runs_t.c.next_step == step_no,
                    runs_t.c.status == RunStatus.FAILED.value,
                    runs_t.c.stop_reason.like("dead_lettered:%"),
                )
                .values(
                    status=RunStatus.QUEUED.value,
                    stop_reason=None,
                    finished_at=None,
                    workflow_step="retried_from_dead_letter",
                    attempt=0,
                    updated_at=now,
                    version=runs_t.c.version + 1,
                )
            )
            if result.rowcount != 1:
                return False
            if events:
                conn.execute(insert(events_t), list(events))
        return True

    def mark(
        self, ids: Sequence[str], status: str, actor: str, *, retried: bool = False
    ) -> list[str]:
        """Resolve the entries of ``ids`` that are still open; the ids that changed (of two
        operators acting on one entry, one wins)."""
        if not ids:
            return []
        values: dict[str, Any] = {"status": status, "resolved_at": utcnow(), "resolved_by": actor}
        if retried:
            values["retry_count"] = dl_t.c.retry_count + 1
        with self.runs._write() as conn:
            result = conn.execute(
                update(dl_t)
                .where(dl_t.c.id.in_(list(ids)), dl_t.c.status == "open")
                .values(**values)
                .returning(dl_t.c.id)
            )
            return [r for (r,) in result]

    def reopen_entry(self, entry_id: str) -> None:
        """Undo a claim whose retry could not go ahead."""
        with self.runs._write() as conn:
            conn.execute(
                update(dl_t)
                .where(dl_t.c.id == entry_id, dl_t.c.status == "retried")
                .values(
                    status="open",
                    resolved_at=None,
                    resolved_by=None,
                    retry_count=dl_t.c.retry_count - 1,
                )
            )

    def audit(
        self,
        actor: str,
        action: str,
        filter: dict[str, Any],
        ids: Sequence[str],
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self.runs._write() as conn:
            conn.execute(
                insert(audit_t),
                [
                    {
                        "at": utcnow(),
                        "actor": actor,
                        "action": action,
                        "filter": filter,
                        "count": len(ids),
                        "ids": list(ids)[:1000],
                        "detail": detail,
                    }
                ],
            )

    def delete_resolved_before(self, cutoff: datetime) -> int:
        """Retention: drop retried and purged entries resolved before ``cutoff``."""
        with self.runs._write() as conn:
            result = conn.execute(
                delete(dl_t).where(dl_t.c.status != "open", dl_t.c.resolved_at < cutoff)
            )
            return int(result.rowcount)

    # --- reads -----------------------------------------------------------------------
    def failures(self, run_id: str, from_step: int = 0) -> list[dict[str, Any]]:
        query = (
            select(failures_t)
            .where(failures_t.c.run_id == run_id, failures_t.c.step_no >= from_step)
            .order_by(failures_t.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def find(self, f: DeadLetterFilter, limit: int | None = 100) -> list[dict[str, Any]]:
        query = _apply(select(dl_t), f).order_by(dl_t.c.last_failed_at.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(dl_t).where(dl_t.c.id == entry_id)).mappings().first()
        return dict(row) if row else None

    def count(self, f: DeadLetterFilter) -> int:
        query = _apply(select(func.count()).select_from(dl_t), f)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def stats(self) -> list[dict[str, Any]]:
        """Open entries per queue and class, with the oldest and newest failure."""
        query = (
            select(
                dl_t.c.queue,
                dl_t.c.dl_class,
                func.count(),
                func.min(dl_t.c.first_failed_at),
                func.max(dl_t.c.last_failed_at),
            )
            .where(dl_t.c.status == "open")
            .group_by(dl_t.c.queue, dl_t.c.dl_class)
        )
        with self.engine.connect() as conn:
            return [
                {"queue": q, "class": c, "open": int(n), "oldest": lo, "newest": hi}
                for q, c, n, lo, hi in conn.execute(query)
            ]

    def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        query = select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def retention_cutoff(days: float) -> datetime:
    return utcnow() - timedelta(days=days)
