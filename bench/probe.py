"""An instrumented Celery worker for bench/run.py: counts what one task costs.

Runs ``tasks.app`` (or the bare app) in this process with the solo pool, so the consumer
loop and the task body share one process, and records from ``worker_ready`` to
``worker_shutting_down``:

* SQL: transactions (read / write), statements by verb and table, pool checkouts;
* Redis: round trips (one per ``send_packed_command``: a pipeline is one) and the commands
  they carry, split into broker (kombu, keys under ``<ns>:celery:``) and runtime;
* optionally a cProfile of everything the process did meanwhile.

Usage (bench/run.py starts it with the phase's ``AGENTRT_*`` environment)::

    python bench/probe.py --app runtime|bare --out counts.json [--profile out.prof] \
        -- worker -P solo --without-mingle --without-gossip -l WARNING
"""

from __future__ import annotations

import argparse
import cProfile
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.connection  # noqa: E402
from celery import signals  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.pool import Pool  # noqa: E402

COUNTS: Counter[str] = Counter()
STATE: dict[str, Any] = {"active": False}
_FROM = re.compile(r"\bFROM\s+\"?(\w+)", re.IGNORECASE)


def _sql_key(statement: str) -> str:
    words = statement.split(None, 3)
    verb = words[0].upper() if words else "?"
    if verb == "INSERT" and len(words) > 2:
        return f"INSERT {words[2].strip(chr(34))}"
    if verb == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1].strip(chr(34))}"
    if verb == "DELETE" and len(words) > 2:
        return f"DELETE {words[2].strip(chr(34))}"
    if verb == "SELECT":
        m = _FROM.search(statement)
        return f"SELECT {m.group(1) if m else '-'}"
    return " ".join(w.upper() for w in words[:2])


def install_sql_counters() -> None:
    @event.listens_for(Engine, "begin")
    def _begin(conn: Any) -> None:
        if STATE["active"]:
            write = conn.get_execution_options().get("write", False)
            COUNTS["sql.txn.write" if write else "sql.txn.read"] += 1

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        if STATE["active"]:
            COUNTS["sql.commit"] += 1

    @event.listens_for(Engine, "rollback")
    def _rollback(conn: Any) -> None:
        if STATE["active"]:
            COUNTS["sql.rollback"] += 1

    @event.listens_for(Engine, "before_cursor_execute")
    def _stmt(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if STATE["active"]:
            COUNTS["sql.statements"] += 1
            COUNTS[f"sql.stmt {_sql_key(statement)}"] += 1

    @event.listens_for(Pool, "checkout")
    def _checkout(*_: Any) -> None:
        if STATE["active"]:
            COUNTS["sql.pool_checkout"] += 1


def install_pg_counters() -> None:
    """PostgreSQL round trips as psycopg makes them: each cursor execute, each executemany
    (pipelined: one), and each BEGIN / COMMIT / ROLLBACK the connection sends itself (a
    transaction's BEGIN is a round trip of its own; an idle rollback sends nothing)."""
    try:
        import psycopg
        from psycopg._connection_base import BaseConnection
    except ImportError:
        return

    original_command = BaseConnection._exec_command

    def command(self: Any, cmd: Any, *args: Any, **kwargs: Any) -> Any:
        if STATE["active"] and not self._pipeline:
            raw = cmd if isinstance(cmd, bytes) else str(cmd).encode()
            COUNTS["pg.rtt"] += 1
            COUNTS[f"pg.cmd {raw.split(None, 1)[0].decode(errors='replace').upper()}"] += 1
        return original_command(self, cmd, *args, **kwargs)

    setattr(BaseConnection, "_exec_command", command)  # noqa: B010
    for name in ("execute", "executemany"):
        original = getattr(psycopg.Cursor, name)

        def counted(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if STATE["active"]:
                COUNTS["pg.rtt"] += 1
            return _original(self, *args, **kwargs)

        setattr(psycopg.Cursor, name, counted)


def _command_names(data: bytes) -> list[str]:
    """Names of the RESP commands packed in ``data`` (a pipeline packs several)."""
    names: list[str] = []
    i, size = 0, len(data)
    while i < size and data[i : i + 1] == b"*":
        j = data.index(b"\r\n", i)
        argc = int(data[i + 1 : j])
        i = j + 2
        for n in range(argc):
            j = data.index(b"\r\n", i)
            length = int(data[i + 1 : j])
            i = j + 2
            if n == 0:
                names.append(data[i : i + length].decode(errors="replace").upper())
            i += length + 2
    return names


def install_redis_counters(broker_marker: bytes) -> None:
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        if STATE["active"]:
            if isinstance(command, str):
                data = command.encode()
            elif isinstance(command, bytes | bytearray | memoryview):
                data = bytes(command)
            else:
                data = b"".join(bytes(c) if not isinstance(c, bytes) else c for c in command)
            side = "broker" if broker_marker in data else "runtime"
            COUNTS[f"redis.rtt.{side}"] += 1
            try:
                for name in _command_names(data):
                    COUNTS[f"redis.cmd.{side}.{name}"] += 1
            except ValueError:
                COUNTS[f"redis.cmd.{side}.?"] += 1
        return original(self, command, check_health)  # type: ignore[no-untyped-call]

    setattr(redis.connection.AbstractConnection, "send_packed_command", counted)  # noqa: B010


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--app", choices=["runtime", "bare"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("worker_argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = [a for a in args.worker_argv if a != "--"]

    from runtime.settings import Settings

    settings = Settings()
    install_sql_counters()
    install_pg_counters()
    install_redis_counters(f"{settings.namespace}:celery:".encode())

    app: Any
    if args.app == "runtime":
        from tasks.app import create_app

        app = create_app(settings)
    else:
        from bench.bareapp import create_bare_app

        app = create_bare_app(settings)

    profiler = cProfile.Profile() if args.profile else None
    marks: dict[str, float] = {}

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _ready(**_: Any) -> None:
        # build the per-process service first: a one-time cost, not a per-step one
        if hasattr(app, "runtime_service"):
            app.runtime_service()
        else:
            app.counter_client().ping()
        COUNTS.clear()
        STATE["active"] = True
        marks["wall0"], marks["cpu0"] = time.monotonic(), time.process_time()
        if profiler is not None:
            profiler.enable()

    @signals.task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _done(**_: Any) -> None:
        if STATE["active"]:
            COUNTS["tasks"] += 1
            marks["wall_last"], marks["cpu_last"] = time.monotonic(), time.process_time()

    @signals.worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _stopping(**_: Any) -> None:
        if STATE["active"]:
            if profiler is not None:
                profiler.disable()
            marks["wall1"], marks["cpu1"] = time.monotonic(), time.process_time()
            STATE["active"] = False

    try:
        app.worker_main(argv=argv)
    except SystemExit:
        pass
    finally:
        if STATE["active"]:
            _stopping()
        if profiler is not None and args.profile is not None:
            profiler.dump_stats(str(args.profile))
        args.out.write_text(
            json.dumps(
                {
                    "counts": dict(COUNTS),
                    # first to last task: the idle wait for SIGTERM is not counted
                    "wall_s": marks.get("wall_last", 0.0) - marks.get("wall0", 0.0),
                    "cpu_s": marks.get("cpu_last", 0.0) - marks.get("cpu0", 0.0),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
