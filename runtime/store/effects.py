"""Side-effect rows: claiming an idempotency key before a tool runs, the outcome after,
compensation's compare-and-set, and the reads over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from runtime.errors import ApprovalClosed, CancelRequested
from runtime.statuses import side_effects_fenced
from runtime.store.approvals import ApprovalSpend, consume_in
from runtime.store.connections import StoreConnections
from runtime.store.db import utcnow
from runtime.store.tables import decisions_t, effects_t, events_t, runs_t

#: ``EffectClaim.status`` when the approval the call needed could not be spent: not run
APPROVAL_UNUSABLE = "approval_unusable"


@dataclass
class EffectClaim:
    """Result of claiming a side effect's idempotency key before executing it."""

    #: True: this execution inserted the record and must run the tool
    fresh: bool
    status: str
    result: Any = None
    error: str | None = None
    attempts: int = 1


class EffectRows(StoreConnections):
    def side_effects(
        self,
        run_id: str | None = None,
        tool: str | None = None,
        status: str | None = None,
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        query = select(effects_t).order_by(effects_t.c.id)
        if run_id:
            query = query.where(effects_t.c.run_id == run_id)
        if tool:
            query = query.where(effects_t.c.tool == tool)
        if status:
            query = query.where(effects_t.c.status == status)
        if tenant_id:
            query = query.where(effects_t.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def set_effect_status(
        self,
        effect_id: int,
        expected: str,
        status: str,
        events: Sequence[dict[str, Any]] = (),
        error: str | None = None,
        **extra: Any,
    ) -> bool:
        """Compare-and-set a side effect's status (with its trace events); False if another
        writer changed it first."""
        values: dict[str, Any] = {"status": status, **extra}
        if error is not None:
            values["error"] = error
        with self._write() as conn:
            result = conn.execute(
                update(effects_t)
                .where(effects_t.c.id == effect_id, effects_t.c.status == expected)
                .values(**values)
            )
            if result.rowcount != 1:
                return False
            if events:
                conn.execute(insert(events_t), list(events))
        return True

    def stuck_compensations(self, before: datetime, limit: int = 100) -> list[dict[str, Any]]:
        """Effects a compensation took before ``before`` and never finished."""
        query = (
            select(effects_t)
            .where(
                effects_t.c.status == "compensating",
                effects_t.c.compensation_started_at < before,
            )
            .order_by(effects_t.c.compensation_started_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def effect_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Side-effect records of these runs: ``{tool: {status: count}}``."""
        query = (
            select(effects_t.c.tool, effects_t.c.status, func.count())
            .where(effects_t.c.run_id.in_(list(run_ids)))
            .group_by(effects_t.c.tool, effects_t.c.status)
        )
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for tool, status, n in conn.execute(query):
                counts.setdefault(str(tool), {})[str(status)] = int(n)
        return counts

    def claim_effect(
        self,
        effect: dict[str, Any],
        decisions: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
        *,
        retry: bool = False,
        retry_unknown: bool = False,
        approval: ApprovalSpend | None = None,
    ) -> EffectClaim:
        """Store the allow decision and claim the side effect's idempotency key, before
        the tool runs. If the key exists (a redelivered step), report what was recorded.
        ``retry``: a retry of a call that failed claims its key again (``failed``, or
        ``unknown`` when the tool may run again after an unknown outcome).

        The cancel fence: ``CancelRequested`` (nothing written) if the run was cancelled,
        or an immediate cancel was requested, before this claim - read in the claim's own
        transaction, so no side effect starts after a cancel committed.

        ``approval``: the approval covering the call is spent in the same transaction as
        every claim that lets the tool run (``approved`` -> ``consumed`` by this key): a
        crash leaves both or neither, and an approval is never spent twice. If it cannot
        be spent, nothing is claimed (status ``APPROVAL_UNUSABLE``)."""
        try:
            return self._claim(effect, decisions, events, retry, retry_unknown, approval)
        except ApprovalClosed:  # raised inside the claim's transaction: rolled back
            return EffectClaim(fresh=False, status=APPROVAL_UNUSABLE)

    @staticmethod
    def _spend(conn: Connection, approval: ApprovalSpend | None, key: str) -> None:
        if approval is not None and not consume_in(conn, approval, key, utcnow()):
            raise ApprovalClosed(approval.approval_id, "unusable", "not approved for this call")

    def _claim(
        self,
        effect: dict[str, Any],
        decisions: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
        retry: bool,
        retry_unknown: bool,
        approval: ApprovalSpend | None,
    ) -> EffectClaim:
        key = str(effect["idempotency_key"])
        try:
            with self._write() as conn:
                self._cancel_fence(conn, str(effect["run_id"]))
                if decisions:
                    self._sql.insert(conn, decisions_t, decisions)
                self._sql.insert(conn, effects_t, [effect])
                if events:
                    self._sql.insert(conn, events_t, events)
                self._spend(conn, approval, key)
            return EffectClaim(fresh=True, status="started")
        except IntegrityError:
            pass
        with self._write() as conn:
            self._cancel_fence(conn, str(effect["run_id"]))
            row = (
                conn.execute(
                    select(effects_t).where(
                        effects_t.c.idempotency_key == effect["idempotency_key"]
                    )
                )
                .mappings()
                .first()
            )
            if row is None:  # the conflict was on the decision row of an unfinished attempt
                conn.execute(insert(effects_t), [effect])
                self._spend(conn, approval, key)
                return EffectClaim(fresh=True, status="started")
            again = ("failed", "unknown") if retry_unknown else ("failed",)
            if retry and row["status"] in again:
                conn.execute(
                    update(effects_t)
                    .where(effects_t.c.id == row["id"], effects_t.c.status == row["status"])
                    .values(
                        status="started",
                        attempts=effects_t.c.attempts + 1,
                        fencing_token=effect.get("fencing_token"),
                        error=None,
                    )
                )
                if decisions:
                    conn.execute(insert(decisions_t), list(decisions))
                if events:
                    conn.execute(insert(events_t), list(events))
                self._spend(conn, approval, key)
                return EffectClaim(fresh=True, status="started", attempts=row["attempts"] + 1)
            if row["status"] == "started":
                conn.execute(
                    update(effects_t)
                    .where(effects_t.c.id == row["id"])
                    .values(attempts=effects_t.c.attempts + 1)
                )
            if events:  # the redelivered attempt's trace is kept too
                conn.execute(insert(events_t), list(events))
            return EffectClaim(
                fresh=False,
                status=row["status"],
                result=row["result"],
                error=row["error"],
                attempts=row["attempts"] + (1 if row["status"] == "started" else 0),
            )

    @staticmethod
    def _cancel_fence(conn: Connection, run_id: str) -> None:
        """Read the run's status in the claim's transaction, locked against a concurrent
        cancel (``FOR SHARE`` on PostgreSQL; SQLite's write transaction holds the database
        lock): either the cancel committed first and the claim is refused, or the claim
        commits first and the cancel finds a step in flight."""
        row = conn.execute(
            select(runs_t.c.status, runs_t.c.workflow_step, runs_t.c.stop_reason)
            .where(runs_t.c.run_id == run_id)
            .with_for_update(read=True)
        ).first()
        if row is not None and side_effects_fenced(str(row.status), row.workflow_step):
            raise CancelRequested(run_id, row.stop_reason, row.workflow_step)

    @staticmethod
    def _update_effect(conn: Connection, effect_update: dict[str, Any]) -> None:
        conn.execute(
            update(effects_t)
            .where(effects_t.c.idempotency_key == effect_update["idempotency_key"])
            .values(**{k: v for k, v in effect_update.items() if k != "idempotency_key"})
        )

    def record_effect_outcome(self, effect_update: dict[str, Any]) -> None:
        """Record a side effect's outcome on its own, when the step's checkpoint failed: a
        retry then replays it instead of calling the tool again blindly."""
        with self._write() as conn:
            self._update_effect(conn, effect_update)
