"""The store's tables as SQLAlchemy Core tables (the hot path writes through Core, not the
ORM), one name per table for every module of the store."""

from __future__ import annotations

from runtime.store.models import (
    ApprovalRow,
    DocumentRow,
    EvalCaptureRow,
    EventKeyRow,
    EventRecordRow,
    EvidenceRow,
    MemoryRow,
    PendingSecretRow,
    PolicyDecisionRow,
    RunRow,
    SideEffectRow,
    SpendRow,
    StepRow,
    TraceEventRow,
)

runs_t = RunRow.__table__  # type: ignore[attr-defined]
steps_t = StepRow.__table__  # type: ignore[attr-defined]
events_t = TraceEventRow.__table__  # type: ignore[attr-defined]
decisions_t = PolicyDecisionRow.__table__  # type: ignore[attr-defined]
effects_t = SideEffectRow.__table__  # type: ignore[attr-defined]
spend_t = SpendRow.__table__  # type: ignore[attr-defined]
secrets_t = PendingSecretRow.__table__  # type: ignore[attr-defined]
approvals_t = ApprovalRow.__table__  # type: ignore[attr-defined]
event_records_t = EventRecordRow.__table__  # type: ignore[attr-defined]
event_keys_t = EventKeyRow.__table__  # type: ignore[attr-defined]
eval_captures_t = EvalCaptureRow.__table__  # type: ignore[attr-defined]
documents_t = DocumentRow.__table__  # type: ignore[attr-defined]
evidence_t = EvidenceRow.__table__  # type: ignore[attr-defined]
memories_t = MemoryRow.__table__  # type: ignore[attr-defined]
