"""SQL tables: the source of truth for runs and everything that happened to them.

Every table carries ``tenant_id`` so every query can be tenant-scoped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlmodel import Field, SQLModel

from runtime.store import search_ddl

#: SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT
_BIGINT_PK = BigInteger().with_variant(Integer(), "sqlite")


def _json() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


def _bigint() -> Any:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


def _admitted_only(name: str, *columns: str) -> Index:
    """Unique over admitted runs only: a stored refusal never occupies a request id or an
    idempotency key (a retry is decided afresh), an admitted run always does."""
    return Index(
        name,
        *columns,
        unique=True,
        sqlite_where=text("admitted = 1"),
        postgresql_where=text("admitted"),
    )


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        _admitted_only("uq_runs_admitted_request", "tenant_id", "request_id"),
        _admitted_only("uq_runs_admitted_idem", "tenant_id", "idempotency_key"),
        Index("ix_runs_tenant_status", "tenant_id", "status"),
        Index("ix_runs_route_status", "route", "status"),
        # runs by status, newest first; the queued and running runs (recovery, and the
        # reconciler's scan for runs that stopped moving, which filters on updated_at).
        # No index covers a column every checkpoint changes (updated_at, next_step,
        # version, ...): on PostgreSQL a checkpoint that keeps the status is then a HOT
        # update, touching no index (migration 0006 says more)
        Index("ix_runs_status_created", "status", "created_at"),
        # a parent's children (fan-out, cancel, the run view)
        Index("ix_runs_parent", "parent_run_id"),
        # PostgreSQL: room on each page for the row's next versions (HOT updates)
        {"postgresql_with": {"fillfactor": 80}},
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
    status: str = Field(max_length=20)
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
    #: the run's budget extensions (``runtime.budgets.extension``): ``granted`` per
    #: dimension, added to its per-run limits, and while it waits for one, ``requested``
    budget_extension: dict[str, Any] | None = _json()
    #: bumped on every update; a writer holding an old version loses
    version: int = 1
    #: False for a request admission refused: it keeps its request id for the record but
    #: does not hold it (see the partial unique indexes)
    admitted: bool = Field(
        default=True,
        sa_column=Column(Boolean, nullable=False, default=True, server_default=true()),
    )
    #: SHA-256 per payload field (admission.DIGEST_FIELDS) of the request that made the
    #: run: a repeated request id or idempotency key must carry the same payload
    request_digest: dict[str, str] | None = _json()
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    #: the release the run runs under (``runtime.releases``); None: its route has none
    release: str | None = Field(default=None, max_length=100)
    #: the run's accepted plan and how far it has followed it (``runtime.step.plan``):
    #: {"steps", "next", "step_no", "deviated"}; None: the run proposed no plan
    plan: dict[str, Any] | None = _json()
    #: the run whose ``delegate`` proposal started this one (None: submitted by a caller)
    parent_run_id: str | None = Field(default=None, max_length=40)
    #: the parent's step that started it
    parent_step: int | None = None
    #: delegations between this run and the submitted run it descends from (0: that run)
    depth: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    #: a child's per-run limits in ledger units, carved out of its parent's budget
    #: (``runtime.step.delegation``); None: its budget policy's alone
    delegated_budget: dict[str, Any] | None = _json()


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
    input_tokens: int = _bigint()
    output_tokens: int = _bigint()
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


class PendingSecretRow(SQLModel, table=True):
    """The secret arguments of a call a run keeps for a later step (a lock wait, a retry, an
    approval). Kept apart from the run row, the trace and every view; deleted with the
    pending call."""

    __tablename__ = "pending_secrets"

    run_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    args: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    at: datetime


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
    # 64-bit: a day's or a run's sums are bounded by the ledger's 64-bit counters
    tokens: int = _bigint()
    input_tokens: int = _bigint()
    output_tokens: int = _bigint()
    model_calls: int = _bigint()
    tool_calls: int = _bigint()
    retries: int = _bigint()
    wall_clock_ms: int = _bigint()
    cost_micro_usd: int = _bigint()
    delegations: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, default=0, server_default="0")
    )
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


class AppliedConfigRow(SQLModel, table=True):
    """A deployment file applied with ``agentrt config apply`` (or by the first worker).

    The newest row is what every process enforces; Redis holds a published copy of its
    scheduling tables and digest, rebuilt from here after Redis loses its data."""

    __tablename__ = "applied_configs"
    __table_args__ = (Index("ix_applied_configs_ns", "namespace", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    #: the deployment (``AGENTRT_NAMESPACE``): deployments may share a database
    namespace: str = Field(max_length=100)
    #: SHA-256 of the validated config (canonical JSON): what processes compare
    digest: str = Field(max_length=64, index=True)
    #: the file's own ``version``
    version: str = Field(max_length=100)
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source: str = Field(max_length=500)
    actor: str = Field(max_length=200)
    applied_at: datetime


class StateGenerationRow(SQLModel, table=True):
    """Each time the runtime's Redis state was built from SQL (first start, recovery).

    Redis carries the current generation in its state markers; a marker that is missing
    (Redis lost its data) or older than this table's newest row (Redis restored from an old
    snapshot) means Redis's state is unknown, and nothing reserves, dispatches or executes
    until recovery has rebuilt it."""

    __tablename__ = "state_generations"
    __table_args__ = (Index("ix_state_generations_ns", "namespace", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    #: the deployment (``AGENTRT_NAMESPACE``) whose Redis state this generation built
    namespace: str = Field(max_length=100)
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=200)
    at: datetime


class ApprovalRow(SQLModel, table=True):
    """A call that waits for a human: bound to the exact action by ``digest`` (SHA-256 of
    the RFC 8785 canonical JSON of the tool, its schema version, the validated arguments
    with defaults, the policy version, tenant, run and step), single-use.

    pending -> approved -> consumed (spent by the claim of the call it approved), or
    pending -> denied | expired. One per run step: the step that asked."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("run_id", "step_no", name="uq_approvals_run_step"),
        Index("ix_approvals_tenant_status", "tenant_id", "status"),
        # the reconciler's expiry scan: pending approvals by expiry
        Index("ix_approvals_status_expires", "status", "expires_at"),
        Index("ix_approvals_owner_status", "owner", "status"),
    )

    approval_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    run_id: str = Field(max_length=40)
    #: the step that asked; the approval can be spent only on the call it kept
    step_no: int
    route: str = Field(max_length=100)
    tool: str = Field(max_length=200)
    tool_version: str = Field(max_length=200)
    policy_version: str = Field(max_length=200)
    digest: str = Field(max_length=64)
    #: what the approver is shown: the canonical arguments, secrets redacted
    args: dict[str, Any] | None = _json()
    #: the rule that asked, and its effect: require_approval | escalate
    rule_id: str = Field(max_length=100)
    effect: str = Field(max_length=20)
    #: the owner group of an escalation (``policy.rules[].owner``)
    owner: str | None = Field(default=None, max_length=100)
    #: who may decide: {"owner": group or null, "not": [actors who may not]}
    approvers: dict[str, Any] | None = _json()
    #: the run's submitter (its actor)
    submitted_by: str = Field(max_length=200)
    #: pending | approved | denied | expired | consumed
    status: str = Field(max_length=20)
    requested_at: datetime
    expires_at: datetime
    decided_by: str | None = Field(default=None, max_length=200)
    decided_at: datetime | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: decided_at - requested_at, in milliseconds
    latency_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: the idempotency key of the call that spent it, and when
    consumed_by: str | None = Field(default=None, max_length=120)
    consumed_at: datetime | None = None


