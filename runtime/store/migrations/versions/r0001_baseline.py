"""Baseline: the schema of commit 98a37a2 (the tables ``create_all`` made then).

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision: str | None = None
branch_labels = None
depends_on = None

# SQLModel's AutoString and UTCDateTime compile to these: the DDL is what create_all made
_TIME = sa.DateTime(timezone=True)
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _s(length: int) -> sa.String:
    return sa.String(length=length)


def _runs(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "runs",
        metadata,
        col("run_id", _s(40), primary_key=True),
        col("trace_id", _s(40), nullable=False),
        col("request_id", _s(200), nullable=False),
        col("actor_id", _s(200), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("route", _s(100), nullable=False),
        col("goal", sa.Text(), nullable=False),
        col("autonomy_level", _s(40), nullable=False),
        col("risk_class", _s(10), nullable=False),
        col("execution_mode", _s(30), nullable=False),
        col("status", _s(20), nullable=False),
        col("version_set", sa.JSON(), nullable=False),
        col("budget_policy_version", _s(100), nullable=False),
        col("policy_version", _s(100), nullable=False),
        col("workflow_step", _s(200), nullable=True),
        col("allowed_tools", sa.JSON(), nullable=False),
        col("idempotency_key", _s(200), nullable=True),
        col("approval_id", _s(64), nullable=True),
        col("checkpoint_ref", _s(100), nullable=True),
        col("stop_reason", _s(200), nullable=True),
        col("priority", _s(10), nullable=False),
        col("input", sa.JSON(), nullable=True),
        col("output", sa.JSON(), nullable=True),
        col("next_step", sa.Integer(), nullable=False),
        col("turns", sa.Integer(), nullable=False),
        col("invalid_proposals", sa.Integer(), nullable=False),
        col("tool_errors", sa.Integer(), nullable=False),
        col("lock_waits", sa.Integer(), nullable=False),
        col("attempt", sa.Integer(), nullable=False),
        col("pending_proposal", sa.JSON(), nullable=True),
        col("version", sa.Integer(), nullable=False),
        col("created_at", _TIME, nullable=False),
        col("updated_at", _TIME, nullable=False),
        col("started_at", _TIME, nullable=True),
        col("finished_at", _TIME, nullable=True),
        col("deadline_at", _TIME, nullable=True),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_runs_tenant_request"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_runs_tenant_idem"),
        sa.Index("ix_runs_tenant_status", "tenant_id", "status"),
        sa.Index("ix_runs_route_status", "route", "status"),
        sa.Index("ix_runs_status_updated", "status", "updated_at"),
        sa.Index("ix_runs_status", "status"),
    )


def _steps(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "steps",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("step_no", sa.Integer(), nullable=False),
        col("kind", _s(20), nullable=False),
        col("proposal", sa.JSON(), nullable=True),
        col("outcome", _s(200), nullable=False),
        col("observation", sa.JSON(), nullable=True),
        col("input_tokens", sa.Integer(), nullable=False),
        col("output_tokens", sa.Integer(), nullable=False),
        col("model_version", _s(200), nullable=True),
        col("started_at", _TIME, nullable=False),
        col("finished_at", _TIME, nullable=False),
        col("duration_ms", sa.Integer(), nullable=False),
        sa.UniqueConstraint("run_id", "step_no", name="uq_steps_run_step"),
        sa.Index("ix_steps_run_id", "run_id"),
    )


def _trace_events(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "trace_events",
        metadata,
        col("id", _BIGINT_PK, primary_key=True, autoincrement=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("trace_id", _s(40), nullable=False),
        col("step_no", sa.Integer(), nullable=True),
        col("at", _TIME, nullable=False),
        col("kind", _s(40), nullable=False),
        col("data", sa.JSON(), nullable=True),
        sa.Index("ix_trace_run_seq", "run_id", "id"),
    )


def _policy_decisions(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "policy_decisions",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("step_no", sa.Integer(), nullable=False),
        col("call_index", sa.Integer(), nullable=False),
        col("tool", _s(200), nullable=False),
        col("decision", _s(20), nullable=False),
        col("rule_id", _s(100), nullable=True),
        col("reason_codes", sa.JSON(), nullable=False),
        col("policy_version", _s(100), nullable=False),
        col("args_digest", _s(64), nullable=False),
        col("at", _TIME, nullable=False),
        sa.UniqueConstraint("run_id", "step_no", "call_index", name="uq_policy_run_step_call"),
        sa.Index("ix_policy_tenant_decision", "tenant_id", "decision"),
    )


def _side_effects(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "side_effects",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("idempotency_key", _s(120), nullable=False, unique=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("step_no", sa.Integer(), nullable=False),
        col("tool", _s(200), nullable=False),
        col("side_effect_class", _s(20), nullable=False),
        col("status", _s(20), nullable=False),
        col("args_digest", _s(64), nullable=False),
        col("args", sa.JSON(), nullable=True),
        col("result", sa.JSON(), nullable=True),
        col("error", sa.Text(), nullable=True),
        col("fencing_token", sa.Integer(), nullable=True),
        col("attempts", sa.Integer(), nullable=False),
        col("started_at", _TIME, nullable=False),
        col("finished_at", _TIME, nullable=True),
        col("compensation_started_at", _TIME, nullable=True),
        sa.Index("ix_side_effects_run_id", "run_id"),
    )


def _spend_records(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "spend_records",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("route", _s(100), nullable=False),
        col("step_no", sa.Integer(), nullable=False),
        col("day", _s(10), nullable=False),
        *(
            col(name, sa.Integer(), nullable=False)
            for name in (
                "tokens",
                "input_tokens",
                "output_tokens",
                "model_calls",
                "tool_calls",
                "retries",
                "wall_clock_ms",
                "cost_micro_usd",
            )
        ),
        col("at", _TIME, nullable=False),
        sa.UniqueConstraint("run_id", "step_no", name="uq_spend_run_step"),
        sa.Index("ix_spend_tenant_day", "tenant_id", "day"),
    )


def _dead_letters(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "dead_letters",
        metadata,
        col("id", _s(40), primary_key=True),
        col("queue", _s(100), nullable=False),
        col("task_name", _s(200), nullable=True),
        col("task_id", _s(200), nullable=True),
        col("run_id", _s(40), nullable=True),
        col("tenant_id", _s(100), nullable=True),
        col("route", _s(100), nullable=True),
        col("step_no", sa.Integer(), nullable=True),
        col("trace_id", _s(40), nullable=True),
        col("version_set", sa.JSON(), nullable=True),
        col("dl_class", _s(20), nullable=False),
        col("error_type", _s(200), nullable=False),
        col("error_message", sa.Text(), nullable=True),
        col("traceback", sa.Text(), nullable=True),
        col("message", sa.JSON(), nullable=True),
        col("attempts", sa.JSON(), nullable=True),
        col("attempt_count", sa.Integer(), nullable=False),
        col("first_failed_at", _TIME, nullable=False),
        col("last_failed_at", _TIME, nullable=False),
        col("status", _s(10), nullable=False),
        col("retry_count", sa.Integer(), nullable=False),
        col("created_at", _TIME, nullable=False),
        col("resolved_at", _TIME, nullable=True),
        col("resolved_by", _s(200), nullable=True),
        sa.Index("ix_dl_status_queue", "status", "queue"),
        sa.Index("ix_dl_tenant_status", "tenant_id", "status"),
        sa.Index("ix_dl_run", "run_id"),
    )


def _step_failures(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "step_failures",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("run_id", _s(40), nullable=False),
        col("tenant_id", _s(100), nullable=False),
        col("step_no", sa.Integer(), nullable=False),
        col("attempt", sa.Integer(), nullable=False),
        col("kind", _s(40), nullable=False),
        col("error_type", _s(200), nullable=False),
        col("error", sa.Text(), nullable=True),
        col("worker", _s(200), nullable=True),
        col("at", _TIME, nullable=False),
        sa.Index("ix_failures_run_step", "run_id", "step_no"),
    )


def _operator_audit(metadata: sa.MetaData) -> sa.Table:
    col = sa.Column
    return sa.Table(
        "operator_audit",
        metadata,
        col("id", sa.Integer(), primary_key=True),
        col("at", _TIME, nullable=False),
        col("actor", _s(200), nullable=False),
        col("action", _s(40), nullable=False),
        col("filter", sa.JSON(), nullable=True),
        col("count", sa.Integer(), nullable=False),
        col("ids", sa.JSON(), nullable=True),
        col("detail", sa.JSON(), nullable=True),
    )


_TABLES = (
    _runs,
    _steps,
    _trace_events,
    _policy_decisions,
    _side_effects,
    _spend_records,
    _dead_letters,
    _step_failures,
    _operator_audit,
)


def tables(metadata: sa.MetaData) -> list[sa.Table]:
    """The baseline's tables, as commit 98a37a2 declared them."""
    return [table(metadata) for table in _TABLES]


def missing(inspector: sa.Inspector) -> list[str]:
    """What an unversioned database lacks of the baseline (empty: it holds the baseline).

    The ``runs(status, updated_at)`` index is left to revision 0002, which adds it where
    an older ``create_all`` never did."""
    present = set(inspector.get_table_names())
    baseline = tables(sa.MetaData())
    # whole tables first: they say the most about how old the database is
    problems = [f"table {t.name} is missing" for t in baseline if t.name not in present]
    for table in baseline:
        if table.name not in present:
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        problems += [
            f"column {table.name}.{c.name} is missing"
            for c in table.columns
            if c.name not in columns
        ]
    return problems


def upgrade() -> None:
    metadata = sa.MetaData()
    tables(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("agentrt migrations go forward only")
