"""The run store: SQL reads and writes, each write one short transaction.

Hot-path writes use SQLAlchemy Core (no ORM unit of work): a step costs one read and one
or two write transactions. Every status change is ``UPDATE ... WHERE status IN (allowed)
AND next_step = :expected``; a writer that matches no row lost to another and gets
``StaleWrite``.

Operations on a run that a caller names (cancel; approvals, dead-letter retries, pause to
come) follow one pattern: ``run_for_write(run_id, tenant, to_status)`` loads the run scoped
by tenant and checks the transition - ``RunNotFound`` for a missing run or another
tenant's, ``InvalidTransition`` for one that cannot move - and only then does the
operation write: first the conditional SQL update (``transition``, tenant-scoped too), and
Redis only after it committed. A refused operation writes nothing anywhere.

Reads that feed views (``read_run``, ``list_runs``, ``find_admitted``) are tolerant: on
SQLite, where a hand-edited cell can hold anything, JSON and timestamp columns are read as
text and decoded here, so one corrupt cell becomes an ``Unreadable`` value in its row
rather than an error for every reader (``runtime.store.cells``, which the CLI's DB-API
reads share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Table,
    delete,
    func,
    insert,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from runtime.contract import RunStatus
from runtime.errors import InvalidTransition, RunNotFound, StaleWrite
from runtime.states import ALLOWED_FROM
from runtime.statuses import KNOWN_STATUSES
from runtime.store import approvals
from runtime.store.cells import Unreadable as Unreadable
from runtime.store.db import utcnow
from runtime.store.delegations import DelegationRows
from runtime.store.effects import EffectClaim as EffectClaim
from runtime.store.effects import EffectRows
from runtime.store.history import HistoryRows
from runtime.store.migrations.startup import ensure_current
from runtime.store.prepared import PreparedStatements
from runtime.store.run_controls import RunControlRows, lost_checkpoint
from runtime.store.run_pages import RunPages
from runtime.store.tables import decisions_t as decisions_t
from runtime.store.tables import effects_t as effects_t
from runtime.store.tables import events_t as events_t
from runtime.store.tables import evidence_t
from runtime.store.tables import runs_t as runs_t
from runtime.store.tables import secrets_t as secrets_t
from runtime.store.tables import spend_t as spend_t
from runtime.store.tables import steps_t as steps_t
from runtime.store.waits import WaitRows

#: the statuses a run may move from, per target status, as stored (a checkpoint's guard)
_ALLOWED_VALUES: dict[RunStatus, tuple[str, ...]] = {
    to: tuple(sorted(s.value for s in allowed)) for to, allowed in ALLOWED_FROM.items()
}


@dataclass
class Checkpoint:
    """Everything one step writes, committed together or not at all."""

    run_id: str
    step_no: int
    #: the status the run moves to (RUNNING to continue)
    status: RunStatus
    run_updates: dict[str, Any]
    step: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    spend: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    effect_update: dict[str, Any] | None = None
    #: secret arguments of the call the run keeps pending (stored apart from the run row)
    pending_secrets: dict[str, Any] | None = None
    #: the run's earlier pending call had secrets: delete them
    clear_pending_secrets: bool = False
    #: a new pending approval: the run waits for it from this checkpoint on
    approval: dict[str, Any] | None = None
    #: evidence references of a search the step showed its model (``runtime.step.retrieval``)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    #: rows a stage adds with the step (``Step.rows``: an accepted memory write)
    rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    #: child runs the step started (``delegate``): they exist iff this step committed
    new_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def only_rows(self) -> bool:
        """Whether it writes only the run, its step, events and spend (on PostgreSQL: one
        statement)."""
        return not (
            self.effect_update
            or self.pending_secrets
            or self.clear_pending_secrets
            or self.decisions
            or self.approval
            or self.evidence
            or self.rows
            or self.new_runs
        )


def _insert_records(sql: PreparedStatements, conn: Connection, cp: Checkpoint) -> None:
    """The checkpoint's decisions, approval, evidence, stage rows and child runs."""
    if cp.decisions:
        # an earlier copy of this step may have stored the call's decision ahead of the
        # tool and died before its checkpoint: the first decision recorded for a call
        # stands (this copy's is in the trace); failing on it would lose the step to a
        # copy that never checkpoints
        sql.insert(conn, decisions_t, cp.decisions, ignore_conflicts=True)
    if cp.approval:
        approvals.insert_in(conn, cp.approval)
    if cp.evidence:
        # evidence ids are the same for every copy of the step: recorded once
        sql.insert(conn, evidence_t, cp.evidence, ignore_conflicts=True)
    for table, row in cp.rows:
        conn.execute(insert(table), [row])
    if cp.new_runs:
        conn.execute(insert(runs_t), cp.new_runs)


