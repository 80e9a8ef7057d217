"""What the Prometheus collector (``runtime.metrics``) reads from SQL at scrape time:
small grouped counts over indexed or bounded sets (pending approvals, open dead letters,
policy decisions). Read-only, every tenant (the scrape is the operator's view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from runtime.store.connections import StoreConnections
from runtime.store.models import DeadLetterRow
from runtime.store.tables import approvals_t, decisions_t

dl_t = DeadLetterRow.__table__  # type: ignore[attr-defined]
#: an approval waiting for a human (``runtime.store.approvals``)
PENDING = "pending"
OPEN = "open"


@dataclass(frozen=True)
class PendingApprovals:
    tenant: str
    route: str
    count: int
    oldest: datetime


@dataclass(frozen=True)
class OpenDeadLetters:
    queue: str
    dl_class: str
    count: int


@dataclass(frozen=True)
class DecisionCount:
    rule: str
    effect: str
    count: int


class MetricReads(StoreConnections):
    def pending_approvals(self) -> list[PendingApprovals]:
        """Pending approvals per tenant and route, with the oldest request."""
        t = approvals_t.c
        query = (
            select(t.tenant_id, t.route, func.count(), func.min(t.requested_at))
            .where(t.status == PENDING)
            .group_by(t.tenant_id, t.route)
        )
        with self._read_one() as conn:
            rows = list(conn.execute(query))
        return [PendingApprovals(str(tn), str(r), int(n), _utc(at)) for tn, r, n, at in rows]

    def open_dead_letters(self) -> list[OpenDeadLetters]:
        """Open dead-letter entries per queue and class."""
        c = dl_t.c
        query = (
            select(c.queue, c.dl_class, func.count())
            .where(c.status == OPEN)
            .group_by(c.queue, c.dl_class)
        )
        with self._read_one() as conn:
            return [OpenDeadLetters(str(q), str(k), int(n)) for q, k, n in conn.execute(query)]

    def decision_counts(self) -> list[DecisionCount]:
        """Every policy decision ever recorded, per rule and effect: a counter that only
        grows (decisions are never deleted), so ``rate()`` over it is the decision rate.
        A decision no rule matched (the route's default) counts under rule ``default``."""
        d = decisions_t.c
        query = select(d.rule_id, d.decision, func.count()).group_by(d.rule_id, d.decision)
        with self._read_one() as conn:
            return [
                DecisionCount(str(rule) if rule else "default", str(effect), int(n))
                for rule, effect, n in conn.execute(query)
            ]


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite returns min() of a timestamp as text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
