"""Approval rows: the record of a call waiting for a human, its decision, and its one use.

Every write is a conditional update on the approval's status (``pending`` -> ``approved``
| ``denied`` | ``expired``; ``approved`` -> ``consumed``), in the same transaction as the
run's own transition, so an approval and its run never disagree:

* deciding moves the run out of ``waiting`` only if it still waits for this approval at
  the step after the one that asked (``approval_id`` and ``next_step``);
* spending (``consume_in``) runs inside the side-effect claim's transaction
  (``runtime.store.effects``): the claim of the call and the approval's one use commit
  together or not at all.

Every query takes the tenant when the caller has one: another tenant's approval is not
found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from runtime.errors import ApprovalClosed
from runtime.store.connections import StoreConnections
from runtime.store.tables import approvals_t, events_t, runs_t, secrets_t

#: the statuses of an approval
PENDING, APPROVED, DENIED, EXPIRED, CONSUMED = (
    "pending",
    "approved",
    "denied",
    "expired",
    "consumed",
)
#: its run ended (cancelled) while it waited: nobody can decide it any more
WITHDRAWN = "withdrawn"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, CONSUMED, WITHDRAWN)
#: decided by a human (their latency counts in the statistics)
DECIDED = (APPROVED, DENIED, CONSUMED)


@dataclass(frozen=True)
class ApprovalSpend:
    """An approval a step is about to spend on the call it approved."""

    approval_id: str
    tenant_id: str
    run_id: str
    digest: str


def consume_in(conn: Connection, spend: ApprovalSpend, key: str, now: datetime) -> bool:
    """Spend the approval on the call with idempotency key ``key``, in the caller's
    transaction: ``approved`` -> ``consumed``. A call already holding it (the same key: a
    redelivered step, a retried call) keeps it. False: it is not there to spend."""
    t = approvals_t.c
    result = conn.execute(
        update(approvals_t)
        .where(
            t.approval_id == spend.approval_id,
            t.tenant_id == spend.tenant_id,
            t.run_id == spend.run_id,
            t.digest == spend.digest,
            or_(t.status == APPROVED, (t.status == CONSUMED) & (t.consumed_by == key)),
        )
        .values(status=CONSUMED, consumed_by=key, consumed_at=now)
    )
    return bool(result.rowcount == 1)


def insert_in(conn: Connection, row: dict[str, Any]) -> None:
    """A new pending approval, in the caller's transaction (the waiting step's checkpoint)."""
    conn.execute(insert(approvals_t), [row])


@dataclass(frozen=True)
class RunMove:
    """How a decision moves the approval's run, from ``waiting`` at ``next_step``."""

    status: str
    values: dict[str, Any]
    events: Sequence[dict[str, Any]]
    #: the run's kept call had secret arguments: delete them (it will never run)
    drop_secrets: bool = False


