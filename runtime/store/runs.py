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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Engine,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable, Select
from sqlmodel.sql.sqltypes import UTCDateTime

from runtime.contract import RunStatus
from runtime.errors import InvalidTransition, RunNotFound, StaleWrite
from runtime.states import ALLOWED_FROM
from runtime.statuses import KNOWN_STATUSES
from runtime.store.cells import Unreadable as Unreadable
from runtime.store.cells import decode
from runtime.store.db import utcnow
from runtime.store.migrations.startup import ensure_current
from runtime.store.models import (
    PendingSecretRow,
    PolicyDecisionRow,
    RunRow,
    SideEffectRow,
    SpendRow,
    StepRow,
    TraceEventRow,
)
from runtime.store.prepared import PreparedStatements

runs_t = RunRow.__table__  # type: ignore[attr-defined]
steps_t = StepRow.__table__  # type: ignore[attr-defined]
events_t = TraceEventRow.__table__  # type: ignore[attr-defined]
decisions_t = PolicyDecisionRow.__table__  # type: ignore[attr-defined]
effects_t = SideEffectRow.__table__  # type: ignore[attr-defined]
spend_t = SpendRow.__table__  # type: ignore[attr-defined]
secrets_t = PendingSecretRow.__table__  # type: ignore[attr-defined]

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


