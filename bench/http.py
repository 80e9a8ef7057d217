"""agentrt HTTP submit benchmark (``make bench-http``, issue 12).

Per SQL backend (SQLite by default, PostgreSQL too when it answers or ``--database-url``
names it), on one redis-server it starts (or ``--redis-url``):

1. a deployment (``bench/config.yaml`` applied), a runtime worker (``tasks.app``, the same
   flags as ``make bench``) and ``agentrt api`` as its own process on 127.0.0.1;
2. an API key (``runs:submit``) for tenant ``bench``;
3. from a separate load process (``bench/http_load.py``): ``POST /v1/runs`` open-loop at
   ``--rate`` requests/s for ``--duration`` s over keep-alive connections; latency p50/p99,
   requests sent / completed / non-2xx, the achieved rate; the worker runs the runs meanwhile;
4. with the API and worker stopped: in-process ``Runtime.submit`` per second and bare Celery
   ``apply_async`` (the no-op of ``bench/bareapp.py``, the runtime's message shape) per
   second on the same Redis, interleaved repeats, medians; CPU per call of each;
5. ``ratio http submit cost/bare apply_async``: CPU-ms per HTTP submit (the API server
   process) over CPU-ms per ``apply_async`` (the calling process). See bench/README.md.

Run it as ``python -m bench.http`` (the Makefile does): run as ``python bench/http.py`` the
script's folder would come first on ``sys.path`` and this file would shadow the standard
library's ``http`` package, so that folder is removed from ``sys.path`` first.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import redis  # noqa: E402

from bench.bareapp import create_bare_app  # noqa: E402
from bench.http_load import KEY_ENV  # noqa: E402
from bench.run import (  # noqa: E402
    BENCH_CONFIG,
    DEFAULT_PG_URLS,
    ROUTE,
    TENANT,
    Bench,
    Worker,
    enqueue_noops,
    find_postgres,
    log,
    median,
    proc_cpu_s,
    redis_cpu_s,
    script,
)
from runtime.embedded_redis import EmbeddedRedis, start_server  # noqa: E402
from runtime.service import RuntimeService  # noqa: E402
from runtime.wiring import Runtime, resolve_endpoints  # noqa: E402

BACKENDS = ("sqlite", "postgresql")
#: the issue's goal: p99 of an HTTP submit at 200 requests/s with a worker running
GOAL_P99_MS = 25.0
GOAL_RATE = 200.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BackendResult:
    name: str
    skipped: str = ""
    load: dict[str, Any] = field(default_factory=dict)
    api_cpu_ms: float = 0.0
    worker_cpu_ms: float = 0.0
    redis_cpu_ms: float = 0.0
    runs_in_sql: int = 0
    #: runs by status when the load ended (the worker's progress meanwhile)
    statuses: dict[str, int] = field(default_factory=dict)
    load_wall_s: float = 1.0
    submit: list[tuple[float, float]] = field(default_factory=list)  # (per s, CPU ms)
    bare: list[tuple[float, float]] = field(default_factory=list)


# --- processes -------------------------------------------------------------------------
def start_api(bench: Bench, env: dict[str, str], name: str) -> tuple[Worker, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "runtime.cli.main", "api", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(bench.args.api_workers)]
    api = bench.start_worker(cmd, env, name, bench.workdir / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if api.proc.poll() is not None:
            raise RuntimeError(f"agentrt api exited with {api.proc.returncode}:\n{api.log_tail()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return api, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"agentrt api not ready after 120s:\n{api.log_tail()}")
        time.sleep(0.2)


def run_body(tool_calls: int) -> dict[str, Any]:
    return {"route": ROUTE, "goal": "bench run", "input": {"script": script(tool_calls)}}


def warm_up(svc: RuntimeService, base: str, key: str, body: dict[str, Any], worker: Worker) -> None:
    """One run through the API to the end: the API path is warm and the worker is up."""
    made = httpx.post(
        f"{base}/v1/runs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    if made.status_code != 202:
        raise RuntimeError(f"warm-up submit: {made.status_code} {made.text}")
    run_id = made.json()["runId"]
    deadline = time.monotonic() + 120
    while svc.get(run_id).status.value != "succeeded":
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"warm-up run did not finish:\n{worker.log_tail()}")
        time.sleep(0.1)


def run_load_process(bench: Bench, base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    args = bench.args
    cmd = [sys.executable, "-m", "bench.http_load", "--base-url", base]
    cmd += ["--rate", str(args.rate), "--duration", str(args.duration)]
    cmd += ["--connections", str(args.connections), "--body", json.dumps(body)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env[KEY_ENV] = key
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load process exited with {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- phases ----------------------------------------------------------------------------
def http_phase(bench: Bench, result: BackendResult) -> RuntimeService:
    args = bench.args
    settings, env = bench.deployment("h")
    svc = Runtime.from_settings(settings)
    svc.apply_config("bench")
    bench.services.append(svc)
    key = svc.api_keys.create(TENANT, ["runs:submit"], actor="bench", name="bench-http").secret
    worker = bench.celery_worker("tasks.app", env, f"{settings.namespace}-w")
    api, base = start_api(bench, env, f"{settings.namespace}-api")
    body = run_body(args.tool_calls)
    warm_up(svc, base, key, body, worker)
    before = svc.store.count_by("status")
    # with --api-workers > 1 the server processes are the command's children
    api_pids = [api.proc.pid, *_children(api)]
    api_cpu0 = sum(proc_cpu_s(p) for p in api_pids)
    worker_pids = [worker.proc.pid, *_children(worker)]
    worker_cpu0 = sum(proc_cpu_s(p) for p in worker_pids)
    redis_cpu0 = redis_cpu_s(bench.client)
    log(f"[{result.name}] {args.rate:.0f} req/s for {args.duration:.0f}s against {base}")
    t0 = time.monotonic()
    load = run_load_process(bench, base, key, body)
    result.load_wall_s = time.monotonic() - t0
    completed = max(1, load["completed_2xx"])
    result.api_cpu_ms = 1000 * (sum(proc_cpu_s(p) for p in api_pids) - api_cpu0) / completed
    result.worker_cpu_ms = 1000 * (sum(proc_cpu_s(p) for p in worker_pids) - worker_cpu0)
    result.redis_cpu_ms = 1000 * (redis_cpu_s(bench.client) - redis_cpu0) / completed
    result.load = load
    after = svc.store.count_by("status")
    result.statuses = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    api.stop()
    worker.stop()
    result.runs_in_sql = sum(after.values()) - sum(before.values())
    return svc


def _children(worker: Worker) -> list[int]:
    from bench.run import child_pids

    return child_pids(worker.proc.pid)


def runtime_submits(svc: RuntimeService, n: int, tool_calls: int) -> tuple[float, float]:
    """(runs/s, CPU-ms per submit) of ``n`` in-process ``Runtime.submit`` calls."""
    run_input = {"script": script(tool_calls)}
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        view = svc.submit(TENANT, ROUTE, "bench run", run_input, actor="bench")
        if view.status.value != "queued":
            raise RuntimeError(f"run refused: {view.stop_reason} {view.output}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return n / wall, 1000 * cpu / n


def bare_submits(app: Any, n: int) -> tuple[float, float]:
    cpu0 = time.process_time()
    rate = enqueue_noops(app, n)
    return rate, 1000 * (time.process_time() - cpu0) / n


def submit_phases(bench: Bench, svc: RuntimeService, result: BackendResult) -> None:
    """Interleaved: Runtime.submit on the HTTP phase's deployment, apply_async on the same
    Redis (its own namespace); no worker runs, so neither competes with one."""
    args = bench.args
    settings, _ = bench.deployment("b")
    app = create_bare_app(settings, resolve_endpoints(settings))
    runtime_submits(svc, max(10, args.submits // 10), args.tool_calls)  # warm
    bare_submits(app, max(10, args.submits // 10))
    for _ in range(args.repeats):
        result.submit.append(runtime_submits(svc, args.submits, args.tool_calls))
        result.bare.append(bare_submits(app, args.submits))
    app.pool.force_close_all()


# --- report ----------------------------------------------------------------------------
def backend_lines(args: argparse.Namespace, r: BackendResult) -> list[str]:
    if r.skipped:
        return [f"not measured - {r.skipped}"]
    load = r.load
    sub_rate, sub_cpu = median([s[0] for s in r.submit]), median([s[1] for s in r.submit])
    bare_rate, bare_cpu = median([b[0] for b in r.bare]), median([b[1] for b in r.bare])
    met = load["p99_ms"] < GOAL_P99_MS and load["issue_rate"] >= 0.95 * GOAL_RATE
    goal = "meets" if met else "MISSES"
    non_2xx = sum(load["non_2xx"].values())
    return [
        f"requests sent: {load['sent']}  completed (2xx): {load['completed_2xx']}  "
        f"non-2xx/errors: {non_2xx} {load['non_2xx'] or ''}".rstrip(),
        f"achieved rate: {load['issue_rate']:.1f} req/s issued (target {load['target_rate']:.0f}; "
        f"latest {load['issue_late_max_ms']:.1f} ms behind schedule), {load['send_rate']:.1f} "
        f"req/s sent, {load['completion_rate']:.1f} req/s completed; runs stored: {r.runs_in_sql}",
        "  runs by status when the load ended: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items())),
        f"http submit p50 ms: {load['p50_ms']:.1f}",
        f"http submit p99 ms: {load['p99_ms']:.1f}   (goal < {GOAL_P99_MS:.0f} ms at "
        f"{GOAL_RATE:.0f} req/s with a worker running: {goal}; max {load['max_ms']:.1f})",
        f"  from writing the request: p50 {load['p50_sent_ms']:.1f} ms, p99 "
        f"{load['p99_sent_ms']:.1f} ms; wait for a free connection p99 "
        f"{load['conn_wait_p99_ms']:.1f} ms, max {load['conn_wait_max_ms']:.1f} ms",
        f"  CPU-ms per HTTP submit: API server {r.api_cpu_ms:.2f}, redis-server "
        f"{r.redis_cpu_ms:.2f} (the worker's steps included), load process "
        f"{load.get('cpu_ms_per_request', 0.0):.2f}; worker busy "
        f"{r.worker_cpu_ms / 1000 / r.load_wall_s:.2f} CPUs during the load",
        f"runtime submit per s: {sub_rate:.0f}   (CPU {sub_cpu:.2f} ms/submit; runs: "
        + ", ".join(f"{s[0]:.0f}" for s in r.submit)
        + ")",
        f"bare celery apply_async per s: {bare_rate:.0f}   (CPU {bare_cpu:.3f} ms/call; runs: "
        + ", ".join(f"{b[0]:.0f}" for b in r.bare)
        + ")",
        f"ratio http submit cost/bare apply_async: {r.api_cpu_ms / bare_cpu:.2f}   "
        f"(CPU-ms per call; runtime submit/bare apply_async: {sub_cpu / bare_cpu:.2f} by CPU, "
        f"{bare_rate / sub_rate:.2f} by 1/throughput)",
    ]


def report(bench: Bench, results: list[BackendResult]) -> None:
    args = bench.args
    info = bench.client.info("server")
    load1, load5, _ = os.getloadavg()
    out = ["=" * 78, "agentrt bench-http"]
    out.append(
        f"  machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, redis-server "
        f"{info.get('redis_version')}; load average at the end {load1:.2f} (1 min), "
        f"{load5:.2f} (5 min)"
    )
    out.append(
        f"  load: {args.rate:.0f} req/s x {args.duration:.0f}s open-loop, {args.connections} "
        f"keep-alive connections, separate process; agentrt api --workers "
        f"{args.api_workers}; "
        f"worker -P {args.pool} -c {args.concurrency}"
        f"{f' under nice -n {args.worker_nice}' if args.worker_nice else ''}; runs of "
        f"{args.tool_calls + 1} steps"
    )
    out.append(
        f"  in-process: {args.submits} submits x {args.repeats} interleaved repeats, medians"
    )
    for r in results:
        out.append("-" * 78)
        out.append(f"[{r.name}]")
        out.extend(backend_lines(args, r))
    out.append("=" * 78)
    print("\n".join(out), flush=True)


# --- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="agentrt HTTP submit benchmark (bench/README.md)")
    p.add_argument("--rate", type=float, default=GOAL_RATE, help="requests/s (200)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections (8)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    p.add_argument(
        "--database-url",
        help="PostgreSQL base URL; default the first of " + " or ".join(DEFAULT_PG_URLS),
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--submits", type=int, default=1000, help="in-process submits a repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tool-calls", type=int, default=1, help="tool steps per run (+1 reply)")
    p.add_argument("--no-events", action="store_true", help="AGENTRT_TASK_EVENTS=false")
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=2,
        help="the worker's pool processes during the load (2: every core of this machine)",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=10,
        help="run the worker under `nice -n N`, as `agentrt worker --nice N` does (0-19; "
        "default 10, the deployment bench/README.md recommends for a host the API shares; "
        "0: the API's priority, and the p99 then depends on how the kernel shares two "
        "saturated cores)",
    )
    p.add_argument(
        "--api-workers", type=int, default=1, help="agentrt api --workers: server processes (1)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument("--quick", action="store_true", help="small numbers: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.rate, args.duration, args.submits, args.repeats = 20.0, 2.0, 50, 1
    if not (0 < args.rate <= 5000 and 0 < args.duration <= 3600 and 1 <= args.connections <= 256):
        p.error("--rate in (0, 5000], --duration in (0, 3600], --connections in [1, 256]")
    if not 1 <= args.worker_concurrency <= 64:
        p.error("--worker-concurrency in [1, 64]")
    if not 1 <= args.api_workers <= 16:
        p.error("--api-workers in [1, 16]")
    if not 0 <= args.worker_nice <= 19:
        p.error("--worker-nice in [0, 19]")
    # what bench.run.Bench reads
    args.config, args.pool, args.loglevel = BENCH_CONFIG, "prefork", "WARNING"
    args.concurrency = args.worker_concurrency
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := sorted(set(backends) - set(BACKENDS)):
        print(f"unknown backend(s) {unknown}; choose from {BACKENDS}", file=sys.stderr)
        return 2
    pg_url, pg_problem = find_postgres(args.database_url) if "postgresql" in backends else ("", "")
    workdir = Path(tempfile.mkdtemp(prefix="agentrt-bench-http-"))
    server: EmbeddedRedis | None = None
    if args.redis_url:
        redis_url = args.redis_url
    else:
        server = start_server(workdir / "redis", persistent=False)
        redis_url = server.url
    bench = Bench(args, workdir, redis_url, redis.Redis.from_url(redis_url), server)
    started = time.monotonic()
    try:
        results = []
        for name in backends:
            result = BackendResult(name)
            results.append(result)
            if name == "postgresql" and pg_url is None:
                result.skipped = pg_problem
                continue
            args.database_url = pg_url if name == "postgresql" else None
            bench.backend_tag = name[0]
            svc = http_phase(bench, result)
            submit_phases(bench, svc, result)
        report(bench, results)
        if args.keep:
            log(f"kept {workdir}")
    finally:
        bench.close()
        log(f"total bench-http time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
