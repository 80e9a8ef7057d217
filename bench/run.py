"""agentrt benchmarks: runtime steps/s versus bare Celery, the ledger versus plain INCR.

``make bench`` (or ``.venv/bin/python bench/run.py``) measures, in one run, on one Redis
and with one set of worker flags (``-P prefork -c 2 --without-mingle --without-gossip``,
worker started as a subprocess, task events as in production unless ``--no-events``):

1. **bare Celery**: a no-op task (one Redis ``INCR``, the completion counter) on an app
   built from ``tasks.app.celery_config`` - the same broker settings as the runtime;
   N tasks are queued while no worker runs, then the worker drains them;
2. **runtime**: K runs of the scripted proposer (``kb.search`` tool call(s), then a reply)
   are submitted while no worker runs, then the worker executes every step;
   repeated interleaved (bare, runtime, bare, runtime), medians reported, and
   ``ratio runtime/bare: 0.NN`` printed;
3. **ledger**: ``BudgetLedger.reserve`` + ``.settle`` (3 scopes) per second versus plain
   ``INCR`` round trips per second, one client, sequential;
4. **census**: a solo-pool worker instrumented by ``bench/probe.py`` counts SQL
   transactions/statements and Redis round trips per step (``--profile`` adds cProfile).

Throughput is measured from the first completion to the last (worker start-up excluded).
Everything it starts (redis-server, workers, temp SQLite files, PostgreSQL schemas) is
stopped or removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.bareapp import NOOP_TASK, counter_key, create_bare_app  # noqa: E402
from runtime.budgets.ledger import BudgetLedger, today  # noqa: E402
from runtime.config import load_config  # noqa: E402
from runtime.embedded_redis import EmbeddedRedis, start_server  # noqa: E402
from runtime.keys import Keys  # noqa: E402
from runtime.service import RuntimeService  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.state import StateMarkers  # noqa: E402
from runtime.store.runs import runs_t, steps_t  # noqa: E402
from runtime.wiring import Runtime, resolve_endpoints  # noqa: E402

BENCH_CONFIG = ROOT / "bench" / "config.yaml"
TENANT = "bench"
ROUTE = "bench.read"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Redis commands the bench itself sends while a phase runs (not the system under test)
BENCH_OWN_COMMANDS = {
    "info",
    "config",
    "config|resetstat",
    "config|get",
    "ping",
    "client",
    "client|setinfo",
}


# --- small helpers ---------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu_s(pid: int) -> float:
    """user+system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def pids_named(name: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    out.append(int(entry))
    return out


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} since the last CONFIG RESETSTAT."""
    raw = client.info("commandstats")
    out: dict[str, tuple[int, int]] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        if isinstance(value, dict):
            out[name] = (int(value.get("calls", 0)), int(value.get("usec", 0)))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_schema_url(base: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use their own, freshly created schema."""
    import psycopg

    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    options = urllib.parse.quote(f"-csearch_path={schema}")
    sep = "&" if "?" in base else "?"
    sa_url = libpq_url(base).replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{sa_url}{sep}options={options}"