class ApprovalStore(StoreConnections):
    # --- reads -----------------------------------------------------------------------
    def get(self, approval_id: str, tenant_id: str | None = None) -> dict[str, Any] | None:
        query = self._tolerant_select(approvals_t).where(approvals_t.c.approval_id == approval_id)
        if tenant_id is not None:
            query = query.where(approvals_t.c.tenant_id == tenant_id)
        rows = self._read(query, approvals_t)
        return rows[0] if rows else None

    def find(
        self,
        *,
        tenant_id: str | None = None,
        status: str | None = PENDING,
        owner: str | None = None,
        route: str | None = None,
        run_id: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Oldest request first (the one waiting longest is the first to decide)."""
        t = approvals_t.c
        query = (
            self._tolerant_select(approvals_t).order_by(t.requested_at, t.approval_id).limit(limit)
        )
        for column, value in (
            (t.tenant_id, tenant_id),
            (t.status, status),
            (t.owner, owner),
            (t.route, route),
            (t.run_id, run_id),
        ):
            if value is not None:
                query = query.where(column == value)
        return self._read(query, approvals_t)

    def due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Pending approvals whose expiry passed, soonest first."""
        t = approvals_t.c
        query = (
            self._tolerant_select(approvals_t)
            .where(t.status == PENDING, t.expires_at <= now)
            .order_by(t.expires_at)
            .limit(limit)
        )
        return self._read(query, approvals_t)

    def latencies(self, tenant_id: str | None, limit: int) -> list[tuple[str, int]]:
        """(route, latency ms) of the newest decided approvals."""
        t = approvals_t.c
        query = (
            select(t.route, t.latency_ms)
            .where(t.status.in_(DECIDED), t.latency_ms.is_not(None))
            .order_by(t.decided_at.desc())
            .limit(limit)
        )
        if tenant_id is not None:
            query = query.where(t.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [(str(r), int(ms)) for r, ms in conn.execute(query)]

    def pending_by_route(self, tenant_id: str | None) -> list[tuple[str, int, datetime]]:
        """(route, pending count, oldest request) per route."""
        t = approvals_t.c
        query = (
            select(t.route, func.count(), func.min(t.requested_at))
            .where(t.status == PENDING)
            .group_by(t.route)
        )
        if tenant_id is not None:
            query = query.where(t.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        out = []
        for route, n, oldest in rows:
            if isinstance(oldest, str):  # SQLite returns min() of a timestamp as text
                oldest = datetime.fromisoformat(oldest)
            if oldest.tzinfo is None:  # stored as UTC
                oldest = oldest.replace(tzinfo=UTC)
            out.append((str(route), int(n), oldest))
        return out

    # --- writes ----------------------------------------------------------------------
    def consume(self, spend: ApprovalSpend, key: str, now: datetime) -> bool:
        """``consume_in`` on its own (a read tool's call: there is no claim to join)."""
        with self._write() as conn:
            return consume_in(conn, spend, key, now)

    def decide(
        self,
        approval: dict[str, Any],
        decision: dict[str, Any],
        move: RunMove,
        *,
        from_status: str = PENDING,
    ) -> str | None:
        """Record a decision (``decision``: status, decided_by, decided_at, reason,
        latency_ms) and move the run, in one transaction; None when done, else why not:
        ``"decided"`` (the approval is no longer ``from_status``) or ``"run_moved"`` (its
        run no longer waits for it) - and then nothing was written."""
        try:
            self._decide(approval, decision, move, from_status)
        except ApprovalClosed as exc:  # raised to roll the transaction back
            return exc.status
        return None

    def _decide(
        self, approval: dict[str, Any], decision: dict[str, Any], move: RunMove, from_status: str
    ) -> None:
        t, r = approvals_t.c, runs_t.c
        approval_id = str(approval["approval_id"])
        with self._write() as conn:
            done = conn.execute(
                update(approvals_t)
                .where(
                    t.approval_id == approval["approval_id"],
                    t.tenant_id == approval["tenant_id"],
                    t.status == from_status,
                )
                .values(**decision)
            )
            if done.rowcount != 1:
                raise ApprovalClosed(approval_id, "decided", "decided meanwhile")
            moved = conn.execute(
                update(runs_t)
                .where(
                    r.run_id == approval["run_id"],
                    r.tenant_id == approval["tenant_id"],
                    r.status == "waiting",
                    r.approval_id == approval["approval_id"],
                    r.next_step == int(approval["step_no"]) + 1,
                )
                .values(status=move.status, version=r.version + 1, **move.values)
            )
            if moved.rowcount != 1:
                raise ApprovalClosed(approval_id, "run_moved", "its run no longer waits")
            if move.drop_secrets:
                conn.execute(delete(secrets_t).where(secrets_t.c.run_id == approval["run_id"]))
            if move.events:
                conn.execute(insert(events_t), list(move.events))

    def withdraw(self, tenant_id: str, run_id: str, approval_id: str, now: datetime) -> bool:
        """A cancel ended the run that waited for this approval: it is no longer pending
        (listed, decidable); a no-op for one already decided."""
        return self.close(
            {"approval_id": approval_id, "tenant_id": tenant_id, "run_id": run_id}, WITHDRAWN, now
        )

    def close(self, approval: dict[str, Any], status: str, now: datetime) -> bool:
        """Close a pending approval whose run no longer waits for it (cancelled, say)."""
        t = approvals_t.c
        with self._write() as conn:
            done = conn.execute(
                update(approvals_t)
                .where(t.approval_id == approval["approval_id"], t.status == PENDING)
                .values(status=status, decided_at=now)
            )
            return bool(done.rowcount == 1)
