"""The store's hot SQL (runtime.store.prepared) writes and reads exactly what SQLAlchemy
Core statements do, on SQLite and PostgreSQL; a checkpoint stays all-or-nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlmodel import SQLModel

from runtime.contract import RunStatus
from runtime.errors import StaleWrite
from runtime.store.db import make_engine, utcnow
from runtime.store.runs import Checkpoint, RunStore, events_t, runs_t, spend_t, steps_t
from tests.conftest import _database_url


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(_database_url(backend, request, tmp_path))
    SQLModel.metadata.create_all(eng)
    yield eng
    eng.dispose()


def _run(run_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "run_id": run_id,
        "trace_id": "t",
        "request_id": run_id,
        "actor_id": "a",
        "tenant_id": "acme",
        "route": "r",
        "goal": "g",
        "autonomy_level": "a",
        "risk_class": "low",
        "execution_mode": "m",
        "status": "queued",
        "version_set": {"model": "m1"},
        "budget_policy_version": "1",
        "policy_version": "1",
        "allowed_tools": ["kb.search"],
        "input": {"q": [1, None, "it's"]},
        "output": None,
        "created_at": now,
        "updated_at": now,
    }


def _checkpoint(run_id: str, step_no: int, status: RunStatus) -> Checkpoint:
    now = utcnow()
    return Checkpoint(
        run_id=run_id,
        step_no=step_no,
        status=status,
        run_updates={"turns": step_no + 1, "output": {"o": [1, None]}, "started_at": now},
        step={
            "run_id": run_id,
            "tenant_id": "acme",
            "step_no": step_no,
            "kind": "reply",
            "proposal": {"type": "reply"},
            "outcome": "ok",
            "observation": None,
            "started_at": now,
            "finished_at": now,
        },
        events=[
            {
                "run_id": run_id,
                "tenant_id": "acme",
                "trace_id": "t",
                "step_no": step_no,
                "at": now,
                "kind": f"k{i}",
                "data": {"i": i} if i % 2 else None,
            }
            for i in range(5)
        ],
        spend={
            "run_id": run_id,
            "tenant_id": "acme",
            "route": "r",
            "step_no": step_no,
            "day": "2026-01-01",
            "tokens": 7,
            "at": now,
        },
    )


def _decision(run_id: str) -> dict[str, Any]:
    """An allow decision on the run's first call (step 0, call 0)."""
    return {
        "run_id": run_id,
        "tenant_id": "acme",
        "step_no": 0,
        "call_index": 0,
        "tool": "kb.search",
        "decision": "allow",
        "reason_codes": ["ok"],
        "policy_version": "1",
        "args_digest": "d",
        "at": utcnow(),
    }


def test_get_run_reads_what_core_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(runs_t), [_run("r1")])
        core = dict(conn.execute(select(runs_t)).mappings().one())
    assert RunStore(engine).get_run("r1") == core
    assert RunStore(engine).get_run("r1", tenant_id="acme") == core


def test_start_run_moves_only_a_queued_run(engine: Engine) -> None:
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    started = store.start_run("r1")
    assert started is not None
    assert started["status"] == "running" and started["version"] == 2
    assert started == store.get_run("r1")
    assert store.start_run("r1") is None


def test_checkpoint_writes_in_order_and_loses_cleanly(engine: Engine) -> None:
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    store.checkpoint(_checkpoint("r1", 0, RunStatus.RUNNING))
    with pytest.raises(StaleWrite):  # a second copy of the same step
        store.checkpoint(_checkpoint("r1", 0, RunStatus.RUNNING))
    store.checkpoint(_checkpoint("r1", 1, RunStatus.SUCCEEDED))
    run = store.get_run("r1")
    assert (run["status"], run["next_step"], run["version"]) == ("succeeded", 2, 3)
    assert run["output"] == {"o": [1, None]}
    assert [s["step_no"] for s in store.steps("r1")] == [0, 1]
    kinds = [(e["step_no"], e["kind"]) for e in store.trace("r1")]
    assert kinds == [(s, f"k{i}") for s in (0, 1) for i in range(5)]
    assert store.spend(run_id="r1")["tokens"] == 14
    with engine.connect() as conn:  # the losing copy wrote nothing anywhere
        assert len(conn.execute(select(steps_t.c.id)).all()) == 2
        assert len(conn.execute(select(events_t.c.id)).all()) == 10
        assert len(conn.execute(select(spend_t.c.id)).all()) == 2