class ApiKeyRow(SQLModel, table=True):
    """An HTTP API key of one tenant (``*``: a cross-tenant ``ops:admin`` key). The secret
    is never stored: only its SHA-256 (``secret_hash``) and the ``prefix`` the presented
    key is looked up by. Revoked keys are kept (``revoked_at``) for the audit."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        Index("ix_api_keys_tenant", "tenant_id"),
    )

    key_id: str = Field(primary_key=True, max_length=40)
    prefix: str = Field(max_length=32)
    tenant_id: str = Field(max_length=100)
    name: str = Field(max_length=100)
    #: hex SHA-256 of the secret part of the key
    secret_hash: str = Field(max_length=64)
    scopes: list[str] | None = _json()
    created_at: datetime
    created_by: str = Field(max_length=200)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=200)


class EventRecordRow(SQLModel, table=True):
    """A webhook event that started a run (``runtime.events``): one per (source, event id),
    written in the transaction that inserts its run, so a replay finds its first run and
    a replay with another body is told apart by ``body_sha256``. ``seq`` is the arrival
    order; ``order_key`` (SHA-256 of the key's canonical JSON) groups a ``per_key``
    source's events whose runs go one at a time."""

    __tablename__ = "event_records"
    __table_args__ = (
        UniqueConstraint("source", "event_id", name="uq_event_records_source_event"),
        Index("ix_event_records_key_seq", "source", "order_key", "seq"),
        Index("ix_event_records_run", "run_id"),
    )

    seq: int | None = Field(default=None, sa_column=Column(_BIGINT_PK, primary_key=True))
    source: str = Field(max_length=40)
    event_id: str = Field(max_length=200)
    tenant_id: str = Field(max_length=100)
    run_id: str = Field(max_length=40)
    body_sha256: str = Field(max_length=64)
    order_key: str | None = Field(default=None, max_length=64)
    received_at: datetime


class EventKeyRow(SQLModel, table=True):
    """One ordering key of a ``per_key`` source: the run it admitted last. A run of the
    key starts only by a compare-and-set of ``active_run_id`` from the previous run (which
    must have ended): the one place that decides, in SQL, so any process may release."""

    __tablename__ = "event_keys"

    source: str = Field(primary_key=True, max_length=40)
    order_key: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=100)
    active_run_id: str | None = Field(default=None, max_length=40)
    updated_at: datetime