def drop_pg_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- infrastructure --------------------------------------------------------------------
@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    children: list[int] = field(default_factory=list)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.children = child_pids(self.proc.pid) or self.children
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in self.children:  # a pool child that outlived its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    redis_url: str
    client: redis.Redis
    server: EmbeddedRedis | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    workers: list[Worker] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    #: (base URL, schema) of every PostgreSQL schema made, dropped at the end
    pg_schemas: list[tuple[str, str]] = field(default_factory=list)
    services: list[RuntimeService] = field(default_factory=list)
    #: prefix of this backend's phase labels: two backends in one run never share a
    #: namespace (a ledger counter left by one would count as the other's steps)
    backend_tag: str = ""

    # --- a deployment per phase ------------------------------------------------------
    def deployment(self, label: str) -> tuple[Settings, dict[str, str]]:
        label = f"{self.backend_tag}{label}"
        namespace = f"bench{self.token}{label}"
        self.namespaces.append(namespace)
        home = self.workdir / label
        home.mkdir(parents=True, exist_ok=True)
        if self.args.database_url:
            schema = f"agentrt_bench_{self.token}_{label}"
            self.pg_schemas.append((self.args.database_url, schema))
            database_url = pg_schema_url(self.args.database_url, schema)
        else:
            database_url = f"sqlite:///{home / 'agentrt.db'}"
        env = {
            "AGENTRT_REDIS_URL": self.redis_url,
            "AGENTRT_DATABASE_URL": database_url,
            "AGENTRT_CONFIG": str(self.args.config),
            "AGENTRT_NAMESPACE": namespace,
            "AGENTRT_HOME": str(home),
            "AGENTRT_TASK_EVENTS": "false" if self.args.no_events else "true",
        }
        # the same values the worker gets; the bench process's own AGENTRT_* are ignored
        settings = Settings.model_validate(
            {k[len("AGENTRT_") :].lower(): v for k, v in env.items()}
        )
        return settings, env

    def start_worker(
        self, cmd: list[str], env: dict[str, str], name: str, log_path: Path
    ) -> Worker:
        base = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
        full_env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
            )
        worker = Worker(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def celery_worker(self, app: str, env: dict[str, str], name: str) -> Worker:
        # bench-http --worker-nice: the worker below the API in the CPU scheduler's order
        niceness = int(getattr(self.args, "worker_nice", 0) or 0)
        cmd = [
            *(["nice", "-n", str(niceness)] if niceness else []),
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-P",
            self.args.pool,
            "-c",
            str(self.args.concurrency),
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            self.args.loglevel,
        ]
        return self.start_worker(cmd, env, name, self.workdir / f"{name}.log")

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        for svc in self.services:
            with contextlib.suppress(Exception):
                svc.close()
        if self.server is None:  # a shared Redis: remove what we wrote
            for ns in self.namespaces:
                with contextlib.suppress(Exception):
                    for batch in _chunks(self.client.scan_iter(f"{ns}:*", count=1000), 500):
                        self.client.unlink(*batch)
        for base, schema in self.pg_schemas:
            with contextlib.suppress(Exception):
                drop_pg_schema(base, schema)
        with contextlib.suppress(Exception):
            self.client.close()
        if self.server is not None:
            self.server.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in it:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


# --- draining a pre-filled queue -------------------------------------------------------
@dataclass
class Drain:
    """First-to-last-completion measurement of a worker draining pre-queued work."""

    label: str
    total: int
    seconds: float
    rate: float
    cpu_ms: dict[str, float]
    cmdstats: dict[str, tuple[int, int]]
    publish_rate: float
    extra: dict[str, Any] = field(default_factory=dict)


def drain(
    bench: Bench,
    worker: Worker,
    total: int,
    read_done: Callable[[], int],
    poll_command: str,
    timeout_s: float,
) -> tuple[float, float, int, dict[str, float], dict[str, tuple[int, int]]]:
    """Poll the completion counter until ``total``; returns (t_first, t_last, done_at_first,
    cpu seconds per process group between first and last completion, commandstats).
    ``timeout_s`` bounds a stall (no completion for that long), not the whole drain: on a
    machine others share, a slow drain is a measurement, a stuck one an error."""
    polls = 0
    deadline = time.monotonic() + timeout_s
    last_done = -1
    first: float | None = None
    done_first = 0
    cpu0: dict[str, float] = {}

    def cpu_snapshot() -> dict[str, float]:
        snap = {"worker main": proc_cpu_s(worker.proc.pid)}
        snap.update({f"child {p}": proc_cpu_s(p) for p in child_pids(worker.proc.pid)})
        snap["redis-server"] = redis_cpu_s(bench.client)
        snap["bench poller"] = time.process_time()
        if bench.args.database_url:  # every postgres process: backends start lazily
            snap.update({f"postgres {p}": proc_cpu_s(p) for p in pids_named("postgres")})
        return snap

    while True:
        done = read_done()
        polls += 1
        now = time.monotonic()
        if first is None and done > 0:
            first, done_first = now, done
            cpu0 = cpu_snapshot()
        if done != last_done:
            last_done, deadline = done, now + timeout_s
        if done >= total:
            last = now
            break
        if worker.proc.poll() is not None:
            raise RuntimeError(
                f"worker {worker.name} exited with {worker.proc.returncode}:\n{worker.log_tail()}"
            )
        if now > deadline:
            raise RuntimeError(
                f"{worker.name}: stuck at {done}/{total} for {timeout_s:.0f}s:\n{worker.log_tail()}"
            )
        time.sleep(bench.args.poll_interval)
    cpu1 = cpu_snapshot()
    stats = commandstats(bench.client)
    calls, usec = stats.get(poll_command, (0, 0))
    stats[poll_command] = (max(0, calls - polls), usec)
    assert first is not None
    cpu: dict[str, float] = {}
    for key, value in cpu1.items():
        group = key.split(" ")[0] if key.startswith(("child ", "postgres ")) else key
        group = {"child": "pool children"}.get(group, group)
        cpu[group] = cpu.get(group, 0.0) + value - cpu0.get(key, 0.0)
    return first, last, done_first, cpu, stats


def enqueue_noops(app: Any, n: int) -> float:
    """Queue ``n`` no-op tasks; returns messages/s."""
    t0 = time.monotonic()
    for _ in range(n):
        run_id = uuid.uuid4().hex
        # the same message shape as tasks.publish.CeleryPublisher.publish
        app.send_task(
            NOOP_TASK,
            kwargs={
                "run_id": run_id,
                "step": 0,
                "tenant": TENANT,
                "route": ROUTE,
                "priority": "normal",
            },
            task_id=f"{run_id}-0",
            shadow=f"{NOOP_TASK}[{TENANT}/{ROUTE}]",
            soft_time_limit=40,
            time_limit=50,
        )
    return n / (time.monotonic() - t0)


def bare_phase(bench: Bench, index: int) -> Drain:
    args = bench.args
    settings, env = bench.deployment(f"b{index}")
    app = create_bare_app(settings, resolve_endpoints(settings))
    key = counter_key(settings.namespace)
    n = args.bare_tasks
    publish_rate = enqueue_noops(app, n)
    with contextlib.suppress(Exception):
        app.pool.force_close_all()
    bench.client.config_resetstat()
    worker = bench.celery_worker("bench.bareapp", env, f"{settings.namespace}-w")
    first, last, done_first, cpu, stats = drain(
        bench,
        worker,
        n,
        lambda: int(bench.client.get(key) or 0),
        "get",
        timeout_s=120,
    )
    worker.stop()
    done = n - done_first
    return Drain(
        "bare",
        done,
        last - first,
        done / (last - first),
        {k: 1000 * v / done for k, v in cpu.items()},
        stats,
        publish_rate,
    )


def script(tool_calls: int) -> list[dict[str, Any]]:
    call = {
        "type": "tool_call",
        "tool": "kb.search",
        "args": {"query": "refund policy"},
        "usage": {"input_tokens": 120, "output_tokens": 30},
    }
    reply = {"type": "reply", "text": "Done.", "usage": {"input_tokens": 150, "output_tokens": 20}}
    return [call] * tool_calls + [reply]


def submit_runs(svc: RuntimeService, k: int, tool_calls: int) -> tuple[list[str], float]:
    run_input = {"script": script(tool_calls)}
    ids = []
    t0 = time.monotonic()
    for _ in range(k):
        view = svc.submit(TENANT, ROUTE, "bench run", run_input, actor="bench")
        if view.status.value != "queued":
            raise RuntimeError(f"run refused: {view.stop_reason} {view.output}")
        ids.append(view.run_id)
    return ids, k / (time.monotonic() - t0)


def steps_done_reader(svc: RuntimeService) -> tuple[Callable[[], int], str]:
    """Completed steps = settled model calls on the route's daily ledger scope (every
    step of a scripted run calls the proposer once and settles after its checkpoint)."""
    key = svc.keys.budget_route_day(ROUTE, today())
    return (lambda: int(svc.redis.hget(key, "u:model_calls") or 0)), "hget"


def verify_runs(svc: RuntimeService, run_ids: list[str], steps_per_run: int) -> dict[str, Any]:
    with svc.store.engine.connect() as conn:
        steps = conn.execute(select(func.count()).select_from(steps_t)).scalar_one()
        next_steps = conn.execute(select(func.coalesce(func.sum(runs_t.c.next_step), 0))).scalar()
    statuses = svc.store.count_by("status")
    expected = len(run_ids) * steps_per_run
    if statuses != {"succeeded": len(run_ids)} or steps != expected or next_steps != expected:
        raise RuntimeError(
            f"runtime phase did not finish cleanly: statuses={statuses}, steps rows={steps}, "
            f"sum(next_step)={next_steps}, expected {expected} steps"
        )
    return {"steps_rows": steps, "next_step_sum": next_steps, "statuses": statuses}


def runtime_phase(bench: Bench, index: int) -> Drain:
    args = bench.args
    settings, env = bench.deployment(f"r{index}")
    svc = Runtime.from_settings(settings)
    svc.apply_config("bench")  # the deployment's config, as an operator applies it
    bench.services.append(svc)
    steps_per_run = args.tool_calls + 1
    run_ids, submit_rate = submit_runs(svc, args.runs, args.tool_calls)
    total = len(run_ids) * steps_per_run
    read_done, poll_command = steps_done_reader(svc)
    bench.client.config_resetstat()
    worker = bench.celery_worker("tasks.app", env, f"{settings.namespace}-w")
    first, last, done_first, cpu, stats = drain(
        bench, worker, total, read_done, poll_command, timeout_s=120
    )
    worker.stop()
    verified = verify_runs(svc, run_ids, steps_per_run)
    svc.close()
    done = total - done_first
    return Drain(
        "runtime",
        done,
        last - first,
        done / (last - first),
        {k: 1000 * v / done for k, v in cpu.items()},
        stats,
        submit_rate,
        {"runs": len(run_ids), "steps_per_run": steps_per_run, **verified},
    )


# --- ledger ----------------------------------------------------------------------------
def ledger_bench(bench: Bench) -> dict[str, Any]:
    args = bench.args
    config = load_config(args.config)
    namespace = f"bench{bench.token}ledger"
    bench.namespaces.append(namespace)
    client = redis.Redis.from_url(bench.redis_url)
    keys = Keys(namespace)
    # a ledger whose state was built from SQL (runtime.state): recovery writes this marker
    StateMarkers(client, keys).mark(1)
    ledger = BudgetLedger(client, keys, lambda: 1)
    route = config.routes[ROUTE]
    policy = config.budget_policies[route.budget_policy]
    tenant = config.tenants[TENANT]
    model = config.models[route.proposer]
    tokens = policy.tokens_per_step
    # what one step of the bench route reserves and settles (runtime/step/budget.py:
    # Budgeting.reserve + reserve_tool, then actual_spend)
    amounts = {
        "tokens": tokens,
        "model_calls": 1,
        "tool_calls": 1,
        "retries": 0,
        "wall_clock_ms": int(route.step_timeout_s * 1000),
        "cost_micro_usd": round(tokens * max(model.input_usd_per_mtok, model.output_usd_per_mtok)),
    }
    actual = {
        "tokens": 150,
        "model_calls": 1,
        "tool_calls": 1,
        "retries": 0,
        "wall_clock_ms": 3,
        "cost_micro_usd": 105,
    }
    day = today()
    tenant_scope = ledger.tenant_day_scope(TENANT, tenant.daily_budget.ledger_limits(), day)
    route_scope = ledger.route_day_scope(ROUTE, route.daily_budget.ledger_limits(), day)
    run_limits = policy.per_run.ledger_limits()
    hold_ttl_ms = 60_000
    counter = 0

    def ledger_round(n: int) -> float:
        nonlocal counter
        t0 = time.perf_counter()
        for _ in range(n):
            # two steps per run, as in the runtime phase
            run_id, step = f"L{counter // 2}", counter % 2
            counter += 1
            scopes = [ledger.run_scope(run_id, run_limits), tenant_scope, route_scope]
            ledger.reserve(run_id, step, scopes, amounts, hold_ttl_ms)
            if not ledger.settle(run_id, step, actual):
                raise RuntimeError("settle found no hold")
        return n / (time.perf_counter() - t0)

    incr_key = f"{namespace}:incr"

    def incr_round(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            client.incr(incr_key)
        return n / (time.perf_counter() - t0)

    ledger_round(200)  # warm-up: scripts loaded, connection open
    incr_round(500)
    ledger_rates, incr_rates = [], []
    for _ in range(args.ledger_repeats):  # interleaved: the machine is noisy
        incr_rates.append(incr_round(args.incr_ops))
        ledger_rates.append(ledger_round(args.ledger_ops))
    client.close()
    return {"ledger": ledger_rates, "incr": incr_rates}


# --- census / profile ------------------------------------------------------------------
def census(bench: Bench, kind: str, n: int, profile: bool) -> dict[str, Any]:
    """Run ``n`` runs (or no-op tasks) through an instrumented solo-pool worker."""
    label = f"c{kind[0]}"
    settings, env = bench.deployment(label)
    label = f"{bench.backend_tag}{label}"  # one census output per backend
    out = bench.workdir / f"{label}.json"
    prof = bench.workdir / f"{label}.prof"
    svc: RuntimeService | None = None
    if kind == "runtime":
        svc = Runtime.from_settings(settings)
        svc.apply_config("bench")
        bench.services.append(svc)
        submit_runs(svc, n, bench.args.tool_calls)
        total = n * (bench.args.tool_calls + 1)
        read_done, _cmd = steps_done_reader(svc)
    else:
        enqueue_noops(create_bare_app(settings, resolve_endpoints(settings)), n)
        total = n
        key = counter_key(settings.namespace)
        read_done = lambda: int(bench.client.get(key) or 0)  # noqa: E731
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "probe.py"),
        "--app",
        kind,
        "--out",
        str(out),
        *(["--profile", str(prof)] if profile else []),
        "--",
        "worker",
        "-P",
        "solo",
        "-n",
        f"{settings.namespace}-probe@%h",
        "--without-mingle",
        "--without-gossip",
        "-l",
        bench.args.loglevel,
    ]
    worker = bench.start_worker(cmd, env, f"{label}-probe", bench.workdir / f"{label}.log")
    deadline, last_done = time.monotonic() + 120, -1
    while (done := read_done()) < total:
        if done != last_done:  # a stall fails the census, a slow machine does not
            deadline, last_done = time.monotonic() + 120, done
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"census worker ({kind}) failed:\n{worker.log_tail()}")
        time.sleep(0.05)
    worker.stop()
    if not out.exists():
        raise RuntimeError(f"census worker wrote no counts:\n{worker.log_tail()}")
    data: dict[str, Any] = json.loads(out.read_text())
    if svc is not None:
        svc.close()
    data["profile"] = str(prof) if profile and prof.exists() else None
    data["total"] = total
    return data


