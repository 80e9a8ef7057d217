"""SQL of evidence references: what each step's model was shown of a search (written with
the step's checkpoint, ``RunStore.checkpoint``) and the reads that check a citation."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select

from runtime.store.connections import StoreConnections
from runtime.store.tables import evidence_t


class EvidenceStore(StoreConnections):
    def retrieved(self, run_id: str, tenant_id: str, ids: Collection[str]) -> set[str]:
        """Which of ``ids`` the run retrieved (evidence of another run or tenant is not)."""
        if not ids:
            return set()
        e = evidence_t.c
        query = select(e.evidence_id).where(
            e.run_id == run_id, e.tenant_id == tenant_id, e.evidence_id.in_(list(ids))
        )
        with self._read_one() as conn:
            return {str(v) for v in conn.execute(query).scalars()}

    def of_run(self, run_id: str, tenant_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The run's evidence, oldest first (by step, then rank within the step)."""
        e = evidence_t.c
        query = (
            select(evidence_t)
            .where(e.run_id == run_id, e.tenant_id == tenant_id)
            .order_by(e.step_no, e.score.desc(), e.evidence_id)
            .limit(limit)
        )
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def any_retrieved(self, run_id: str, tenant_id: str) -> bool:
        """Whether the run was shown any evidence at all."""
        e = evidence_t.c
        query = select(e.evidence_id).where(e.run_id == run_id, e.tenant_id == tenant_id).limit(1)
        with self._read_one() as conn:
            return conn.execute(query).first() is not None
