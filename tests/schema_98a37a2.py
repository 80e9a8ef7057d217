"""The tables of commit 98a37a2 (the migrations' baseline), as that version declared them.

Run as a script in a process of its own - ``python tests/schema_98a37a2.py URL`` - it makes
a database exactly as agentrt at 98a37a2 did (``create_all``, no schema version). Never
import it into a test process: its tables would collide with today's in SQLModel's
metadata. The tables are verbatim ``git show 98a37a2:runtime/store/models.py``.
"""

# fmt: off
# ruff: noqa
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

#: SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT
_BIGINT_PK = BigInteger().with_variant(Integer(), "sqlite")


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", name="uq_runs_tenant_request"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_runs_tenant_idem"),
        Index("ix_runs_tenant_status", "tenant_id", "status"),
        Index("ix_runs_route_status", "route", "status"),
        # the reconciler's scan for runs that stopped moving
        Index("ix_runs_status_updated", "status", "updated_at"),
    )

    run_id: str = Field(primary_key=True, max_length=40)
    trace_id: str = Field(max_length=40)
    request_id: str = Field(max_length=200)
    actor_id: str = Field(max_length=200)
    tenant_id: str = Field(max_length=100)
    route: str = Field(max_length=100)
    goal: str = Field(sa_column=Column(Text, nullable=False))
    autonomy_level: str = Field(max_length=40)
    risk_class: str = Field(max_length=10)
    execution_mode: str = Field(max_length=30)
    status: str = Field(max_length=20, index=True)
    version_set: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    budget_policy_version: str = Field(max_length=100)
    policy_version: str = Field(max_length=100)
    workflow_step: str | None = Field(default=None, max_length=200)
    allowed_tools: list[str] = Field(sa_column=Column(JSON, nullable=False))
    idempotency_key: str | None = Field(default=None, max_length=200)
    approval_id: str | None = Field(default=None, max_length=64)
    checkpoint_ref: str | None = Field(default=None, max_length=100)
    stop_reason: str | None = Field(default=None, max_length=200)
    priority: str = Field(default="normal", max_length=10)
    input: dict[str, Any] | None = _json()
    output: Any = _json()
    #: the step number the next step task must carry; the checkpoint's compare-and-set key
    next_step: int = 0
    #: proposer calls so far (max_steps counts these)
    turns: int = 0
    invalid_proposals: int = 0
    tool_errors: int = 0
    lock_waits: int = 0
    #: failed attempts of the current action (tool call or proposal) so far; 0 after success
    attempt: int = 0
    #: a validated proposal waiting to execute (e.g. its lock was busy)
    pending_proposal: dict[str, Any] | None = _json()
    #: bumped on every update; a writer holding an old version loses
    version: int = 1
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None


class StepRow(SQLModel, table=True):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "step_no", name="uq_steps_run_step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40, index=True)
    tenant_id: str = Field(max_length=100)
    step_no: int
    #: tool_call | reply | stop | refused | deferred | stopped
    kind: str = Field(max_length=20)
    proposal: dict[str, Any] | None = _json()
    outcome: str = Field(max_length=200)
    observation: Any = _json()
    input_tokens: int = 0
    output_tokens: int = 0
    model_version: str | None = Field(default=None, max_length=200)
    started_at: datetime
    finished_at: datetime
    duration_ms: int = 0


class TraceEventRow(SQLModel, table=True):
    __tablename__ = "trace_events"
    __table_args__ = (Index("ix_trace_run_seq", "run_id", "id"),)

    id: int | None = Field(
        default=None, sa_column=Column(_BIGINT_PK, primary_key=True, autoincrement=True)
    )
    run_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=100)
    trace_id: str = Field(max_length=40)
    step_no: int | None = None
    at: datetime
    kind: str = Field(max_length=40)
    data: dict[str, Any] | None = _json()