_BUCKETS = [
    ("runtime", ("/runtime/",)),
    ("tasks (agentrt)", ("/tasks/",)),
    ("celery/kombu/billiard", ("/celery/", "/kombu/", "/billiard/", "/vine/", "/amqp/")),
    ("redis-py", ("/redis/",)),
    ("sqlalchemy", ("/sqlalchemy/",)),
    ("sqlmodel", ("/sqlmodel/",)),
    ("psycopg", ("/psycopg",)),
    ("pydantic", ("/pydantic", "/pydantic_core/")),
    ("json", ("/json/",)),
    ("logging", ("/logging/",)),
    ("uuid/hashlib/datetime", ("/uuid.py", "/hashlib.py", "/datetime.py")),
    ("signal/threading", ("/signal.py", "/threading.py")),
    ("bench probe (instrumentation)", ("/bench/probe.py",)),
]


def _bucket(filename: str) -> str:
    for name, needles in _BUCKETS:
        if any(n in filename for n in needles):
            return name
    return "other"


def profile_summary(path: str, steps: int, top: int) -> list[str]:
    """Self time per package (C calls charged to their Python caller) and top functions."""
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    buckets: dict[str, float] = {}
    total = 0.0
    for func_key, (_cc, _nc, tt, _ct, callers) in raw.items():
        filename = func_key[0]
        total += tt
        if filename == "~" or filename.startswith("<"):
            # a builtin / C function: charge its time to the packages that called it
            spent = 0.0
            for caller, edge in callers.items():
                edge_tt = edge[2] if isinstance(edge, tuple) else 0.0
                buckets[_bucket(caller[0])] = buckets.get(_bucket(caller[0]), 0.0) + edge_tt
                spent += edge_tt
            if tt - spent > 1e-9:
                buckets["other"] = buckets.get("other", 0.0) + tt - spent
        else:
            buckets[_bucket(filename)] = buckets.get(_bucket(filename), 0.0) + tt
    lines = [f"profiled time {1000 * total / steps:.2f} ms/step (cProfile overhead included)"]
    lines.append("  self time by package (ms/step, C calls charged to their caller):")
    for name, secs in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if secs / total >= 0.005:
            lines.append(f"    {name:<24} {1000 * secs / steps:7.3f}  {100 * secs / total:5.1f}%")

    def fmt(key: Any) -> str:
        filename, line, name = key
        short = filename
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in short:
                short = short.split(marker, 1)[1]
        return f"{short}:{line}({name})" if line else name

    by_tt = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    lines.append(f"  top {top} functions by self time (ms/step, calls/step):")
    for key, (_cc, nc, tt, _ct, _callers) in by_tt:
        lines.append(f"    {1000 * tt / steps:7.3f} {nc / steps:7.1f}  {fmt(key)}")
    runtime_funcs = [
        (key, v)
        for key, v in raw.items()
        if "/runtime/" in key[0] or "/tasks/" in key[0] or "sqlalchemy/engine/base.py" in key[0]
    ]
    by_ct = sorted(runtime_funcs, key=lambda kv: -kv[1][3])[:top]
    lines.append(f"  top {top} agentrt / SQL-engine functions by cumulative time (ms/step):")
    for key, (_cc, nc, _tt, ct, _callers) in by_ct:
        lines.append(f"    {1000 * ct / steps:7.3f} {nc / steps:7.1f}  {fmt(key)}")
    return lines


