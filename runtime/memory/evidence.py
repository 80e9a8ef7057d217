"""Which evidence ids a run has really retrieved: a memory write that names evidence must
name evidence its own run was shown (``unknown_evidence`` otherwise). The evidence table
belongs to retrieval; this protocol is all the memory stage needs of it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol


class EvidenceLookup(Protocol):
    def retrieved(self, run_id: str, tenant_id: str, ids: Collection[str]) -> set[str]:
        """Those of ``ids`` that were retrieved in run ``run_id`` of ``tenant_id``."""
        ...


class NoEvidence:
    """A deployment without retrieval knows no evidence: a write naming any is refused
    (fail closed), and a route that requires evidence refuses every write."""

    def retrieved(self, run_id: str, tenant_id: str, ids: Collection[str]) -> set[str]:
        return set()
