"""SQL of memories: the rows a memory write adds (written by the step's checkpoint), the
reads of ``agentrt memory`` and of the ``memory`` retriever, forgetting (with its audit
row, one transaction), compensation and retention. Every read and write names a tenant,
except retention, which deletes by expiry across tenants."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, update

from runtime.contract import TERMINAL_STATUSES
from runtime.store.connections import StoreConnections
from runtime.store.models import AuditRow
from runtime.store.tables import memories_t, runs_t

audit_t = AuditRow.__table__  # type: ignore[attr-defined]
#: the audit action of ``agentrt memory forget``
FORGET_ACTION = "memory.forget"
#: rows deleted per statement by retention (a long backlog takes several rounds)
RETENTION_BATCH = 1000


def new_memory_id() -> str:
    return "mem_" + uuid.uuid4().hex


def _run_ended(run_id: Any) -> Any:
    ended = [s.value for s in TERMINAL_STATUSES]
    return and_(runs_t.c.run_id == run_id, runs_t.c.status.in_(ended))


def _live(now: datetime) -> Any:
    """Neither forgotten nor expired at ``now``: a ``run`` memory is expired once its run
    ended, whether or not retention has deleted it yet."""
    c = memories_t.c
    return and_(
        c.forgotten_at.is_(None),
        or_(c.expires_at.is_(None), c.expires_at > now),
        # a lookup of the memory's own run by its key, not a scan of every ended run
        or_(c.retention != "run", ~exists().where(_run_ended(c.run_id))),
    )


class MemoryStore(StoreConnections):
    # --- the stage -------------------------------------------------------------------
    def next_version(self, tenant_id: str, namespace: str, key: str) -> int:
        """The version a new write of the key gets (informational: the newest row wins)."""
        c = memories_t.c
        query = select(func.max(c.version)).where(
            c.tenant_id == tenant_id, c.namespace == namespace, c.key == key
        )
        with self._read_one() as conn:
            return int(conn.execute(query).scalar() or 0) + 1

    # --- reads -----------------------------------------------------------------------
    def listed(
        self,
        tenant_id: str,
        *,
        namespace: str | None = None,
        include_forgotten: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The tenant's memories, newest first."""
        c = memories_t.c
        query = self._tolerant_select(memories_t).where(c.tenant_id == tenant_id)
        if namespace is not None:
            query = query.where(c.namespace == namespace)
        if not include_forgotten:
            query = query.where(c.forgotten_at.is_(None))
        query = query.order_by(c.created_at.desc(), c.memory_id).limit(limit)
        return self._read(query, memories_t)

    def get(self, tenant_id: str, memory_id: str) -> dict[str, Any] | None:
        c = memories_t.c
        query = self._tolerant_select(memories_t).where(
            c.tenant_id == tenant_id, c.memory_id == memory_id
        )
        rows = self._read(query, memories_t)
        return rows[0] if rows else None

    def search(
        self,
        tenant_id: str,
        terms: Collection[str],
        *,
        now: datetime,
        not_before: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Live memories of the tenant whose key or content holds any of ``terms`` (case
        insensitive), newest first; at most ``limit`` (the caller ranks them)."""
        c = memories_t.c
        where = [c.tenant_id == tenant_id, _live(now)]
        if not_before is not None:
            where.append(c.created_at >= not_before)
        matches = []
        for term in terms:
            pattern = (
                "%"
                + term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            matches.append(func.lower(c.content).like(pattern, escape="\\"))
            matches.append(func.lower(c.key).like(pattern, escape="\\"))
        if matches:
            where.append(or_(*matches))
        query = (
            self._tolerant_select(memories_t)
            .where(*where)
            .order_by(c.created_at.desc(), c.version.desc())
            .limit(limit)
        )
        return self._read(query, memories_t)

    # --- forgetting ------------------------------------------------------------------
    def forget(
        self, tenant_id: str, memory_id: str, *, actor: str, reason: str | None, now: datetime
    ) -> list[str]:
        """Forget the memory and every other version of its namespace/key (an older one
        must not come back in its place), with the audit row, in one transaction. The ids
        forgotten now (empty: unknown, or forgotten already)."""
        c = memories_t.c
        with self._write() as conn:
            row = conn.execute(
                select(c.namespace, c.key).where(c.tenant_id == tenant_id, c.memory_id == memory_id)
            ).first()
            if row is None:
                return []
            same_key = (c.tenant_id == tenant_id, c.namespace == row.namespace, c.key == row.key)
            ids = [
                r[0]
                for r in conn.execute(
                    select(c.memory_id).where(*same_key, c.forgotten_at.is_(None))
                )
            ]
            if not ids:
                return []
            conn.execute(
                update(memories_t)
                .where(c.memory_id.in_(ids), c.forgotten_at.is_(None))
                .values(forgotten_at=now, forgotten_by=actor[:200])
            )
            conn.execute(
                insert(audit_t),
                [
                    {
                        "at": now,
                        "actor": actor[:200],
                        "action": FORGET_ACTION,
                        "filter": {
                            "tenant": tenant_id,
                            "namespace": row.namespace,
                            "key": row.key,
                        },
                        "count": len(ids),
                        "ids": ids,
                        "detail": {"memory_id": memory_id, "reason": reason},
                    }
                ],
            )
        return ids

    def audit(self, tenant_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The forget audit rows of the tenant, newest first."""
        query = (
            self._tolerant_select(audit_t)
            .where(audit_t.c.action == FORGET_ACTION)
            .order_by(audit_t.c.id.desc())
        )
        rows = self._read(query, audit_t)
        return [r for r in rows if (r["filter"] or {}).get("tenant") == tenant_id][:limit]

    def undo_run(self, run_id: str, tenant_id: str, now: datetime) -> list[str]:
        """Compensation: hide every memory the run wrote (idempotent)."""
        c = memories_t.c
        where = (c.run_id == run_id, c.tenant_id == tenant_id, c.forgotten_at.is_(None))
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(select(c.memory_id).where(*where))]
            if ids:
                conn.execute(
                    update(memories_t)
                    .where(c.memory_id.in_(ids), c.forgotten_at.is_(None))
                    .values(forgotten_at=now, forgotten_by="compensation")
                )
        return ids

    # --- retention -------------------------------------------------------------------
    def delete_expired(self, now: datetime, batch: int = RETENTION_BATCH) -> int:
        """Delete memories past their expiry, and ``run``-retention memories whose run
        ended; at most ``batch`` of each per call. The number deleted. Runs every
        reconciler round: with nothing due it only reads (no write transaction)."""
        c = memories_t.c
        expired = select(c.memory_id).where(c.expires_at <= now).limit(batch)
        of_ended = (
            select(c.memory_id)
            .where(c.retention == "run", exists().where(_run_ended(c.run_id)))
            .limit(batch)
        )
        with self._read_one() as conn:
            ids = [r[0] for query in (expired, of_ended) for r in conn.execute(query)]
        if not ids:
            return 0
        with self._write_one() as conn:
            # a memory forgotten or deleted meanwhile is simply not there: rowcount says so
            return int(conn.execute(delete(memories_t).where(c.memory_id.in_(ids))).rowcount)

    @staticmethod
    def row(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The (table, row) a checkpoint inserts for an accepted write."""
        return memories_t, values