# --- report ----------------------------------------------------------------------------
def per_unit_commands(d: Drain, min_per_unit: float = 0.01) -> list[tuple[str, float, float]]:
    rows = []
    for name, (calls, usec) in d.cmdstats.items():
        if name in BENCH_OWN_COMMANDS or calls == 0:
            continue
        per = calls / d.total
        if per >= min_per_unit:
            rows.append((name, per, usec / calls))
    return sorted(rows, key=lambda r: -r[1])


def census_lines(name: str, data: dict[str, Any]) -> list[str]:
    c: dict[str, int] = data["counts"]
    # per step: a task runs several when it chains (runtime.step.chain)
    tasks = int(c.get("tasks", 0))
    n = max(1, int(data.get("total") or tasks))
    lines = [
        f"{name}: {n} steps in {tasks} Celery tasks in a solo-pool worker, "
        f"{1000 * data['wall_s'] / n:.2f} ms wall and {1000 * data['cpu_s'] / n:.2f} ms CPU "
        "per step (one process does consume + execute)"
    ]
    rtt_b, rtt_r = c.get("redis.rtt.broker", 0) / n, c.get("redis.rtt.runtime", 0) / n
    lines.append(
        f"  redis round trips/step: {rtt_b + rtt_r:.2f} (broker/kombu {rtt_b:.2f}, "
        f"runtime {rtt_r:.2f})"
    )
    for side in ("broker", "runtime"):
        prefix = f"redis.cmd.{side}."
        cmds = sorted(
            ((k[len(prefix) :], v / n) for k, v in c.items() if k.startswith(prefix)),
            key=lambda kv: -kv[1],
        )
        shown = ", ".join(f"{k} {v:.2f}" for k, v in cmds if v >= 0.01)
        if shown:
            lines.append(f"    {side} commands/step: {shown}")
    if c.get("sql.statements"):
        lines.append(
            f"  SQL per step: {(c.get('sql.txn.write', 0) + c.get('sql.txn.read', 0)) / n:.2f} "
            f"transactions (write {c.get('sql.txn.write', 0) / n:.2f}, read "
            f"{c.get('sql.txn.read', 0) / n:.2f}), {c.get('sql.commit', 0) / n:.2f} commits, "
            f"{c.get('sql.statements', 0) / n:.2f} statements, "
            f"{c.get('sql.pool_checkout', 0) / n:.2f} pool checkouts"
        )
        stmts = sorted(
            ((k[len("sql.stmt ") :], v / n) for k, v in c.items() if k.startswith("sql.stmt ")),
            key=lambda kv: -kv[1],
        )
        lines.append("    statements/step: " + ", ".join(f"{k} {v:.2f}" for k, v in stmts))
    if c.get("pg.rtt"):
        cmds = ", ".join(
            f"{k[len('pg.cmd ') :]} {v / n:.2f}"
            for k, v in sorted(c.items())
            if k.startswith("pg.cmd ")
        )
        lines.append(
            f"  PostgreSQL round trips/step: {c['pg.rtt'] / n:.2f} (statements, and the "
            f"connection's own {cmds or 'none'})"
        )
    return lines