@dataclass
class EffectClaim:
    """Result of claiming a side effect's idempotency key before executing it."""

    #: True: this execution inserted the record and must run the tool
    fresh: bool
    status: str
    result: Any = None
    error: str | None = None
    attempts: int = 1


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # the step's hot statements (load, start, checkpoint) as driver SQL built once
        self._sql = PreparedStatements(engine.dialect)
        # SQLite begins every transaction itself (runtime.store.db), autocommit or not
        self._autocommit_reads = engine.dialect.name == "postgresql"
        # PostgreSQL: a write of the step (start, read-tool decisions, checkpoint) is one
        # statement (data-modifying CTEs where it spans tables), in autocommit
        self._one_statement_writes = engine.dialect.name == "postgresql"

    # --- schema ----------------------------------------------------------------------
    def create_schema(self) -> None:
        """Make sure the schema is the one this code needs: created in an empty database,
        else at the migrations' head - an older one is refused with ``SchemaOutOfDate``
        naming ``agentrt db upgrade`` (``runtime.store.migrations``)."""
        ensure_current(self.engine)

    @contextmanager
    def _read_one(self) -> Iterator[Connection]:
        """A connection for one statement. On PostgreSQL it runs in autocommit: one
        statement is atomic and consistent on its own, and a transaction around it would
        cost two more round trips (BEGIN, and COMMIT or the rollback on return)."""
        conn = self.engine.connect()
        if self._autocommit_reads:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:
            yield conn

    @contextmanager
    def _write_one(self) -> Iterator[Connection]:
        """A connection for a write of ONE statement. On PostgreSQL it runs in autocommit:
        the statement is its own transaction (all or nothing, durable when it returns),
        without the BEGIN and COMMIT round trips; elsewhere a write transaction as usual."""
        if not self._one_statement_writes:
            with self._write() as conn:
                yield conn
            return
        with self.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT", write=True
        ) as conn:
            yield conn
            # the statement committed itself: this sends nothing, and lets the engine's
            # events (the bench's census) see the write commit
            conn.commit()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    # --- admission -------------------------------------------------------------------
    def insert_run(
        self, row: dict[str, Any], events: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Insert a run with its trace events, in one transaction. If an admitted run holds
        its request id or idempotency key (the unique indexes decide a race), nothing is
        written and that run is returned instead: ``(run, created)``."""
        try:
            with self._write() as conn:
                conn.execute(insert(runs_t), [row])
                if events:
                    conn.execute(insert(events_t), list(events))
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

    def _tolerant_select(self, table: Table = runs_t) -> Select[Any]:
        if self.engine.dialect.name != "sqlite":
            return select(table)  # PostgreSQL enforces its column types on write
        return select(
            *[
                type_coerce(c, Text).label(c.name) if isinstance(c.type, JSON | UTCDateTime) else c
                for c in table.c
            ]
        )

    def _read(self, query: Executable, table: Table = runs_t) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        if self.engine.dialect.name == "sqlite":
            for row in rows:
                for c in table.c:
                    if isinstance(c.type, JSON | UTCDateTime):
                        row[c.name] = decode(row[c.name], json_column=isinstance(c.type, JSON))
        return rows

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

    def steps(self, run_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        query = select(steps_t).where(steps_t.c.run_id == run_id).order_by(steps_t.c.step_no)
        if tenant_id is not None:
            query = query.where(steps_t.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def trace(self, run_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """A run's events in order. Tolerant like ``read_run``: a corrupt cell is an
        ``Unreadable`` value (``run_rows.trace_fields`` shows it), never an error."""
        query = (
            self._tolerant_select(events_t)
            .where(events_t.c.run_id == run_id)
            .order_by(events_t.c.id)
        )
        if tenant_id is not None:
            query = query.where(events_t.c.tenant_id == tenant_id)
        return self._read(query, events_t)

    def policy_decisions(self, run_id: str) -> list[dict[str, Any]]:
        query = select(decisions_t).where(decisions_t.c.run_id == run_id).order_by(decisions_t.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

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

    def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            with self._write() as conn:
                conn.execute(insert(events_t), list(events))

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

    def spend(
        self,
        run_id: str | None = None,
        tenant_id: str | None = None,
        day: str | None = None,
        route: str | None = None,
    ) -> dict[str, int]:
        """Sum of spend records, per dimension."""
        cols = [
            "tokens",
            "input_tokens",
            "output_tokens",
            "model_calls",
            "tool_calls",
            "retries",
            "wall_clock_ms",
            "cost_micro_usd",
        ]
        query = select(*[func.coalesce(func.sum(spend_t.c[c]), 0) for c in cols])
        if run_id:
            query = query.where(spend_t.c.run_id == run_id)
        if tenant_id:
            query = query.where(spend_t.c.tenant_id == tenant_id)
        if day:
            query = query.where(spend_t.c.day == day)
        if route:
            query = query.where(spend_t.c.route == route)
        with self.engine.connect() as conn:
            row = conn.execute(query).one()
        return {c: int(v) for c, v in zip(cols, row, strict=True)}

    def step_spend(self, run_id: str, step_no: int) -> dict[str, int]:
        """The ledger dimensions one step's spend record charged ({} if none)."""
        dims = ["tokens", "model_calls", "tool_calls", "retries", "wall_clock_ms", "cost_micro_usd"]
        query = select(*[spend_t.c[d] for d in dims]).where(
            spend_t.c.run_id == run_id, spend_t.c.step_no == step_no
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return {} if row is None else {d: int(v) for d, v in zip(dims, row, strict=True)}

    def spend_by_tenant(self, run_ids: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        query = select(
            spend_t.c.tenant_id,
            func.sum(spend_t.c.tokens),
            func.sum(spend_t.c.model_calls),
            func.sum(spend_t.c.tool_calls),
            func.sum(spend_t.c.cost_micro_usd),
        ).group_by(spend_t.c.tenant_id)
        if run_ids is not None:
            query = query.where(spend_t.c.run_id.in_(list(run_ids)))
        with self.engine.connect() as conn:
            return {
                t: {
                    "tokens": int(a or 0),
                    "model_calls": int(b or 0),
                    "tool_calls": int(c or 0),
                    "cost_micro_usd": int(d or 0),
                }
                for t, a, b, c, d in conn.execute(query)
            }

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
            )
        return row

    def claim_effect(
        self,
        effect: dict[str, Any],
        decisions: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
        *,
        retry: bool = False,
        retry_unknown: bool = False,
    ) -> EffectClaim:
        """Store the allow decision and claim the side effect's idempotency key, before
        the tool runs. If the key exists (a redelivered step), report what was recorded.
        ``retry``: a retry of a call that failed claims its key again (``failed``, or
        ``unknown`` when the tool may run again after an unknown outcome)."""
        try:
            with self._write() as conn:
                if decisions:
                    self._sql.insert(conn, decisions_t, decisions)
                self._sql.insert(conn, effects_t, [effect])
                if events:
                    self._sql.insert(conn, events_t, events)
            return EffectClaim(fresh=True, status="started")
        except IntegrityError:
            pass
        with self._write() as conn:
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

    def store_decisions(
        self, decisions: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]
    ) -> None:
        """Store policy decisions (and their trace events) ahead of execution; idempotent."""
        try:
            if self._one_statement_writes:
                with self._write_one() as conn:
                    self._sql.insert_all(conn, [(decisions_t, decisions), (events_t, events)])
            else:
                with self._write() as conn:
                    self._sql.insert(conn, decisions_t, decisions)
                    if events:
                        self._sql.insert(conn, events_t, events)
        except IntegrityError:
            # a redelivered step stored the same decision already; keep its trace events
            if events:
                with self._write() as conn:
                    self._sql.insert(conn, events_t, events)

    def checkpoint(self, cp: Checkpoint) -> None:
        """Commit one step: run state (compare-and-set), step, trace, spend, decisions, effect."""
        allowed = _ALLOWED_VALUES[cp.status]
        values = dict(cp.run_updates)
        values.update(status=cp.status.value, next_step=cp.step_no + 1, updated_at=utcnow())
        where = {"run_id": cp.run_id, "next_step": cp.step_no}
        if self._one_statement_writes and not (
            cp.effect_update or cp.pending_secrets or cp.clear_pending_secrets
        ):
            self._checkpoint_in_one_statement(cp, values, where, allowed)
            return
        try:
            with self._write() as conn:
                matched, _ = self._sql.update(conn, runs_t, values, where, allowed)
                if matched != 1:
                    raise StaleWrite(cp.run_id, f"step {cp.step_no} was checkpointed already")
                self._sql.insert(conn, steps_t, [cp.step])
                if cp.events:
                    self._sql.insert(conn, events_t, cp.events)
                if cp.spend:
                    self._sql.insert(conn, spend_t, [cp.spend])
                if cp.decisions:
                    self._sql.insert(conn, decisions_t, cp.decisions)
                if cp.effect_update:
                    self._update_effect(conn, cp.effect_update)
                if cp.clear_pending_secrets or cp.pending_secrets:
                    conn.execute(delete(secrets_t).where(secrets_t.c.run_id == cp.run_id))
                if cp.pending_secrets:
                    conn.execute(
                        insert(secrets_t),
                        [
                            {
                                "run_id": cp.run_id,
                                "tenant_id": cp.step["tenant_id"],
                                "args": cp.pending_secrets,
                                "at": utcnow(),
                            }
                        ],
                    )
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
            (decisions_t, cp.decisions),
        ]
        try:
            with self._write_one() as conn:
                matched = self._sql.update_then_insert(
                    conn, runs_t, values, where, allowed, inserts
                )
        except IntegrityError as exc:
            raise StaleWrite(cp.run_id, f"step {cp.step_no}: {exc.orig}") from None
        if matched != 1:
            raise StaleWrite(cp.run_id, f"step {cp.step_no} was checkpointed already")

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

    def pending_secrets(self, run_id: str) -> dict[str, Any] | None:
        """The secret arguments of the run's pending call (None if none are stored)."""
        with self.engine.connect() as conn:
            values = conn.execute(
                select(secrets_t.c.args).where(secrets_t.c.run_id == run_id)
            ).scalar()
        return dict(values) if isinstance(values, dict) else None

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
