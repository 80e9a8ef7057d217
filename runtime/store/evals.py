"""SQL of evals (``runtime.evals``): which runs were captured as fixtures, the ended runs
a capture sweep looks at, and the stored proposals a policy dry run re-decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from runtime.contract import TERMINAL_STATUSES
from runtime.store.db import utcnow
from runtime.store.tables import decisions_t, eval_captures_t, runs_t, steps_t

_ENDED = tuple(sorted(s.value for s in TERMINAL_STATUSES))
#: the most rows one sweep or one dry run reads
MAX_BATCH = 10_000


@dataclass(frozen=True)
class StoredProposal:
    """A tool call a run proposed and the decision it got, with what deciding it needs."""

    run_id: str
    tenant_id: str
    route: str
    step_no: int
    tool: str
    args: dict[str, Any]
    decision: str
    rule_id: str | None
    risk_class: str
    autonomy_level: str
    allowed_tools: tuple[str, ...]


class EvalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- captures ----------------------------------------------------------------------
    def claim_capture(
        self, run_id: str, tenant_id: str, name: str, path: str, rule: str | None
    ) -> bool:
        """Record that ``run_id`` is captured; False if it was already (by anyone)."""
        row = {"run_id": run_id, "tenant_id": tenant_id, "name": name, "path": path,
               "rule": rule, "captured_at": utcnow()}  # fmt: skip
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(eval_captures_t).values(**row))
        except IntegrityError:
            return False
        return True

    def release_capture(self, run_id: str) -> None:
        """Forget a claim whose fixture could not be written (the next sweep tries again)."""
        with self.engine.begin() as conn:
            conn.execute(delete(eval_captures_t).where(eval_captures_t.c.run_id == run_id))

    def capture_of(self, run_id: str) -> dict[str, Any] | None:
        query = select(eval_captures_t).where(eval_captures_t.c.run_id == run_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def uncaptured_ended(
        self, since: datetime, routes: Sequence[str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Ended runs (finished since ``since``) no fixture was captured from, oldest
        first: what a capture sweep matches its rules against."""
        query = (
            select(
                runs_t.c.run_id,
                runs_t.c.tenant_id,
                runs_t.c.route,
                runs_t.c.risk_class,
                runs_t.c.stop_reason,
                runs_t.c.finished_at,
            )
            .outerjoin(eval_captures_t, eval_captures_t.c.run_id == runs_t.c.run_id)
            .where(
                runs_t.c.status.in_(_ENDED),
                runs_t.c.admitted.is_(True),
                runs_t.c.finished_at >= since,
                eval_captures_t.c.run_id.is_(None),
            )
            .order_by(runs_t.c.finished_at, runs_t.c.run_id)
            .limit(min(limit, MAX_BATCH))
        )
        if routes is not None:
            query = query.where(runs_t.c.route.in_(list(routes)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # --- stored proposals --------------------------------------------------------------
    def proposals_since(
        self,
        since: datetime,
        *,
        route: str | None = None,
        tenant: str | None = None,
        limit: int = MAX_BATCH,
    ) -> list[StoredProposal]:
        """Tool calls decided since ``since`` (oldest first), tenant-scoped when asked,
        with the validated (redacted) arguments their step recorded."""
        query = (
            select(
                decisions_t.c.run_id,
                decisions_t.c.tenant_id,
                decisions_t.c.step_no,
                decisions_t.c.tool,
                decisions_t.c.decision,
                decisions_t.c.rule_id,
                steps_t.c.proposal,
                runs_t.c.route,
                runs_t.c.risk_class,
                runs_t.c.autonomy_level,
                runs_t.c.allowed_tools,
            )
            .join(runs_t, runs_t.c.run_id == decisions_t.c.run_id)
            .outerjoin(
                steps_t,
                and_(
                    steps_t.c.run_id == decisions_t.c.run_id,
                    steps_t.c.step_no == decisions_t.c.step_no,
                ),
            )
            .where(decisions_t.c.at >= since)
            .order_by(decisions_t.c.id)
            .limit(min(limit, MAX_BATCH))
        )
        if route is not None:
            query = query.where(runs_t.c.route == route)
        if tenant is not None:
            query = query.where(decisions_t.c.tenant_id == tenant)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return [_proposal(r) for r in rows]


def _proposal(row: dict[str, Any]) -> StoredProposal:
    proposal = row.get("proposal") if isinstance(row.get("proposal"), dict) else {}
    args = proposal.get("args") if isinstance(proposal, dict) else None
    allowed = row.get("allowed_tools")
    return StoredProposal(
        run_id=row["run_id"],
        tenant_id=row["tenant_id"],
        route=row["route"],
        step_no=int(row["step_no"]),
        tool=row["tool"],
        args=args if isinstance(args, dict) else {},
        decision=row["decision"],
        rule_id=row["rule_id"],
        risk_class=row["risk_class"],
        autonomy_level=row["autonomy_level"],
        allowed_tools=tuple(allowed) if isinstance(allowed, list) else (),
    )