@dataclass
class BackendResult:
    """One SQL backend's share of a bench run: its throughput phases and its census."""

    name: str  # "sqlite" | "postgresql"
    drains: list[Drain] = field(default_factory=list)
    census: dict[str, Any] | None = None
    #: why this backend was not measured (PostgreSQL unreachable), else None
    skipped: str | None = None

    def ratio(self) -> float:
        bare = median([d.rate for d in self.drains if d.label == "bare"])
        rt = median([d.rate for d in self.drains if d.label == "runtime"])
        return rt / bare if bare else 0.0

    def ratio_line(self) -> str:
        if self.skipped:
            return f"ratio runtime/bare ({self.name}): not measured - {self.skipped}"
        return f"ratio runtime/bare ({self.name}): {self.ratio():.2f}"


def throughput_lines(bench: Bench, result: BackendResult) -> list[str]:
    args = bench.args
    bare = [d for d in result.drains if d.label == "bare"]
    rt = [d for d in result.drains if d.label == "runtime"]
    bare_rate = median([d.rate for d in bare])
    rt_rate = median([d.rate for d in rt])
    ratio = result.ratio()
    steps_per_run = args.tool_calls + 1
    out: list[str] = []
    out.append(
        f"bare celery no-op:  {bare_rate:8.1f} tasks/s   runs: "
        + ", ".join(f"{d.rate:.1f}" for d in bare)
    )
    out.append(
        f"runtime steps:      {rt_rate:8.1f} steps/s   runs: "
        + ", ".join(f"{d.rate:.1f}" for d in rt)
        + f"   ({rt_rate / steps_per_run:.1f} runs/s)"
    )
    out.append(result.ratio_line())
    target = "meets" if ratio >= GOAL_RATIO else "BELOW"
    out.append(
        f"  ({target} the {GOAL_RATIO:.2f} goal; per-repeat ratios: "
        + ", ".join(f"{r.rate / b.rate:.2f}" for b, r in zip(bare, rt, strict=False))
        + ")"
    )
    out.append(
        f"  enqueue (untimed setup): bare publish {median([d.publish_rate for d in bare]):.0f} "
        f"msg/s, runtime submit {median([d.publish_rate for d in rt]):.0f} runs/s"
    )
    out.append("CPU ms per task/step between first and last completion (median of repeats):")
    keys = list(rt[0].cpu_ms) if rt else []
    for key in keys:
        b = median([d.cpu_ms.get(key, 0.0) for d in bare])
        r = median([d.cpu_ms.get(key, 0.0) for d in rt])
        out.append(f"  {key:<16} bare {b:6.3f}   runtime {r:6.3f}")
    wall_b, wall_r = 1000 / bare_rate if bare_rate else 0, 1000 / rt_rate if rt_rate else 0
    out.append(
        f"  (wall per task/step: bare {wall_b:.3f} ms, runtime {wall_r:.3f} ms; "
        f"{os.cpu_count()} CPUs = {os.cpu_count() or 1:d} CPU-ms per wall-ms)"
    )
    if rt:
        last_rt, last_b = rt[-1], bare[-1]
        rows_r = per_unit_commands(last_rt)
        rows_b = {name: per for name, per, _ in per_unit_commands(last_b, 0.0)}
        tot_r = sum(per for _, per, _ in rows_r)
        out.append(
            f"Redis commands per step (INFO commandstats, last runtime repeat; Lua-inner "
            f"commands included): {tot_r:.1f}  (bare task: {sum(rows_b.values()):.1f})"
        )
        for name, per, usec in rows_r:
            bare_per = rows_b.get(name, 0.0)
            out.append(f"  {name:<18} {per:6.2f}/step  {usec:6.2f} us/call   bare {bare_per:.2f}")
    return out