def test_checkpoint_whose_step_row_exists_writes_nothing(engine: Engine) -> None:
    """A unique violation in one insert fails the whole checkpoint (run row untouched)."""
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    cp = _checkpoint("r1", 0, RunStatus.RUNNING)
    with engine.begin() as conn:
        conn.execute(insert(steps_t), [cp.step])
    with pytest.raises(StaleWrite):
        store.checkpoint(cp)
    run = store.get_run("r1")
    assert (run["status"], run["next_step"], run["version"]) == ("queued", 0, 1)
    assert store.trace("r1") == [] and store.spend(run_id="r1")["tokens"] == 0


def test_stored_cells_match_core_inserts(engine: Engine) -> None:
    """Byte for byte what a Core insert stores (JSON text, timestamps, defaults)."""
    store = RunStore(engine)
    row_a = _run("a" + uuid.uuid4().hex[:8])
    other = "b" + uuid.uuid4().hex[:8]
    row_b = {**row_a, "run_id": other, "request_id": other}
    with engine.begin() as conn:
        conn.execute(insert(runs_t), [row_a])
        store._sql.insert(conn, runs_t, [row_b])
        raw = {r[0]: tuple(r) for r in conn.exec_driver_sql("SELECT * FROM runs")}
    skip = {"run_id", "request_id"}
    cols = [c.name for c in runs_t.c]
    a = [v for c, v in zip(cols, raw[row_a["run_id"]], strict=True) if c not in skip]
    b = [v for c, v in zip(cols, raw[row_b["run_id"]], strict=True) if c not in skip]
    assert a == b


def test_store_decisions_is_idempotent_and_keeps_every_trace(engine: Engine) -> None:
    """A redelivered step stores its decision once; both copies' trace events are kept."""
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    decision = _decision("r1")
    events = _checkpoint("r1", 0, RunStatus.RUNNING).events[:2]
    store.store_decisions([decision], events)
    store.store_decisions([decision], events)
    assert [d["decision"] for d in store.policy_decisions("r1")] == ["allow"]
    assert [e["kind"] for e in store.trace("r1")] == ["k0", "k1", "k0", "k1"]


def test_a_checkpoint_after_a_dead_copy_stored_the_decision_goes_through(
    engine: Engine,
) -> None:
    """A copy of the step stored the call's decision ahead of the tool and died; the next
    copy checkpoints the same call's decision (it waited, or was refused): the step
    commits with the first decision standing, instead of losing to a copy that never
    checkpoints (which looped the step forever)."""
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    decision = _decision("r1")
    store.store_decisions([decision], [])
    cp = _checkpoint("r1", 0, RunStatus.RUNNING)
    cp.decisions = [{**decision, "decision": "deny", "reason_codes": ["later"]}]
    store.checkpoint(cp)
    run = store.get_run("r1")
    assert (run["status"], run["next_step"]) == ("running", 1)
    assert [d["decision"] for d in store.policy_decisions("r1")] == ["allow"]
    assert [s["step_no"] for s in store.steps("r1")] == [0]
    with pytest.raises(StaleWrite):  # a second copy of the checkpoint still loses
        store.checkpoint(cp)


def test_writes_that_do_not_wait_for_the_disk_leave_every_later_commit_waiting(
    engine: Engine,
) -> None:
    """start_run and a read's decision commit without waiting for PostgreSQL's disk: the
    setting is local to their own statement's transaction, never left on the pooled
    connection where the next checkpoint would inherit it."""
    store = RunStore(engine)
    store.insert_run(_run("r1"), [])
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT 1").scalar()
        if engine.dialect.name == "postgresql":
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    started = store.start_run("r1")
    assert started is not None and started["status"] == "running"
    store.store_decisions([_decision("r1")], [], synchronous=False)
    assert [d["decision"] for d in store.policy_decisions("r1")] == ["allow"]
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:  # the pool hands back the connection those writes used
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
