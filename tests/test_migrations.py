"""Schema migrations on SQLite and PostgreSQL: a database made by the baseline version
(commit 98a37a2, through its own ``create_all``) holding runs is refused at start-up,
upgrades in place through ``agentrt db upgrade`` with every run kept and readable, and ends
with the schema a new database gets; ``db current`` / ``db history``; upgrades are
idempotent and safe to start together."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import SQLModel
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.errors import SchemaOutOfDate, SettingsError
from runtime.store import search_ddl
from runtime.store.approvals import ApprovalStore
from runtime.store.db import make_engine
from runtime.store.migrations import BASELINE, HEAD, UPGRADE_COMMAND, runner
from runtime.store.plain import PlainReads
from runtime.store.recovery_reads import ReconcilerReads, RecoveryReads
from runtime.store.runs import RunStore
from runtime.store.tables import approvals_t, runs_t
from tests import services
from tests.support import ROOT, pg_schema_url

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database on each backend (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agentrt.db'}"
    base = request.getfixturevalue("pg_base_url")
    return pg_schema_url(base, f"agentrt_m_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def make_baseline_database(url: str) -> None:
    """The database agentrt at 98a37a2 made: its own models' ``create_all``, in a process
    of its own (its tables would collide with today's in this one)."""
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "schema_98a37a2.py"), url],
        cwd=ROOT,
        check=True,
        timeout=120,
    )


def baseline_tables() -> dict[str, sa.Table]:
    module = runner.scripts().get_revision(BASELINE).module  # type: ignore[union-attr]
    return {t.name: t for t in module.tables(sa.MetaData())}


def old_run(run_id: str, **changes: Any) -> dict[str, Any]:
    """A run row of the baseline layout (no admitted, no request_digest)."""
    row: dict[str, Any] = {
        "run_id": run_id,
        "trace_id": "t" + run_id,
        "request_id": "req-" + run_id,
        "actor_id": "user:ann",
        "tenant_id": "acme",
        "route": "support.answer",
        "goal": "answer the question",
        "autonomy_level": "act_with_approval",
        "risk_class": "low",
        "execution_mode": "async",
        "status": "succeeded",
        "version_set": {"model": "scripted@1", "prompt": "p1"},
        "budget_policy_version": "b1",
        "policy_version": "pol1",
        "workflow_step": "done",
        "allowed_tools": ["kb.search"],
        "idempotency_key": None,
        "approval_id": None,
        "checkpoint_ref": None,
        "stop_reason": "completed",
        "priority": "normal",
        "input": {"question": "why?"},
        "output": {"answer": "because"},
        "next_step": 2,
        "turns": 2,
        "invalid_proposals": 0,
        "tool_errors": 0,
        "lock_waits": 0,
        "attempt": 0,
        "pending_proposal": None,
        "version": 5,
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=3),
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=3),
        "deadline_at": None,
    }
    return {**row, **changes}


#: the runs written through the baseline layout: finished, an admission refusal (it held
#: its request id then), queued (with an idempotency key)
OLD_RUNS = [
    old_run("r-done"),
    old_run(
        "r-refused",
        status="refused",
        workflow_step="refused",
        stop_reason="refused:queue_full",
        started_at=None,
        output=None,
        next_step=0,
        turns=0,
    ),
    old_run(
        "r-queued",
        status="queued",
        workflow_step=None,
        stop_reason=None,
        started_at=None,
        finished_at=None,
        output=None,
        next_step=0,
        turns=0,
        idempotency_key="idem-1",
        priority="high",
    ),
]


