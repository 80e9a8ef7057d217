"""A run's history: its steps, trace events, policy decisions, spend records and the
secret arguments of its pending call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from runtime.store.connections import StoreConnections
from runtime.store.tables import decisions_t, events_t, secrets_t, spend_t, steps_t


class HistoryRows(StoreConnections):
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

    def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            with self._write() as conn:
                conn.execute(insert(events_t), list(events))

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
            "delegations",
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

    def store_decisions(
        self,
        decisions: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]],
        *,
        synchronous: bool = True,
    ) -> None:
        """Store policy decisions (and their trace events) ahead of execution; idempotent.
        ``synchronous=False`` (PostgreSQL): see ``PreparedStatements.insert_all``; SQLite in WAL
        mode with ``synchronous=NORMAL`` does not wait for the disk on any commit."""
        try:
            if self._one_statement_writes:
                with self._write_one() as conn:
                    self._sql.insert_all(
                        conn,
                        [(decisions_t, decisions), (events_t, events)],
                        synchronous=synchronous,
                    )
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

    def pending_secrets(self, run_id: str) -> dict[str, Any] | None:
        """The secret arguments of the run's pending call (None if none are stored)."""
        with self.engine.connect() as conn:
            values = conn.execute(
                select(secrets_t.c.args).where(secrets_t.c.run_id == run_id)
            ).scalar()
        return dict(values) if isinstance(values, dict) else None
