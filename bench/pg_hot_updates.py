"""How many of the ``runs`` table's updates PostgreSQL makes HOT, per schema revision.

A HOT (heap-only tuple) update writes the new row version on the same page and touches no
index; PostgreSQL makes one only when no indexed column changes (columns of an index's
predicate count) and the page has room. Every step checkpoints its run (``UPDATE runs``),
so a run's indexes decide whether each step writes one heap tuple or one heap tuple plus
an entry in every index of ``runs``.

For each revision asked for, in a fresh schema migrated to it: insert ``--runs`` runs, start
each (queued -> running), then checkpoint each ``--steps`` times through ``RunStore`` (the
store's own statements: on PostgreSQL the one-statement checkpoint with its step, trace
and spend rows), round-robin over the runs as concurrent runs interleave, the last step of
each finishing it (running -> succeeded). Then it reads ``n_tup_upd`` and ``n_tup_hot_upd``
of ``runs`` from ``pg_stat_user_tables`` and lists the table's indexes and their size.

The updates that change ``status`` (the start and the last step: 2 of ``steps + 1`` per
run) can never be HOT while an index covers ``status``, so the best ratio is
``(steps - 1) / (steps + 1)``.

Run: ``.venv/bin/python bench/pg_hot_updates.py [--revision REV ...] [--runs N]
[--steps M] [--fillfactor F] [--hold-snapshot] [--database-url URL]``. Defaults: revision
``0005_state_generations`` then ``head``, 500 runs, 10 steps, PostgreSQL at
``postgresql://postgres@127.0.0.1:5432/test``. Each schema is dropped at the end
(``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alembic import command

from runtime.contract import RunStatus
from runtime.store.db import make_engine, utcnow
from runtime.store.migrations import runner
from runtime.store.runs import Checkpoint, RunStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REVISIONS = ("0005_state_generations", "head")


@dataclass
class Result:
    revision: str
    updates: int
    hot: int
    indexes: list[tuple[str, str]]
    index_bytes: int
    table_bytes: int
    reloptions: list[str]
    seconds: float

    @property
    def ratio(self) -> float:
        return self.hot / self.updates if self.updates else 0.0


def schema_url(base: str, schema: str) -> str:
    options = urllib.parse.quote(f"-csearch_path={schema}")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={options}"


def run_row(n: int, tag: str) -> dict[str, Any]:
    now = utcnow()
    run_id = f"run-{tag}-{n:06d}"
    return {
        "run_id": run_id,
        "trace_id": f"tr-{tag}-{n:06d}",
        "request_id": f"req-{n:06d}",
        "actor_id": "user:bench",
        "tenant_id": f"tenant-{n % 7}",
        "route": "bench.read",
        "goal": "find the refund policy and answer the customer's question about it",
        "autonomy_level": "act_with_approval",
        "risk_class": "low",
        "execution_mode": "async",
        "status": RunStatus.QUEUED.value,
        "version_set": {"model": "scripted@1", "prompt": "p1", "tools": "t1"},
        "budget_policy_version": "b1",
        "policy_version": "pol1",
        "workflow_step": "queued",
        "allowed_tools": ["kb.search"],
        "input": {"question": "what is the refund policy?", "ticket": f"T-{n}"},
        "created_at": now,
        "updated_at": now,
    }


def checkpoint(run: dict[str, Any], step_no: int, last: bool) -> Checkpoint:
    """What a step of the bench's workload writes (a tool call, or the final reply)."""
    now = utcnow()
    updates: dict[str, Any] = {"turns": step_no + 1, "checkpoint_ref": f"step:{step_no}"}
    if last:
        updates.update(
            output={"answer": "refunds within 30 days"},
            stop_reason="completed",
            finished_at=now,
            workflow_step="finished",
        )
    else:
        updates["workflow_step"] = "tool:kb.search"
    return Checkpoint(
        run_id=run["run_id"],
        step_no=step_no,
        status=RunStatus.SUCCEEDED if last else RunStatus.RUNNING,
        run_updates=updates,
        step={
            "run_id": run["run_id"],
            "tenant_id": run["tenant_id"],
            "step_no": step_no,
            "kind": "reply" if last else "tool_call",
            "proposal": {"type": "tool_call", "tool": "kb.search"},
            "outcome": "ok",
            "observation": {"hits": 3},
            "input_tokens": 120,
            "output_tokens": 30,
            "model_version": "scripted@1",
            "started_at": now,
            "finished_at": now,
            "duration_ms": 1,
        },
        events=[
            {
                "run_id": run["run_id"],
                "tenant_id": run["tenant_id"],
                "trace_id": run["trace_id"],
                "step_no": step_no,
                "at": now,
                "kind": kind,
                "data": {"step": step_no},
            }
            for kind in ("step_started", "proposal", "step_finished")
        ],
        spend={
            "run_id": run["run_id"],
            "tenant_id": run["tenant_id"],
            "route": run["route"],
            "step_no": step_no,
            "day": now.strftime("%Y-%m-%d"),
            "tokens": 150,
            "input_tokens": 120,
            "output_tokens": 30,
            "model_calls": 1,
            "tool_calls": 0 if last else 1,
            "retries": 0,
            "wall_clock_ms": 1,
            "cost_micro_usd": 42,
            "at": now,
        },
    )


