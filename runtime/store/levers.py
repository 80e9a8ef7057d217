"""SQL of the operator levers (``runtime.levers``): the levers on now, their audit, and the
runs a lever would affect. A change writes its lever row and its audit row in one
transaction, so the record and the history never disagree.

The audit is the operators' one log, ``operator_audit`` (with ``dlq retry``/``purge`` and
``recover``): action ``ops.<lever>``, ``filter`` {"target"}, ``count`` the runs it applied
to (``ids``: the first of them), ``detail`` {lever, target, old, new, reason, dry_run}."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from runtime.statuses import RunStatus
from runtime.store.connections import StoreConnections
from runtime.store.models import AuditRow, OperatorLeverRow
from runtime.store.tables import runs_t

levers_t = OperatorLeverRow.__table__  # type: ignore[attr-defined]
audit_t = AuditRow.__table__  # type: ignore[attr-defined]
#: the audit actions of lever changes: ``ops.<lever>``
ACTION_PREFIX = "ops."

#: runs a lever can still act on
OPEN_STATUSES = (
    RunStatus.QUEUED.value,
    RunStatus.RUNNING.value,
    RunStatus.WAITING.value,
    RunStatus.CANCEL_REQUESTED.value,
)


class LeverStore(StoreConnections):
    def current(self) -> list[dict[str, Any]]:
        """Every lever on now, by lever and target."""
        query = self._tolerant_select(levers_t).order_by(levers_t.c.lever, levers_t.c.target)
        return self._read(query, levers_t)

    def get(self, lever: str, target: str) -> dict[str, Any] | None:
        query = self._tolerant_select(levers_t).where(
            levers_t.c.lever == lever, levers_t.c.target == target
        )
        rows = self._read(query, levers_t)
        return rows[0] if rows else None

    def route_stopped(self, route: str) -> bool:
        """Whether the record has the route stopped (in either mode)."""
        return self.get("route_stopped", route) is not None

    def change(
        self, *, lever: str, target: str, value: Any, audit: dict[str, Any], on: bool
    ) -> None:
        """Set (``on``) or remove the lever, and append its audit row, in one transaction."""
        at = audit["at"]
        key = (levers_t.c.lever == lever, levers_t.c.target == target)
        with self._write() as conn:
            if on:
                row = {"value": value, "actor": audit["actor"], "reason": audit["reason"]}
                updated = conn.execute(update(levers_t).where(*key).values(**row, updated_at=at))
                if updated.rowcount == 0:
                    conn.execute(
                        insert(levers_t),
                        [{"lever": lever, "target": target, "updated_at": at, **row}],
                    )
            else:
                conn.execute(delete(levers_t).where(*key))
            conn.execute(insert(audit_t), [_audit_row(audit)])

    def audit(self, audit: dict[str, Any]) -> None:
        """An audit row alone (a dry run changes nothing else)."""
        with self._write_one() as conn:
            conn.execute(insert(audit_t), [_audit_row(audit)])

    def log(self, limit: int = 100, lever: str | None = None) -> list[dict[str, Any]]:
        """The levers' audit, newest first, one flat row each."""
        action = audit_t.c.action
        query = self._tolerant_select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        if lever is not None:
            query = query.where(action == ACTION_PREFIX + lever)
        else:
            query = query.where(action.like(ACTION_PREFIX + "%"))
        return [_flat(row) for row in self._read(query, audit_t)]

    def open_runs(
        self,
        *,
        routes: Collection[str] | None = None,
        tenants: Collection[str] | None = None,
        limit: int = 1000,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(count, the first ``limit``) of runs not ended yet on ``routes`` and of
        ``tenants`` (None: any), oldest first."""
        where = [runs_t.c.status.in_(OPEN_STATUSES)]
        if routes is not None:
            where.append(runs_t.c.route.in_(list(routes)))
        if tenants is not None:
            where.append(runs_t.c.tenant_id.in_(list(tenants)))
        cols = (runs_t.c.run_id, runs_t.c.route, runs_t.c.tenant_id, runs_t.c.status)
        page = select(*cols).where(*where).order_by(runs_t.c.created_at).limit(limit)
        with self._read_one() as conn:
            count = int(
                conn.execute(select(func.count()).select_from(runs_t).where(*where)).scalar_one()
            )
        with self._read_one() as conn:
            rows = [dict(r) for r in conn.execute(page).mappings()]
        return count, rows


def _audit_row(audit: dict[str, Any]) -> dict[str, Any]:
    return {
        "at": audit["at"],
        "actor": audit["actor"],
        "action": ACTION_PREFIX + audit["lever"],
        "filter": {"target": audit["target"]},
        "count": audit["affected"],
        "ids": audit.get("ids") or [],
        "detail": {
            name: audit[name] for name in ("lever", "target", "old", "new", "reason", "dry_run")
        },
    }


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    return {
        "id": row["id"],
        "at": row["at"],
        "actor": row["actor"],
        "lever": detail.get("lever", str(row["action"]).removeprefix(ACTION_PREFIX)),
        "target": detail.get("target"),
        "old": detail.get("old"),
        "new": detail.get("new"),
        "reason": detail.get("reason"),
        "dry_run": bool(detail.get("dry_run")),
        "affected": row["count"],
    }