def census_block(bench: Bench, name: str, data: dict[str, Any]) -> list[str]:
    lines = census_lines(name, data)
    if data.get("profile"):
        lines.extend(
            profile_summary(
                data["profile"], int(data.get("total") or data["counts"]["tasks"]), bench.args.top
            )
        )
    return lines


def report(
    bench: Bench,
    results: list[BackendResult],
    ledger: dict[str, Any] | None,
    bare_census: dict[str, Any] | None,
) -> None:
    args = bench.args
    info = bench.client.info("server")
    steps_per_run = args.tool_calls + 1
    out: list[str] = ["=" * 78, "agentrt bench"]
    out.append(
        f"  machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-server {info.get('redis_version')}; SQL backends: "
        + ", ".join(r.name for r in results)
    )
    out.append(
        f"  worker: -P {args.pool} -c {args.concurrency} --without-mingle --without-gossip "
        f"-l {args.loglevel}; task events {'off' if args.no_events else 'on'}; "
        "acks_late, prefetch 1, JSON (tasks.app.celery_config); one Redis for every phase"
    )
    if not args.skip_throughput:
        out.append(
            f"  workload: bare {args.bare_tasks} no-op tasks; runtime {args.runs} runs x "
            f"{steps_per_run} steps (kb.search x{args.tool_calls} + reply); "
            f"{args.repeats}+{args.repeats} interleaved repeats per backend, medians"
        )
    for result in results:
        out.append("-" * 78)
        label = {"sqlite": "SQLite (WAL)", "postgresql": "PostgreSQL"}[result.name]
        out.append(f"[{result.name}] {label}")
        if result.skipped:
            out.append(result.ratio_line())
            continue
        if result.drains:
            out.extend(throughput_lines(bench, result))
        if result.census is not None:
            out.extend(census_block(bench, f"census runtime step ({result.name})", result.census))
    if ledger is not None or bare_census is not None:
        out.append("-" * 78)
        out.append("[shared] Redis only (the same on either backend)")
    if ledger is not None:
        led, inc = median(ledger["ledger"]), median(ledger["incr"])
        out.append(
            f"ledger reserve+settle (3 scopes): {led:8.0f} pairs/s   runs: "
            + ", ".join(f"{v:.0f}" for v in ledger["ledger"])
        )
        out.append(
            f"plain INCR round trips:           {inc:8.0f} ops/s     runs: "
            + ", ".join(f"{v:.0f}" for v in ledger["incr"])
        )
        out.append(
            f"ratio ledger/incr: {led / inc:.2f}  (a pair is 2 round trips: "
            f"{2 * led / inc:.2f} per round trip; {1e6 / led:.0f} us per pair vs "
            f"{1e6 / inc:.0f} us per INCR)"
        )
    if bare_census is not None:
        out.extend(census_block(bench, "census bare no-op", bare_census))
    if not args.skip_throughput:
        out.append("=" * 78)
        out.extend(r.ratio_line() for r in results)
    out.append("=" * 78)
    print("\n".join(out), flush=True)