class PolicyDecisionRow(SQLModel, table=True):
    __tablename__ = "policy_decisions"
    __table_args__ = (
        UniqueConstraint("run_id", "step_no", "call_index", name="uq_policy_run_step_call"),
        Index("ix_policy_tenant_decision", "tenant_id", "decision"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=100)
    step_no: int
    call_index: int = 0
    tool: str = Field(max_length=200)
    #: allow | deny | require_approval | escalate
    decision: str = Field(max_length=20)
    rule_id: str | None = Field(default=None, max_length=100)
    reason_codes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    policy_version: str = Field(max_length=100)
    args_digest: str = Field(max_length=64)
    at: datetime


class SideEffectRow(SQLModel, table=True):
    __tablename__ = "side_effects"

    id: int | None = Field(default=None, primary_key=True)
    #: run:step:call - unique, the claim that makes a side effect happen at most once per key
    idempotency_key: str = Field(max_length=120, unique=True)
    run_id: str = Field(max_length=40, index=True)
    tenant_id: str = Field(max_length=100)
    step_no: int
    tool: str = Field(max_length=200)
    side_effect_class: str = Field(max_length=20)
    #: started | succeeded | failed | unknown | compensated
    status: str = Field(max_length=20)
    args_digest: str = Field(max_length=64)
    args: dict[str, Any] | None = _json()
    result: Any = _json()
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    fencing_token: int | None = None
    attempts: int = 1
    started_at: datetime
    finished_at: datetime | None = None
    #: when a compensation took the effect (status compensating); the reconciler resumes
    #: one whose worker died
    compensation_started_at: datetime | None = None


class SpendRow(SQLModel, table=True):
    __tablename__ = "spend_records"
    __table_args__ = (
        UniqueConstraint("run_id", "step_no", name="uq_spend_run_step"),
        Index("ix_spend_tenant_day", "tenant_id", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=100)
    route: str = Field(max_length=100)
    step_no: int
    #: UTC day the ledger charged (YYYY-MM-DD)
    day: str = Field(max_length=10)
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    retries: int = 0
    wall_clock_ms: int = 0
    cost_micro_usd: int = 0
    at: datetime


class DeadLetterRow(SQLModel, table=True):
    """A step (or a message) that cannot go on by itself and waits for an operator."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dl_status_queue", "status", "queue"),
        Index("ix_dl_tenant_status", "tenant_id", "status"),
        Index("ix_dl_run", "run_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    #: the Celery queue the message came from; one dead-letter queue per Celery queue
    queue: str = Field(max_length=100)
    task_name: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, max_length=40)
    tenant_id: str | None = Field(default=None, max_length=100)
    route: str | None = Field(default=None, max_length=100)
    step_no: int | None = None
    trace_id: str | None = Field(default=None, max_length=40)
    version_set: dict[str, Any] | None = _json()
    #: exhausted | poison | worker_lost | timeout | compensation
    dl_class: str = Field(max_length=20)
    error_type: str = Field(max_length=200)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    traceback: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: the original message (headers and body, secrets redacted)
    message: dict[str, Any] | None = _json()
    #: every failed attempt: [{at, error_type, error, worker, attempt}]
    attempts: list[dict[str, Any]] | None = _json()
    attempt_count: int = 0
    first_failed_at: datetime
    last_failed_at: datetime
    #: open | retried | purged
    status: str = Field(default="open", max_length=10)
    retry_count: int = 0
    created_at: datetime
    resolved_at: datetime | None = None
    resolved_by: str | None = Field(default=None, max_length=200)


class StepFailureRow(SQLModel, table=True):
    """One failed attempt of a step (attempt history for dead letters and operators)."""

    __tablename__ = "step_failures"
    __table_args__ = (Index("ix_failures_run_step", "run_id", "step_no"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=100)
    step_no: int
    attempt: int = 0
    #: tool_error | model_error | worker_lost | timeout | transient | ...
    kind: str = Field(max_length=40)
    error_type: str = Field(max_length=200)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    worker: str | None = Field(default=None, max_length=200)
    at: datetime


class AuditRow(SQLModel, table=True):
    """What an operator did: who, when, with which filter, to how many."""

    __tablename__ = "operator_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    actor: str = Field(max_length=200)
    #: dlq.retry | dlq.purge | recover | ...
    action: str = Field(max_length=40)
    filter: dict[str, Any] | None = _json()
    count: int = 0
    ids: list[str] | None = _json()
    detail: dict[str, Any] | None = _json()


if __name__ == "__main__":
    import sys

    from runtime.store.db import make_engine

    SQLModel.metadata.create_all(make_engine(sys.argv[1]))