def fill_baseline(engine: Engine) -> None:
    """Runs, a step, spend and trace events, written through SQL in the baseline layout."""
    t = baseline_tables()
    with engine.begin() as conn:
        conn.execute(sa.insert(t["runs"]), OLD_RUNS)
        conn.execute(
            sa.insert(t["steps"]),
            [
                {
                    "run_id": "r-done",
                    "tenant_id": "acme",
                    "step_no": 0,
                    "kind": "tool_call",
                    "proposal": {"tool": "kb.search"},
                    "outcome": "ok",
                    "observation": {"hits": 1},
                    "input_tokens": 120,
                    "output_tokens": 30,
                    "model_version": "scripted@1",
                    "started_at": T0,
                    "finished_at": T0 + timedelta(seconds=1),
                    "duration_ms": 1000,
                }
            ],
        )
        conn.execute(
            sa.insert(t["spend_records"]),
            [
                {
                    "run_id": "r-done",
                    "tenant_id": "acme",
                    "route": "support.answer",
                    "step_no": step,
                    "day": "2026-11-29",
                    "tokens": 150,
                    "input_tokens": 120,
                    "output_tokens": 30,
                    "model_calls": 1,
                    "tool_calls": 1 - step,
                    "retries": 0,
                    "wall_clock_ms": 1000,
                    "cost_micro_usd": 42,
                    "at": T0 + timedelta(seconds=1 + step),
                }
                for step in (0, 1)
            ],
        )
        conn.execute(
            sa.insert(t["trace_events"]),
            [
                {
                    "run_id": "r-done",
                    "tenant_id": "acme",
                    "trace_id": "tr-done",
                    "step_no": None,
                    "at": T0 + timedelta(milliseconds=i),
                    "kind": kind,
                    "data": {"i": i},
                }
                for i, kind in enumerate(["admitted", "step", "finished"])
            ],
        )


R0005 = "0005_state_generations"
#: the indexes of runs at head (primary key aside): since 0006 none covers a column every
#: checkpoint changes, so on PostgreSQL a checkpoint that keeps the status is a HOT update
HEAD_RUNS_INDEXES = {
    "uq_runs_admitted_request",
    "uq_runs_admitted_idem",
    "ix_runs_tenant_status",
    "ix_runs_route_status",
    "ix_runs_status_created",
    # a parent's children (0014)
    "ix_runs_parent",
}


def runs_indexes(engine: Engine) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(engine).get_indexes("runs")}


def runs_fillfactor(engine: Engine) -> str | None:
    options = sa.inspect(engine).get_table_options("runs")
    return options.get("postgresql_with", {}).get("fillfactor")


#: columns of runs added after 0006 (the upgrades below compare the runs of 0005 and 0006)
LATER_RUN_COLUMNS = {
    "budget_extension",
    "release",
    "plan",
    "parent_run_id",
    "parent_step",
    "depth",
    "delegated_budget",
}


def all_runs(engine: Engine) -> list[dict[str, Any]]:
    columns = [c for c in runs_t.c if c.name not in LATER_RUN_COLUMNS]
    with engine.connect() as conn:
        query = sa.select(*columns).order_by(runs_t.c.run_id)
        return [dict(r) for r in conn.execute(query).mappings()]


def migrate(engine: Engine, to: str, *, down: bool = False) -> None:
    with runner.schema_lock(engine) as conn:
        (command.downgrade if down else command.upgrade)(runner.alembic_config(conn), to)


def checkpoint_is_hot(engine: Engine, run_id: str, at: datetime) -> bool:
    """PostgreSQL: whether a checkpoint's UPDATE of a running run that stays running (the
    columns the store's checkpoint sets) is a HOT update - read from the transaction's own
    counters, which need no statistics flush. Those counters also hold what the backend's
    earlier transactions did and it has not flushed yet (PostgreSQL 15+ flushes at most once
    a second): the update's own counts are the difference across it."""
    r = runs_t.c
    counters = sa.text(
        "SELECT pg_stat_get_xact_tuples_hot_updated('runs'::regclass), "
        "pg_stat_get_xact_tuples_updated('runs'::regclass)"
    )
    with engine.begin() as conn:
        hot_before, updated_before = conn.execute(counters).one()
        conn.execute(
            sa.update(runs_t)
            .where(r.run_id == run_id, r.status.in_(["queued", "running"]))
            .values(
                status="running",
                next_step=r.next_step + 1,
                turns=r.turns + 1,
                checkpoint_ref="step:x",
                updated_at=at,
                version=r.version + 1,
            )
        )
        hot, updated = conn.execute(counters).one()
    assert updated - updated_before == 1
    return bool(hot - hot_before == 1)


def cli(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        list(args),
        env={"AGENTRT_DATABASE_URL": url, "COLUMNS": "250"},
    )
    return result.exit_code, result.output


