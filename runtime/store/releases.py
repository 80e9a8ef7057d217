"""Releases in SQL: the live release state per route (the record), its audit log, and the
per-release figures ``agentrt releases compare`` shows. Scoped to one deployment
(namespace). Never on a step's hot path: Redis holds the copy steps read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, case, func, insert, select, update

from runtime.store.db import utcnow
from runtime.store.models import ReleaseAuditRow, ReleaseStateRow
from runtime.store.tables import decisions_t, events_t, runs_t, spend_t, steps_t

state_t = ReleaseStateRow.__table__  # type: ignore[attr-defined]
audit_t = ReleaseAuditRow.__table__  # type: ignore[attr-defined]

#: most audit rows one read returns
MAX_AUDIT_ROWS = 1000


class ReleaseStore:
    def __init__(self, engine: Engine, namespace: str) -> None:
        self.engine = engine
        self.namespace = namespace

    def state(self, route: str) -> dict[str, Any] | None:
        query = select(state_t).where(
            state_t.c.namespace == self.namespace, state_t.c.route == route
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else dict(row)

    def states(self) -> list[dict[str, Any]]:
        query = select(state_t).where(state_t.c.namespace == self.namespace)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def change(
        self,
        route: str,
        expected_generation: int | None,
        values: dict[str, Any],
        audit: dict[str, Any],
    ) -> int | None:
        """Write the route's new state and its audit row in one transaction, if the state
        is still at ``expected_generation`` (None: no row yet). The new generation, or
        None when another change won."""
        now = utcnow()
        generation = (expected_generation or 0) + 1
        row = {**values, "generation": generation, "updated_at": now}
        with self.engine.begin() as conn:
            if expected_generation is None:
                exists = conn.execute(
                    select(state_t.c.generation).where(
                        state_t.c.namespace == self.namespace, state_t.c.route == route
                    )
                ).first()
                if exists is not None:
                    return None
                conn.execute(
                    insert(state_t), [{**row, "namespace": self.namespace, "route": route}]
                )
            else:
                done = conn.execute(
                    update(state_t)
                    .where(
                        state_t.c.namespace == self.namespace,
                        state_t.c.route == route,
                        state_t.c.generation == expected_generation,
                    )
                    .values(**row)
                )
                if done.rowcount != 1:
                    return None
            conn.execute(
                insert(audit_t),
                [{**audit, "namespace": self.namespace, "route": route, "at": now}],
            )
        return generation

    def record(self, route: str, audit: dict[str, Any]) -> None:
        """An audit row without a change (a promotion the gate refused)."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(audit_t),
                [{**audit, "namespace": self.namespace, "route": route, "at": utcnow()}],
            )

    def audit(self, route: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        query = (
            select(audit_t)
            .where(audit_t.c.namespace == self.namespace)
            .order_by(audit_t.c.id.desc())
            .limit(min(limit, MAX_AUDIT_ROWS))
        )
        if route is not None:
            query = query.where(audit_t.c.route == route)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # --- compare -------------------------------------------------------------------
    def figures(self, route: str, releases: list[str], since: datetime) -> dict[str, Any]:
        """Per release, over the runs of ``route`` created since ``since``: runs, stop
        reasons, policy denials, cost per completed run, tool errors, step durations."""
        window = and_(runs_t.c.route == route, runs_t.c.created_at >= since)
        rel = runs_t.c.release
        out: dict[str, Any] = {r: _empty() for r in releases}
        with self.engine.connect() as conn:
            for name, reason, n in conn.execute(
                select(rel, runs_t.c.stop_reason, func.count())
                .where(window, rel.in_(releases))
                .group_by(rel, runs_t.c.stop_reason)
            ):
                fig = out[name]
                fig["runs"] += int(n)
                if reason is not None:
                    fig["stop_reasons"][str(reason)] = int(n)
            joined = runs_t.join(spend_t, spend_t.c.run_id == runs_t.c.run_id)
            completed = runs_t.c.stop_reason == "completed"
            for name, cost in conn.execute(
                select(rel, func.sum(spend_t.c.cost_micro_usd))
                .select_from(joined)
                .where(window, rel.in_(releases), completed)
                .group_by(rel)
            ):
                out[name]["completed_cost_micro"] = int(cost or 0)
            denied = decisions_t.c.decision == "deny"
            for name, n in conn.execute(
                select(rel, func.count())
                .select_from(runs_t.join(decisions_t, decisions_t.c.run_id == runs_t.c.run_id))
                .where(window, rel.in_(releases), denied)
                .group_by(rel)
            ):
                out[name]["policy_denials"] = int(n)
            failed = case(
                (steps_t.c.outcome.like("tool_failed%") | steps_t.c.outcome.like("tool_retry%"), 1),
                else_=0,
            )
            step_join = runs_t.join(steps_t, steps_t.c.run_id == runs_t.c.run_id)
            for name, errors in conn.execute(
                select(rel, func.sum(failed))
                .select_from(step_join)
                .where(window, rel.in_(releases))
                .group_by(rel)
            ):
                out[name]["tool_errors"] = int(errors or 0)
            for name, ms in conn.execute(
                select(rel, steps_t.c.duration_ms)
                .select_from(step_join)
                .where(window, rel.in_(releases), steps_t.c.duration_ms.is_not(None))
            ):
                out[name]["durations_ms"].append(int(ms))
        return out

    def release_events(self, run_id: str) -> list[dict[str, Any]]:
        """A run's ``release_changed`` trace events (tests and ``releases show``)."""
        query = (
            select(events_t)
            .where(events_t.c.run_id == run_id, events_t.c.kind == "release_changed")
            .order_by(events_t.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _empty() -> dict[str, Any]:
    return {
        "runs": 0,
        "stop_reasons": {},
        "policy_denials": 0,
        "completed_cost_micro": 0,
        "tool_errors": 0,
        "durations_ms": [],
    }