# --- main ------------------------------------------------------------------------------
BACKENDS = ("sqlite", "postgresql")
#: the issue's goal for ``ratio runtime/bare`` on each backend
GOAL_RATIO = 0.60
#: where `make bench` finds PostgreSQL unless --database-url names another server
DEFAULT_PG_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="agentrt benchmarks (see bench/README.md)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="SQL backends to measure, in order (default: sqlite,postgresql)",
    )
    p.add_argument(
        "--database-url",
        help="PostgreSQL base URL (e.g. postgresql://postgres@127.0.0.1:5432/test); each "
        "phase gets a fresh schema, dropped at the end. Default: "
        + " or ".join(DEFAULT_PG_URLS)
        + " (the first that answers)",
    )
    p.add_argument("--config", type=Path, default=BENCH_CONFIG)
    p.add_argument("--no-events", action="store_true", help="AGENTRT_TASK_EVENTS=false")
    p.add_argument("--bare-tasks", type=int, default=3000)
    p.add_argument("--runs", type=int, default=1500)
    p.add_argument("--tool-calls", type=int, default=1, help="tool steps per run (+1 reply)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ledger-ops", type=int, default=3000, help="reserve+settle pairs a round")
    p.add_argument("--incr-ops", type=int, default=6000, help="INCRs a round")
    p.add_argument("--ledger-repeats", type=int, default=5)
    p.add_argument("--skip-ledger", action="store_true")
    p.add_argument("--census-runs", type=int, default=150, help="0 skips the census")
    p.add_argument("--profile", action="store_true", help="cProfile the census workers")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--pool", default="prefork")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--poll-interval", type=float, default=0.01)
    p.add_argument("--skip-throughput", action="store_true", help="ledger and census only")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, profiles)")
    p.add_argument("--quick", action="store_true", help="small N for a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.bare_tasks, args.runs, args.ledger_ops, args.incr_ops = 500, 200, 1000, 2000
        args.ledger_repeats = 3
        args.census_runs = min(args.census_runs, 50)
    return args


def find_postgres(explicit: str | None) -> tuple[str | None, str]:
    """(a PostgreSQL base URL that answers, or None; why none does)."""
    import psycopg

    errors = []
    for url in [explicit] if explicit else list(DEFAULT_PG_URLS):
        try:
            with psycopg.connect(libpq_url(url), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return url, ""
        except Exception as exc:  # any failure to connect means "not reachable"
            errors.append(f"{url}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
    return None, "PostgreSQL unreachable (" + "; ".join(errors) + ")"


def measure_backend(bench: Bench, name: str, pg_url: str | None) -> BackendResult:
    """Throughput (bare and runtime interleaved) and the runtime census on one backend."""
    args = bench.args
    result = BackendResult(name)
    # Bench.deployment and drain() read the backend from args.database_url (None: SQLite)
    args.database_url = pg_url if name == "postgresql" else None
    bench.backend_tag = name[0]
    if not args.skip_throughput:
        for i in range(args.repeats):
            for phase in (bare_phase, runtime_phase):
                d = phase(bench, i)
                log(
                    f"[{name}] {d.label} #{i + 1}: {d.total} in {d.seconds:.2f}s = "
                    f"{d.rate:.1f}/s (setup {d.publish_rate:.0f}/s)"
                )
                result.drains.append(d)
        log(f"[{name}] {result.ratio_line()}")
    if args.census_runs > 0:
        result.census = census(bench, "runtime", args.census_runs, args.profile)
        log(f"[{name}] census done")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        print(f"unknown backend(s) {unknown}; choose from {BACKENDS}", file=sys.stderr)
        return 2
    pg_url, pg_problem = (None, "")
    if "postgresql" in backends:
        pg_url, pg_problem = find_postgres(args.database_url)
        if pg_url is None:
            log(f"postgresql line will be missing: {pg_problem}")
    workdir = Path(tempfile.mkdtemp(prefix="agentrt-bench-"))
    server: EmbeddedRedis | None = None
    if args.redis_url:
        redis_url = args.redis_url
    else:
        server = start_server(workdir / "redis", persistent=False)
        redis_url = server.url
    bench = Bench(args, workdir, redis_url, redis.Redis.from_url(redis_url), server)
    started = time.monotonic()
    try:
        results: list[BackendResult] = []
        for name in backends:
            if name == "postgresql" and pg_url is None:
                results.append(BackendResult(name, skipped=pg_problem))
                continue
            results.append(measure_backend(bench, name, pg_url))
        # what follows is Redis only: no schema for it
        bench.backend_tag, args.database_url = "", None
        ledger = None if args.skip_ledger else ledger_bench(bench)
        if ledger is not None:
            log(f"ledger: {ledger}")
        bare_census = None
        if args.census_runs > 0:
            n_bare = args.census_runs * (args.tool_calls + 1)
            bare_census = census(bench, "bare", n_bare, args.profile)
        report(bench, results, ledger, bare_census)
        if args.keep:
            log(f"kept {workdir}")
    finally:
        bench.close()
        log(f"total bench time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