class EvalCaptureRow(SQLModel, table=True):
    """A run an eval fixture was captured from (``runtime.evals.capture``): a capture rule
    captures a run once, and an operator's capture of it is remembered too."""

    __tablename__ = "eval_captures"

    run_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    #: the fixture's name and the file it was written to
    name: str = Field(max_length=100)
    path: str = Field(max_length=1000)
    #: the capture rule that matched (None: captured by an operator)
    rule: str | None = Field(default=None, max_length=300)
    captured_at: datetime


class ReleaseStateRow(SQLModel, table=True):
    """A route's live release state as the operator set it (``agentrt releases canary |
    promote | rollback``): the record Redis's copy is rebuilt from. A route without a row
    runs as its deployment file says."""

    __tablename__ = "release_state"

    namespace: str = Field(primary_key=True, max_length=100)
    route: str = Field(primary_key=True, max_length=100)
    active: str = Field(max_length=100)
    canary: str | None = Field(default=None, max_length=100)
    percent: float | None = None
    tenants: list[str] | None = _json()
    #: the route's configured release when this was set (a new deploy replaces it)
    deployed: str = Field(max_length=100)
    #: bumped by every change: Redis keeps the newest (``put_state.lua``)
    generation: int
    updated_by: str = Field(max_length=200)
    updated_at: datetime


class ReleaseAuditRow(SQLModel, table=True):
    """Every release change: who, when, why, the state before and after, and for a
    promotion the gate's result."""

    __tablename__ = "release_audit"
    __table_args__ = (Index("ix_release_audit_route", "namespace", "route", "id"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGINT_PK, primary_key=True))
    namespace: str = Field(max_length=100)
    route: str = Field(max_length=100)
    #: canary | promote | rollback
    action: str = Field(max_length=20)
    release: str | None = Field(default=None, max_length=100)
    before: dict[str, Any] | None = _json()
    after: dict[str, Any] | None = _json()
    gate: dict[str, Any] | None = _json()
    actor: str = Field(max_length=200)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime


class OperatorLeverRow(SQLModel, table=True):
    """An operator lever that is on now (``runtime.levers``): the record Redis's live
    switches are rebuilt from after Redis lost its data. A lever turned off is deleted
    (its history is in ``operator_audit``, action ``ops.<lever>``). Levers act on routes,
    tools and tenants of the deployment, not on one tenant's data: ``target`` is the
    route, tool or tenant name."""

    __tablename__ = "operator_levers"

    lever: str = Field(primary_key=True, max_length=40)
    target: str = Field(primary_key=True, max_length=100)
    #: the lever's setting (a mode, a model, a limit) as JSON
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    actor: str = Field(max_length=200)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    updated_at: datetime


class DocumentRow(SQLModel, table=True):
    """A document a ``documents`` source searches (``agentrt docs``). One row per tenant and
    document id: re-adding a document replaces its text and bumps ``version``. The full-text
    index is the database's own (``runtime.store.search_ddl``: SQLite FTS5, PostgreSQL
    tsvector), kept by the database in the same transaction as the row."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "doc_id", name="uq_documents_tenant_doc"),
        Index("ix_documents_tenant_source", "tenant_id", "source", "updated_at"),
    )

    #: SQLite: INTEGER PRIMARY KEY, the rowid the FTS5 index refers to
    id: int | None = Field(default=None, primary_key=True)
    doc_id: str = Field(max_length=100)
    version: int = 1
    tenant_id: str = Field(max_length=100)
    source: str = Field(max_length=100)
    title: str = Field(max_length=500)
    content: str = Field(sa_column=Column(Text, nullable=False))
    #: access labels as ``,a,b,`` ("" when unlabelled): matched in SQL with one LIKE each
    labels: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime
    updated_at: datetime


class EvidenceRow(SQLModel, table=True):
    """A search result a run's model was shown (``runtime.step.retrieval``): written with
    the step's checkpoint; a reply's citations are checked against these rows."""

    __tablename__ = "evidence"

    run_id: str = Field(primary_key=True, max_length=40)
    #: ``ev-`` + a digest of (run, step, source, document): the same for every copy of a
    #: redelivered step, so a step's evidence is recorded once
    evidence_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    step_no: int
    doc_id: str = Field(max_length=100)
    version: int
    source: str = Field(max_length=100)
    score: float
    retrieved_at: datetime


# the full-text index of ``documents`` (created with the table, on each dialect)
search_ddl.attach(DocumentRow.__table__)  # type: ignore[attr-defined]


class MemoryRow(SQLModel, table=True):
    """A memory a run wrote (``runtime.memory``), with its provenance: the run, step,
    actor, tenant and the evidence it rests on. A later write of the same namespace and key
    is a new version (a new row): the newest live one is what retrieval shows. Written with
    the step's checkpoint, so a redelivered step never writes it twice; ``(run_id,
    step_no)`` is unique besides. Deleted by retention (the reconciler), hidden at once by
    ``agentrt memory forget`` (``forgotten_at``) and by compensation."""

    __tablename__ = "memories"
    __table_args__ = (
        UniqueConstraint("run_id", "step_no", name="uq_memories_run_step"),
        Index("ix_memories_key", "tenant_id", "namespace", "key"),
        Index("ix_memories_expires", "expires_at"),
    )

    memory_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    namespace: str = Field(max_length=100)
    key: str = Field(max_length=200)
    #: 1 for a key's first write, then one more per later write of the key
    version: int = 1
    content: str = Field(sa_column=Column(Text, nullable=False))
    #: the retention class (``run``, ``<N>h``, ``<N>d``, ``permanent``)
    retention: str = Field(max_length=40)
    #: deleted by the reconciler after this (None: ``run`` or ``permanent``)
    expires_at: datetime | None = None
    run_id: str = Field(max_length=40, index=True)
    route: str = Field(max_length=100)
    step_no: int
    actor: str | None = Field(default=None, max_length=200)
    #: the evidence ids the write named (checked as retrieved in this run)
    evidence: list[str] | None = _json()
    created_at: datetime
    forgotten_at: datetime | None = None
    #: who forgot it (``cli:<user>``, ``compensation``)
    forgotten_by: str | None = Field(default=None, max_length=200)