class RunStore(HistoryRows, EffectRows, RunControlRows, WaitRows, RunPages, DelegationRows):
    """Runs: admission, reads for views, the step's start and checkpoint, transitions an
    operator names. Side effects, a run's history (steps, trace, decisions, spend) and an
    operator's cancel, pause and resume are the rows of ``EffectRows``, ``HistoryRows``
    and ``RunControlRows``, over the same connections."""

    # --- schema ----------------------------------------------------------------------
    def create_schema(self) -> None:
        """Make sure the schema is the one this code needs: created in an empty database,
        else at the migrations' head - an older one is refused with ``SchemaOutOfDate``
        naming ``agentrt db upgrade`` (``runtime.store.migrations``)."""
        ensure_current(self.engine)

    # --- admission -------------------------------------------------------------------
    def insert_run(
        self,
        row: dict[str, Any],
        events: Sequence[dict[str, Any]],
        also: Sequence[tuple[Table, dict[str, Any]]] = (),
    ) -> tuple[dict[str, Any], bool]:
        """Insert a run with its trace events (and ``also``: rows that exist only with the
        run, an event record), in one transaction. If an admitted run holds its request id
        or idempotency key (the unique indexes decide a race), nothing is written and that
        run is returned instead: ``(run, created)``."""
        try:
            # driver SQL built once per shape: every submit pays this insert
            if self._one_statement_writes:  # PostgreSQL: one statement, one round trip
                with self._write_one() as conn:
                    inserts = [(runs_t, [row]), (events_t, events)]
                    self._sql.insert_all(conn, inserts + [(t, [v]) for t, v in also])
            else:
                with self._write() as conn:
                    self._sql.insert(conn, runs_t, [row])
                    if events:
                        self._sql.insert(conn, events_t, events)
                    for table, values in also:
                        self._sql.insert(conn, table, [values])
            return row, True
        except IntegrityError:
            if not row.get("admitted", True):
                raise  # a refusal holds no unique key: this is another kind of conflict
            existing = self.find_admitted(
                row["tenant_id"], row["request_id"], row.get("idempotency_key")
            )
            if not existing:
                raise
            return existing[0], False

    def find_admitted(
        self, tenant_id: str, request_id: str | None, idempotency_key: str | None
    ) -> list[dict[str, Any]]:
        """The admitted runs of ``tenant_id`` holding this request id or idempotency key
        (none, one, or two different runs): one read, each half of it a unique-index
        lookup. Refusals hold neither."""
        lookups = []
        for column, value in (
            (runs_t.c.request_id, request_id),
            (runs_t.c.idempotency_key, idempotency_key),
        ):
            if value:
                lookups.append(
                    self._tolerant_select().where(
                        runs_t.c.tenant_id == tenant_id,
                        runs_t.c.admitted == true(),
                        column == value,
                    )
                )
        if not lookups:
            return []
        rows = self._read(lookups[0] if len(lookups) == 1 else union_all(*lookups))
        unique = {r["run_id"]: r for r in rows}  # one run may hold both
        return list(unique.values())

    def find_duplicate(
        self, tenant_id: str, request_id: str | None, idempotency_key: str | None
    ) -> dict[str, Any] | None:
        """The admitted run holding the idempotency key, else the request id (or None)."""
        hits = self.find_admitted(tenant_id, request_id, idempotency_key)
        for hit in hits:
            if idempotency_key and hit["idempotency_key"] == idempotency_key:
                return hit
        return hits[0] if hits else None

    # --- writes a caller names a run for ------------------------------------------------
    def run_for_write(
        self, run_id: str, tenant_id: str | None, to_status: RunStatus | None = None
    ) -> dict[str, Any]:
        """The run an operation is about to change, checked before anything is written:
        ``RunNotFound`` if there is none or it belongs to another tenant (``tenant_id``
        None: operator scope, any tenant), ``InvalidTransition`` if it cannot move to
        ``to_status``. Writes nothing; the write that follows is conditional anyway."""
        run = self.get_run(run_id, tenant_id)
        if to_status is not None and run["status"] not in {
            s.value for s in ALLOWED_FROM[to_status]
        }:
            raise InvalidTransition(run_id, str(run["status"]), to_status.value)
        return run

    # --- reads -----------------------------------------------------------------------
    def get_run(self, run_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        where = (
            {"run_id": run_id} if tenant_id is None else {"run_id": run_id, "tenant_id": tenant_id}
        )
        with self._read_one() as conn:
            row = self._sql.select_by(conn, runs_t, where)
        if row is None:
            raise RunNotFound(run_id)
        return row

    def read_run(self, run_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """``get_run`` for views: a corrupt cell is an ``Unreadable`` value, not an error."""
        query = self._tolerant_select().where(runs_t.c.run_id == run_id)
        if tenant_id is not None:
            query = query.where(runs_t.c.tenant_id == tenant_id)
        rows = self._read(query)
        if not rows:
            raise RunNotFound(run_id)
        return rows[0]

    def list_runs(
        self,
        tenant_id: str | None = None,
        status: str | None = None,
        route: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first. ``status="unknown"``: runs whose stored status this version does
        not know. Tolerant like ``read_run``: one bad row never fails the list."""
        query = self._tolerant_select().order_by(runs_t.c.created_at.desc()).limit(limit)
        if tenant_id:
            query = query.where(runs_t.c.tenant_id == tenant_id)
        if status == RunStatus.UNKNOWN.value:
            query = query.where(runs_t.c.status.not_in(KNOWN_STATUSES))
        elif status:
            query = query.where(runs_t.c.status == status)
        if route:
            query = query.where(runs_t.c.route == route)
        return self._read(query)

    def count_by(
        self, column: str, tenant_id: str | None = None, run_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        col = runs_t.c[column]
        query = select(col, func.count()).group_by(col)
        if tenant_id:
            query = query.where(runs_t.c.tenant_id == tenant_id)
        if run_ids is not None:
            query = query.where(runs_t.c.run_id.in_(list(run_ids)))
        with self.engine.connect() as conn:
            return {str(k): int(v) for k, v in conn.execute(query)}

    # --- writes ----------------------------------------------------------------------
    def start_run(self, run_id: str) -> dict[str, Any] | None:
        """queued -> running and return the row, in one statement; None if not queued."""
        now = utcnow()
        with self._write_one() as conn:
            _, row = self._sql.update(
                conn,
                runs_t,
                {
                    "status": RunStatus.RUNNING.value,
                    "started_at": now,
                    "updated_at": now,
                    "workflow_step": "started",
                },
                {"run_id": run_id},
                (RunStatus.QUEUED.value,),
                returning=True,
                # lost only with the SQL server itself, before any later synchronous commit
                # (the step's claim or checkpoint) flushed it: the run is queued again then,
                # and its step, never acked, runs again
                synchronous=False,
            )
        return row

    def checkpoint(self, cp: Checkpoint) -> None:
        """Commit one step: run state (compare-and-set), step, trace, spend, decisions, effect.
        ``StaleWrite`` if another copy of the step won; ``CancelRequested`` (nothing
        written) if the run was asked to cancel meanwhile."""
        allowed = _ALLOWED_VALUES[cp.status]
        values = dict(cp.run_updates)
        values.update(status=cp.status.value, next_step=cp.step_no + 1, updated_at=utcnow())
        where = {"run_id": cp.run_id, "next_step": cp.step_no}
        if self._one_statement_writes and cp.only_rows:
            self._checkpoint_in_one_statement(cp, values, where, allowed)
            return
        try:
            with self._write() as conn:
                matched, _ = self._sql.update(conn, runs_t, values, where, allowed)
                if matched != 1:
                    raise lost_checkpoint(conn, cp.run_id, cp.step_no)
                self._sql.insert(conn, steps_t, [cp.step])
                if cp.events:
                    self._sql.insert(conn, events_t, cp.events)
                if cp.spend:
                    self._sql.insert(conn, spend_t, [cp.spend])
                _insert_records(self._sql, conn, cp)
                if cp.effect_update:
                    self._update_effect(conn, cp.effect_update)
                _replace_pending_secrets(conn, cp)
        except IntegrityError as exc:
            raise StaleWrite(cp.run_id, f"step {cp.step_no}: {exc.orig}") from None

    def _checkpoint_in_one_statement(
        self,
        cp: Checkpoint,
        values: dict[str, Any],
        where: dict[str, Any],
        allowed: tuple[str, ...],
    ) -> None:
        """PostgreSQL: the checkpoint as one statement in autocommit - one round trip and
        one commit instead of BEGIN, an UPDATE, an INSERT per table and COMMIT. Still all
        or nothing (one statement is one transaction) and durable when it returns."""
        inserts = [
            (steps_t, [cp.step]),
            (events_t, cp.events),
            (spend_t, [cp.spend] if cp.spend else []),
        ]
        try:
            with self._write_one() as conn:
                matched = self._sql.update_then_insert(
                    conn, runs_t, values, where, allowed, inserts
                )
        except IntegrityError as exc:
            raise StaleWrite(cp.run_id, f"step {cp.step_no}: {exc.orig}") from None
        if matched != 1:
            with self._read_one() as conn:
                raise lost_checkpoint(conn, cp.run_id, cp.step_no)

    def transition(
        self,
        run_id: str,
        to_status: RunStatus,
        *,
        stop_reason: str | None = None,
        events: Sequence[dict[str, Any]] = (),
        tenant_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Move a run to ``to_status`` if its current status allows it (cancel, resume...)."""
        allowed = [s.value for s in ALLOWED_FROM[to_status]]
        now = utcnow()
        values: dict[str, Any] = {
            "status": to_status.value,
            "updated_at": now,
            "version": runs_t.c.version + 1,
            **(extra or {}),
        }
        if stop_reason is not None:
            values["stop_reason"] = stop_reason
        if to_status in (
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.REFUSED,
            RunStatus.CANCELLED,
        ):
            values["finished_at"] = now
        scope = [runs_t.c.run_id == run_id]
        if tenant_id is not None:
            scope.append(runs_t.c.tenant_id == tenant_id)
        with self._write() as conn:
            result = conn.execute(
                update(runs_t).where(*scope, runs_t.c.status.in_(allowed)).values(**values)
            )
            if result.rowcount != 1:
                # scoped like the update: another tenant's run is not found, whatever it is
                current = conn.execute(select(runs_t.c.status).where(*scope)).scalar()
                if current is None:
                    raise RunNotFound(run_id)
                raise InvalidTransition(run_id, str(current), to_status.value)
            if events:
                conn.execute(insert(events_t), list(events))
        return self.read_run(run_id)

    def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runs_t.c.run_id, runs_t.c.status).where(runs_t.c.run_id.in_(list(run_ids)))
            )
            return {str(r): str(s) for r, s in rows}


def _replace_pending_secrets(conn: Any, cp: Checkpoint) -> None:
    """The checkpoint's change to the run's kept secret arguments (gone, or new ones)."""
    if cp.clear_pending_secrets or cp.pending_secrets:
        conn.execute(delete(secrets_t).where(secrets_t.c.run_id == cp.run_id))
    if cp.pending_secrets:
        row = {
            "run_id": cp.run_id,
            "tenant_id": cp.step["tenant_id"],
            "args": cp.pending_secrets,
            "at": utcnow(),
        }
        conn.execute(insert(secrets_t), [row])