def schema_differences(engine: Engine) -> list[Any]:
    """What autogenerate (``alembic check``) finds between the database and the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                # the documents' full-text index is the database's own, not the models'
                "include_name": search_ddl.include_name,
            },
        )
        return list(compare_metadata(context, SQLModel.metadata))


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything reflection sees of each table, order-free; the partial indexes'
    predicates and the tables' storage parameters too (autogenerate compares neither)."""
    inspector = sa.inspect(engine)
    tables: dict[str, Any] = {}
    for name in sorted(inspector.get_table_names()):
        columns = {
            c["name"]: (str(c["type"]), c["nullable"], str(c.get("default")))
            for c in inspector.get_columns(name)
        }
        indexes = {
            str(i["name"]): (
                tuple(i["column_names"]),
                bool(i["unique"]),
                _where(i.get("dialect_options") or {}),
            )
            for i in inspector.get_indexes(name)
        }
        uniques = sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(name))
        pk = tuple(inspector.get_pk_constraint(name)["constrained_columns"])
        tables[name] = {
            "columns": columns,
            "indexes": indexes,
            "uniques": uniques,
            "pk": pk,
            # PostgreSQL's storage parameters (runs' fillfactor); none on SQLite
            "options": inspector.get_table_options(name),
        }
    return tables


def _where(options: dict[str, Any]) -> str:
    for key in ("sqlite_where", "postgresql_where"):
        if options.get(key) is not None:
            return str(options[key])
    return ""


def version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            str(v)
            for v in conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
        ]


def fresh_snapshot(url: str, tmp_path: Path) -> dict[str, Any]:
    """The schema start-up gives a new, empty database of the same backend."""
    if url.startswith("sqlite"):
        fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        fresh_url = pg_schema_url(services.pg_url(), f"agentrt_f_{uuid.uuid4().hex[:10]}")
    fresh = make_engine(fresh_url)
    try:
        RunStore(fresh).create_schema()
        assert version_rows(fresh) == [HEAD]
        return snapshot(fresh)
    finally:
        fresh.dispose()


# --- the scripts ------------------------------------------------------------------------


def test_head_is_the_scripts_head_and_one_line_of_history() -> None:
    script = runner.scripts()
    assert script.get_heads() == [HEAD]
    assert script.get_bases() == [BASELINE]
    assert next(r.revision for r in runner.history()) == BASELINE
    assert [r.revision for r in runner.history() if r.is_head] == [HEAD]


def test_db_history_lists_every_revision_oldest_first() -> None:
    code, output = cli("sqlite:///unused.db", "db", "history")
    assert code == 0, output
    lines = output.splitlines()
    revisions = [r.revision for r in runner.history()]
    assert [line.split(":", 1)[0].removesuffix(" (head)") for line in lines] == revisions
    assert lines[-1].startswith(f"{HEAD} (head): ") and "98a37a2" in lines[0]
    assert not Path("unused.db").exists()


# --- the baseline database, upgraded in place -------------------------------------------