def runs_stats(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
        "WHERE schemaname = %s AND relname = 'runs'",
        (schema,),
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


@contextmanager
def snapshot_held(base: str, hold: bool) -> Iterator[None]:
    """With ``hold``: a REPEATABLE READ transaction open throughout, as a long report, a
    ``pg_dump`` or a standby's feedback keeps one: no row version it may see is pruned."""
    if not hold:
        yield
        return
    with psycopg.connect(base) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")  # the snapshot is taken at the first statement
        yield
        holder.rollback()


def measure(
    base: str,
    revision: str,
    runs: int,
    steps: int,
    *,
    keep: bool = False,
    fillfactor: int | None = None,
    hold_snapshot: bool = False,
) -> Result:
    schema = f"agentrt_hot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        engine = make_engine(schema_url(base, schema))
        try:
            with runner.schema_lock(engine) as conn:
                command.upgrade(runner.alembic_config(conn), revision)
                at = runner.read_version(conn) or "?"
                if fillfactor is not None:  # what the revision set, overridden
                    conn.exec_driver_sql(f"ALTER TABLE runs SET (fillfactor = {fillfactor})")
            store = RunStore(engine)
            tag = uuid.uuid4().hex[:6]
            rows = [run_row(n, tag) for n in range(runs)]
            started = time.monotonic()
            with snapshot_held(base, hold_snapshot):
                for row in rows:
                    store.insert_run(row, [])
                for row in rows:
                    if store.start_run(row["run_id"]) is None:
                        raise AssertionError(f"{row['run_id']} did not start")
                for step_no in range(steps):
                    for row in rows:
                        store.checkpoint(checkpoint(row, step_no, last=step_no == steps - 1))
            seconds = time.monotonic() - started
        finally:
            # a backend flushes its statistics when it exits
            engine.dispose()
        expected = runs * (steps + 1)
        deadline = time.monotonic() + 30
        updates, hot = runs_stats(admin, schema)
        while updates < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            updates, hot = runs_stats(admin, schema)
        if updates != expected:
            print(f"warning: {updates} updates counted, {expected} made", file=sys.stderr)
        indexes = [
            (str(name), str(definition))
            for name, definition in admin.execute(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = %s AND tablename = 'runs' ORDER BY indexname",
                (schema,),
            )
        ]
        sizes = admin.execute(
            "SELECT pg_indexes_size(c.oid), pg_relation_size(c.oid), c.reloptions "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'runs'",
            (schema,),
        ).fetchone()
        assert sizes is not None
        if not keep:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        else:
            print(f"kept schema {schema}")
    return Result(
        revision=at,
        updates=updates,
        hot=hot,
        indexes=indexes,
        index_bytes=int(sizes[0]),
        table_bytes=int(sizes[1]),
        reloptions=list(sizes[2] or []),
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument(
        "--revision",
        action="append",
        help="a schema revision to measure at (repeatable); default: "
        + ", ".join(DEFAULT_REVISIONS),
    )
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10, help="checkpoints per run (>= 1)")
    parser.add_argument(
        "--fillfactor",
        type=int,
        help="set this fillfactor on runs after migrating (100: PostgreSQL's default), to "
        "see what the indexes do without it",
    )
    parser.add_argument(
        "--hold-snapshot",
        action="store_true",
        help="keep a REPEATABLE READ transaction open through the workload (old row "
        "versions cannot be pruned: what the page's free space is for)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each schema")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be positive")
    if args.fillfactor is not None and not 10 <= args.fillfactor <= 100:
        parser.error("--fillfactor must be 10 to 100")
    revisions = args.revision or list(DEFAULT_REVISIONS)
    print(
        f"{args.runs} runs x (1 start + {args.steps} checkpoints) = "
        f"{args.runs * (args.steps + 1)} updates of runs per revision; best possible HOT "
        f"ratio with status indexed: {(args.steps - 1) / (args.steps + 1):.2f}"
    )
    for revision in revisions:
        r = measure(
            args.database_url,
            revision,
            args.runs,
            args.steps,
            keep=args.keep,
            fillfactor=args.fillfactor,
            hold_snapshot=args.hold_snapshot,
        )
        print(f"\nrevision {r.revision}")
        print(f"  runs reloptions: {', '.join(r.reloptions) or '(none)'}")
        print(f"  indexes on runs: {len(r.indexes)}")
        for name, definition in r.indexes:
            print(f"    {name}: {definition.split(' USING ', 1)[-1]}")
        print(f"  updates {r.updates}, HOT {r.hot}: n_tup_hot_upd / n_tup_upd = {r.ratio:.3f}")
        print(
            f"  size after: table {r.table_bytes // 1024} KiB, indexes {r.index_bytes // 1024} "
            f"KiB; workload {r.seconds:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