def test_a_baseline_database_with_runs_upgrades_in_place(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Given a database agentrt at 98a37a2 made, holding runs, steps, spend and trace
    make_baseline_database(db_url)
    fill_baseline(engine)

    # Then start-up refuses it, naming the command, and changes nothing
    with pytest.raises(SchemaOutOfDate) as refused:
        RunStore(engine).create_schema()
    assert UPGRADE_COMMAND in str(refused.value) and "no schema version" in str(refused.value)
    assert not sa.inspect(engine).has_table("alembic_version")
    # the CLI says so in one line (the plain reads leave an unversioned database to it)
    assert PlainReads.open(db_url) is None
    code, output = cli(db_url, "runs", "list")
    assert code == 1 and f"run `{UPGRADE_COMMAND}`" in output
    code, output = cli(db_url, "db", "current")
    assert code == 0 and "no schema version" in output and UPGRADE_COMMAND in output

    # When it is upgraded through the CLI
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0, output
    assert "adopted the unversioned database" in output and f"{HEAD} (head)" in output

    # Then the schema is the models' and a new database's, recorded at head
    assert schema_differences(engine) == []
    assert snapshot(engine) == fresh_snapshot(db_url, tmp_path)
    assert version_rows(engine) == [HEAD]
    code, output = cli(db_url, "db", "current")
    assert (code, output.strip()) == (0, f"revision {HEAD} (head): up to date")

    # and every run is there, readable through the store, with what it held
    RunStore(engine).create_schema()  # start-up accepts it now
    store = RunStore(engine)
    assert {r["run_id"] for r in store.list_runs()} == {r["run_id"] for r in OLD_RUNS}
    for old in OLD_RUNS:
        run = store.read_run(old["run_id"], "acme")
        for key in ("status", "stop_reason", "input", "output", "version_set", "priority"):
            assert run[key] == old[key], (old["run_id"], key)
        assert run["created_at"] == old["created_at"]
        assert run["request_digest"] is None
    # the old admission refusal no longer holds its request id; the others still do
    assert not store.read_run("r-refused")["admitted"]
    assert store.read_run("r-done")["admitted"] and store.read_run("r-queued")["admitted"]
    assert store.find_admitted("acme", "req-r-refused", None) == []
    assert [r["run_id"] for r in store.find_admitted("acme", None, "idem-1")] == ["r-queued"]
    assert [s["input_tokens"] for s in store.steps("r-done")] == [120]
    assert [e["kind"] for e in store.trace("r-done")] == ["admitted", "step", "finished"]
    assert store.spend(run_id="r-done")["cost_micro_usd"] == 84
    # the widened counters hold 64-bit values now
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE spend_records SET tokens = :big"), {"big": 2**40})
    assert store.spend(run_id="r-done")["tokens"] == 2 * 2**40
    # and the views for people read it on the driver again
    reads = PlainReads.open(db_url)
    assert reads is not None
    reads.close()

    # And a second upgrade does nothing
    before = snapshot(engine)
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and "nothing to do" in output
    assert snapshot(engine) == before and version_rows(engine) == [HEAD]
    assert len(store.list_runs()) == len(OLD_RUNS)


def test_a_baseline_database_without_the_reconcilers_index_is_upgraded(
    db_url: str, engine: Engine
) -> None:
    # a database made before the runs(status, updated_at) index existed: create_all never
    # added it to the existing table (0002 adds it; 0006 replaces it)
    make_baseline_database(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_runs_status_updated"))
    before, after = runner.upgrade(engine)
    assert (before.recognised, after.revision) == (BASELINE, HEAD)
    assert schema_differences(engine) == []
    assert runs_indexes(engine) == HEAD_RUNS_INDEXES


def test_a_recorded_older_revision_is_refused_then_upgraded(db_url: str, engine: Engine) -> None:
    with runner.schema_lock(engine) as conn:
        command.upgrade(runner.alembic_config(conn), "0003_proposal_boundary")
    with pytest.raises(SchemaOutOfDate, match="at revision 0003_proposal_boundary") as refused:
        RunStore(engine).create_schema()
    assert refused.value.revision == "0003_proposal_boundary" and refused.value.head == HEAD
    assert UPGRADE_COMMAND in str(refused.value)
    code, output = cli(db_url, "db", "current")
    assert code == 0 and "0003_proposal_boundary" in output and UPGRADE_COMMAND in output
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"from revision 0003_proposal_boundary to {HEAD} (head)" in output
    assert schema_differences(engine) == []
    RunStore(engine).create_schema()


# --- 0006: the indexes of runs, for HOT checkpoints -------------------------------------


def test_an_r0005_database_with_runs_upgrades_to_0006_and_back_keeping_every_run(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    pg = engine.dialect.name == "postgresql"
    # Given a database at 0005 holding finished, queued and running runs
    migrate(engine, R0005)
    running = old_run(
        "r-running",
        status="running",
        workflow_step="started",
        stop_reason=None,
        finished_at=None,
        output=None,
        next_step=1,
        turns=1,
        updated_at=T0 + timedelta(seconds=10),
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(runs_t), [*OLD_RUNS, running])
    assert {"ix_runs_status", "ix_runs_status_updated"} <= runs_indexes(engine)
    if pg:  # the (status, updated_at) index: no checkpoint can be a HOT update
        assert not checkpoint_is_hot(engine, "r-running", T0 + timedelta(seconds=20))
    at_r0005 = snapshot(engine)
    rows = all_runs(engine)
    assert len(rows) == len(OLD_RUNS) + 1

    # When `agentrt db upgrade` takes it to head
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"from revision {R0005} to {HEAD} (head)" in output

    # Then every run is there as it was, and the schema is a new database's
    assert all_runs(engine) == rows
    assert version_rows(engine) == [HEAD]
    assert schema_differences(engine) == []
    at_head = snapshot(engine)
    assert at_head == fresh_snapshot(db_url, tmp_path)
    assert runs_indexes(engine) == HEAD_RUNS_INDEXES
    assert runs_fillfactor(engine) == ("80" if pg else None)
    # the reads the dropped indexes served find the same runs
    store = RunStore(engine)
    assert [r["run_id"] for r in store.list_runs(status="queued")] == ["r-queued"]
    assert [r["run_id"] for r in store.list_runs("acme", "running")] == ["r-running"]
    recovery = RecoveryReads(engine)
    assert recovery.live_run_count() == 2
    assert {r["run_id"] for r in recovery.live_runs()} == {"r-queued", "r-running"}
    idle = ReconcilerReads(engine).idle_runs(T0 + timedelta(hours=1), 10, None)
    assert [r["run_id"] for r in idle] == ["r-queued", "r-running"]  # oldest update first
    if pg:  # and a checkpoint that keeps the run running touches no index
        assert checkpoint_is_hot(engine, "r-running", T0 + timedelta(seconds=30))
    rows = all_runs(engine)

    # And the downgrade gives 0005's schema back with every run; upgrading again, head's
    migrate(engine, R0005, down=True)
    assert version_rows(engine) == [R0005]
    assert snapshot(engine) == at_r0005
    assert all_runs(engine) == rows
    migrate(engine, "head")
    assert snapshot(engine) == at_head
    assert all_runs(engine) == rows


def test_unversioned_tables_of_the_r0005_layout_are_recognised_and_upgraded(
    db_url: str, engine: Engine
) -> None:
    # what agentrt made with create_all at 0005, with part of 0006 done by hand: the new
    # index made, one of the two it replaces dropped
    migrate(engine, R0005)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(sa.text("CREATE INDEX ix_runs_status_created ON runs (status, created_at)"))
        conn.execute(sa.text("DROP INDEX ix_runs_status"))
        conn.execute(sa.insert(runs_t), OLD_RUNS)
    with pytest.raises(SchemaOutOfDate, match=f"matches revision {R0005}"):
        RunStore(engine).create_schema()
    before, after = runner.upgrade(engine)
    assert (before.recognised, after.revision) == (R0005, HEAD)
    assert schema_differences(engine) == []
    assert runs_indexes(engine) == HEAD_RUNS_INDEXES
    assert runs_fillfactor(engine) == ("80" if engine.dialect.name == "postgresql" else None)
    assert len(all_runs(engine)) == len(OLD_RUNS)


# --- 0007: the approvals table ------------------------------------------------------------

R0006 = "0006_runs_hot_updates"


def an_approval(approval_id: str, run_id: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "approval_id": approval_id,
        "tenant_id": "acme",
        "run_id": run_id,
        "step_no": 0,
        "route": "support.answer",
        "tool": "payments.refund",
        "tool_version": "1",
        "policy_version": "pol1",
        "digest": "d" * 64,
        "args": {"amount": 120.5, "customer_id": "cus_1"},
        "rule_id": "refund_needs_approval",
        "effect": "require_approval",
        "owner": None,
        "approvers": {"owner": None, "not": ["user:ann"]},
        "submitted_by": "user:ann",
        "status": "pending",
        "requested_at": T0,
        "expires_at": T0 + timedelta(days=1),
        "latency_ms": None,
    }
    return {**row, **changes}


def test_an_r0006_database_with_runs_upgrades_to_0007_and_back(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Given a database at 0006 holding runs, one of them waiting for an approval
    migrate(engine, R0006)
    waiting = old_run(
        "r-waiting",
        status="waiting",
        stop_reason="needs_approval:refund_needs_approval",
        approval_id="a-1",
        pending_proposal={"type": "tool_call", "tool": "payments.refund", "args": {}},
        finished_at=None,
        output=None,
        next_step=1,
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(runs_t), [*OLD_RUNS, waiting])
    assert "approvals" not in sa.inspect(engine).get_table_names()
    at_r0006 = snapshot(engine)
    rows = all_runs(engine)
    with pytest.raises(SchemaOutOfDate, match=UPGRADE_COMMAND):
        RunStore(engine).create_schema()

    # When `agentrt db upgrade` takes it to head
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"from revision {R0006} to {HEAD} (head)" in output

    # Then every run is as it was, and the schema is a new database's, approvals included
    assert all_runs(engine) == rows
    assert version_rows(engine) == [HEAD]
    assert schema_differences(engine) == []
    at_head = snapshot(engine)
    assert at_head == fresh_snapshot(db_url, tmp_path)
    assert {
        "ix_approvals_tenant_status",
        "ix_approvals_status_expires",
        "ix_approvals_owner_status",
    } <= set(at_head["approvals"]["indexes"])  # (PostgreSQL lists the unique one too)
    assert at_head["approvals"]["uniques"] == [("run_id", "step_no")]
    # the table takes approvals, one per run step, and reads them back through the store
    with engine.begin() as conn:
        conn.execute(sa.insert(approvals_t), [an_approval("a-1", "r-waiting")])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(approvals_t), [an_approval("a-2", "r-waiting")])
    store = ApprovalStore(engine)
    found = store.get("a-1", "acme")
    assert found is not None and found["args"] == {"amount": 120.5, "customer_id": "cus_1"}
    assert found["requested_at"] == T0 and store.get("a-1", "other") is None
    assert [r["approval_id"] for r in store.due(T0 + timedelta(days=2), 10)] == ["a-1"]

    # And the downgrade gives 0006's schema back with every run; upgrading again, head's
    migrate(engine, R0006, down=True)
    assert version_rows(engine) == [R0006]
    assert snapshot(engine) == at_r0006
    assert all_runs(engine) == rows
    migrate(engine, "head")
    assert snapshot(engine) == at_head


def test_unversioned_tables_of_the_r0006_layout_are_recognised_and_upgraded(
    db_url: str, engine: Engine
) -> None:
    # what agentrt made with create_all at 0006: no approvals table, no version
    migrate(engine, R0006)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(sa.insert(runs_t), OLD_RUNS)
    with pytest.raises(SchemaOutOfDate, match=f"matches revision {R0006}"):
        RunStore(engine).create_schema()
    before, after = runner.upgrade(engine)
    assert (before.recognised, after.revision) == (R0006, HEAD)
    assert schema_differences(engine) == []
    assert len(all_runs(engine)) == len(OLD_RUNS)


# --- new databases and the other start-up cases -----------------------------------------


def test_a_new_database_is_created_at_head(db_url: str, engine: Engine, tmp_path: Path) -> None:
    code, output = cli(db_url, "db", "current")
    if db_url.startswith("sqlite"):  # reading does not create the file
        assert code == 0 and "no database yet" in output
        assert not (tmp_path / "agentrt.db").exists()
    else:
        assert code == 0 and "empty database" in output
    RunStore(engine).create_schema()
    assert version_rows(engine) == [HEAD]
    assert schema_differences(engine) == []
    # and the migrations alone, from nothing, make the same schema
    fresh = snapshot(engine)
    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            conn.execute(sa.text(f"DROP TABLE {table.name}"))
        conn.execute(sa.text("DROP TABLE alembic_version"))
    with runner.schema_lock(engine) as conn:
        command.upgrade(runner.alembic_config(conn), "head")
    assert snapshot(engine) == fresh


def test_db_upgrade_creates_an_empty_database(db_url: str, engine: Engine) -> None:
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"created the schema at revision {HEAD} (head)" in output
    assert version_rows(engine) == [HEAD]


def test_unversioned_tables_of_todays_layout_are_stamped_at_start_up(engine: Engine) -> None:
    # what agentrt made before migrations, since the last schema change: nothing to upgrade
    SQLModel.metadata.create_all(engine)
    RunStore(engine).create_schema()
    assert version_rows(engine) == [HEAD]


def test_tables_older_than_the_baseline_are_refused_by_name(db_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE runs (run_id VARCHAR(40) PRIMARY KEY, status TEXT)"))
    with pytest.raises(SchemaOutOfDate, match="predate the baseline") as refused:
        RunStore(engine).create_schema()
    assert "table steps is missing" in str(refused.value)
    code, output = cli(db_url, "db", "upgrade")
    assert code == 1 and "cannot adopt them" in output and "table steps is missing" in output
    assert sa.inspect(engine).get_table_names() == ["runs"]  # nothing made, nothing dropped


def test_a_revision_this_version_does_not_know_is_refused(db_url: str, engine: Engine) -> None:
    RunStore(engine).create_schema()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    with pytest.raises(SettingsError, match="0099_from_the_future, which this agentrt"):
        RunStore(engine).create_schema()
    code, output = cli(db_url, "db", "upgrade")
    assert code == 1 and "0099_from_the_future" in output


def test_processes_starting_together_create_the_schema_once(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def start_up(eng: Engine) -> None:
        start.wait()
        try:
            RunStore(eng).create_schema()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start_up, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failures == []
        assert version_rows(engines[0]) == [HEAD]
        assert schema_differences(engines[0]) == []
    finally:
        for e in engines:
            e.dispose()


def test_the_worker_refuses_an_older_schema(db_url: str, redis_url: str, tmp_path: Path) -> None:
    make_baseline_database(db_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")},
        "AGENTRT_CONFIG": str(ROOT / "tests" / "config" / "runtime.yaml"),
        "AGENTRT_REDIS_URL": redis_url,
        "AGENTRT_DATABASE_URL": db_url,
        "AGENTRT_HOME": str(tmp_path),
        "AGENTRT_VISIBILITY_TIMEOUT_S": "60",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-P", "solo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert f"run `{UPGRADE_COMMAND}`" in proc.stdout + proc.stderr


R0010 = "0010_event_sources"


def test_an_r0010_database_with_runs_upgrades_to_head_and_back(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Given a database at 0010 holding runs (none of them has a release)
    migrate(engine, R0010)
    with engine.begin() as conn:
        conn.execute(sa.insert(runs_t), OLD_RUNS)
    assert "release" not in {c["name"] for c in sa.inspect(engine).get_columns("runs")}
    at_r0010 = snapshot(engine)
    rows = all_runs(engine)

    # When `agentrt db upgrade` takes it to head
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"from revision {R0010} to {HEAD} (head)" in output

    # Then every run is as it was, under no release, and the schema is a new database's
    assert all_runs(engine) == rows
    with engine.connect() as conn:
        assert {r for (r,) in conn.execute(sa.select(runs_t.c.release))} == {None}
    assert schema_differences(engine) == []
    at_head = snapshot(engine)
    assert at_head == fresh_snapshot(db_url, tmp_path)
    assert {"release_state", "release_audit"} <= set(at_head)

    # And the downgrade gives 0010's schema back with every run; upgrading again, head's
    migrate(engine, R0010, down=True)
    assert snapshot(engine) == at_r0010 and all_runs(engine) == rows
    migrate(engine, "head")
    assert snapshot(engine) == at_head


R0013 = "0013_operator_levers"


def test_an_r0013_database_with_runs_upgrades_to_head_and_back(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Given a database at 0013 holding runs (none of them has a plan column)
    migrate(engine, R0013)
    with engine.begin() as conn:
        conn.execute(sa.insert(runs_t), OLD_RUNS)
    assert "plan" not in {c["name"] for c in sa.inspect(engine).get_columns("runs")}
    at_r0013 = snapshot(engine)
    rows = all_runs(engine)

    # When `agentrt db upgrade` takes it to head
    code, output = cli(db_url, "db", "upgrade")
    assert code == 0 and f"from revision {R0013} to {HEAD} (head)" in output

    # Then every run is as it was, with no plan, and the schema is a new database's
    assert all_runs(engine) == rows
    with engine.connect() as conn:
        assert {p for (p,) in conn.execute(sa.select(runs_t.c.plan))} == {None}
    assert schema_differences(engine) == []
    at_head = snapshot(engine)
    assert at_head == fresh_snapshot(db_url, tmp_path)

    # And the downgrade gives 0013's schema back with every run; upgrading again, head's
    migrate(engine, R0013, down=True)
    assert snapshot(engine) == at_r0013 and all_runs(engine) == rows
    migrate(engine, "head")
    assert snapshot(engine) == at_head
