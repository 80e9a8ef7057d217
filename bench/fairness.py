"""agentrt fairness benchmark: a small tenant behind a flood, dispatch cost, throughput.

``make bench-fairness`` (or ``.venv/bin/python bench/fairness.py``) measures, in one run,
on one Redis and with one set of worker flags (``-P prefork -c 2 --without-mingle
--without-gossip``, the worker started as a subprocess, as in ``bench/run.py``):

1. **fairness**: tenant A queues ``--backlogs`` runs (5,000, then 1,000) while no worker
   runs; a worker starts; once it is draining A (``--warm`` of A's steps done), tenant B
   submits ``--small`` (20) runs. B's wait is from its submit to the start of its first
   step (``runs.started_at - runs.created_at``: the worker sets ``started_at`` when the
   step starts). The baseline is a plain single Celery FIFO queue on the same worker flags
   and broker settings (``bench/fifoapp.py``): A's tasks queued, the worker started, B's
   tasks queued once A is draining; each task records its start time, B's wait is start -
   enqueue. Prints B's median and p99 under both, and ``p99 ratio agentrt/fifo: 0.NN``
   (at the largest backlog; goal <= 0.05).
2. **dispatch cost**: ``runtime.scheduling.scheduler.Scheduler`` on the same redis-server,
   no workers: N active tenants (10, 1,000, 10,000) with queued steps, a capacity far above
   what is in flight, then many ``Ops().dispatch(1)`` and ``Ops().dispatch(16)`` calls,
   each dispatched step completed and replaced by a new step of the same tenant between
   timed chunks (so N tenants stay active and slots never run out). Reports us per
   decision, wall (client side, ``Scheduler.run``) and Redis server time (``INFO
   commandstats`` of ``EVALSHA``), and the ratio at 10,000 tenants / at 10 (goal <= 2x).
3. **throughput**: ``bench/run.py``'s bare Celery and runtime phases (interleaved repeats,
   medians), so ``ratio runtime/bare: 0.NN`` is measured with the scheduler in the path.

Everything it starts (redis-server, workers, temp SQLite files) is stopped or removed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench import run as core  # noqa: E402
from bench.fifoapp import create_fifo_app, send, starts_key  # noqa: E402
from runtime import scripts  # noqa: E402
from runtime.budgets.ledger import today  # noqa: E402
from runtime.config import RuntimeConfig, load_config  # noqa: E402
from runtime.embedded_redis import EmbeddedRedis, start_server  # noqa: E402
from runtime.keys import Keys  # noqa: E402
from runtime.scheduling.scheduler import Item, Ops, Scheduler  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.state import StateMarkers  # noqa: E402
from runtime.store.runs import runs_t  # noqa: E402
from runtime.wiring import Runtime, resolve_endpoints  # noqa: E402

FAIR_CONFIG = ROOT / "bench" / "fairness.yaml"
TENANT_A = "tenant_a"
TENANT_B = "tenant_b"
ROUTE = "fair.read"
GOAL_P99_RATIO = 0.05
GOAL_DISPATCH_RATIO = 2.0

log = core.log


# --- helpers ---------------------------------------------------------------------------
def deployment(bench: core.Bench, label: str, config: Path) -> tuple[Settings, dict[str, str]]:
    """``Bench.deployment`` (fresh namespace, temp SQLite) with this phase's config."""
    bench.args.config = config
    return bench.deployment(label)


def wait_until(
    cond: Callable[[], bool], worker: core.Worker, timeout_s: float, what: str, poll: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if worker.proc.poll() is not None:
            raise RuntimeError(
                f"worker {worker.name} exited with {worker.proc.returncode} waiting for "
                f"{what}:\n{worker.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout_s:.0f}s:\n{worker.log_tail()}")
        time.sleep(poll)


def warm_up(done: Callable[[], int], worker: core.Worker, warm: int) -> float:
    """Wait until the worker has completed ``warm`` of A's steps (steady state); returns
    A's completion rate over the second half of the warm-up."""
    half = max(1, warm // 2)
    wait_until(lambda: done() >= half, worker, 90, "A's backlog to drain", 0.005)
    n0, t0 = done(), time.monotonic()
    wait_until(lambda: done() >= warm, worker, 90, "A's backlog to drain", 0.005)
    n1, t1 = done(), time.monotonic()
    return (n1 - n0) / max(1e-9, t1 - t0)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- 1. fairness -----------------------------------------------------------------------
@dataclass
class Fair:
    """One fairness phase: B's waits behind a backlog of A."""

    kind: str  # "agentrt" | "fifo"
    backlog: int
    waits: list[float]
    #: A's steps not yet completed when B submitted, and when B's last step started
    a_left_at_b: int
    a_left_after: int
    #: A's completions per second before B submitted (from warm/2 to warm done)
    a_rate: float
    setup_rate: float


def agentrt_fair(bench: core.Bench, opts: argparse.Namespace, backlog: int, index: int) -> Fair:
    settings, env = deployment(bench, f"fa{backlog}x{index}", opts.config)
    svc = Runtime.from_settings(settings)
    svc.apply_config("bench")
    bench.services.append(svc)
    run_input = {"script": core.script(opts.tool_calls)}
    steps_per_run = opts.tool_calls + 1

    def submit(tenant: str) -> str:
        view = svc.submit(tenant, ROUTE, "fairness bench", run_input, actor="bench")
        if view.status.value != "queued":
            raise RuntimeError(f"run refused: {view.stop_reason} {view.output}")
        return view.run_id

    # A's backlog is queued while no worker runs: no capacity is reported, nothing is
    # dispatched, every step waits in A's ready queue
    t0 = time.monotonic()
    for _ in range(backlog):
        submit(TENANT_A)
    setup_rate = backlog / (time.monotonic() - t0)
    a_key = svc.keys.budget_tenant_day(TENANT_A, today())

    def a_done() -> int:  # A's completed steps: settled model calls of A's day scope
        return int(svc.redis.hget(a_key, "u:model_calls") or 0)

    worker = bench.celery_worker("tasks.app", env, f"{settings.namespace}-w")
    a_rate = warm_up(a_done, worker, opts.warm)
    a0 = a_done()
    b_ids = [submit(TENANT_B) for _ in range(opts.small)]
    query = select(runs_t.c.run_id, runs_t.c.created_at, runs_t.c.started_at).where(
        runs_t.c.run_id.in_(b_ids), runs_t.c.started_at.is_not(None)
    )
    rows: list[Any] = []

    def b_started() -> bool:
        nonlocal rows
        with svc.store.engine.connect() as conn:
            rows = list(conn.execute(query).all())
        return len(rows) == len(b_ids)

    wait_until(b_started, worker, 60 + backlog / 20, "B's runs to start", 0.02)
    a1 = a_done()
    worker.stop()  # A's remaining backlog is not needed: the namespace is dropped at the end
    svc.close()
    total_a = backlog * steps_per_run
    return Fair(
        "agentrt",
        backlog,
        [(r.started_at - r.created_at).total_seconds() for r in rows],
        total_a - a0,
        total_a - a1,
        a_rate,
        setup_rate,
    )


def fifo_fair(bench: core.Bench, opts: argparse.Namespace, backlog: int, index: int) -> Fair:
    settings, env = deployment(bench, f"ff{backlog}x{index}", opts.config)
    app = create_fifo_app(settings, resolve_endpoints(settings))
    key_a = starts_key(settings.namespace, TENANT_A)
    key_b = starts_key(settings.namespace, TENANT_B)
    t0 = time.monotonic()
    for _ in range(backlog):
        send(app, TENANT_A, ROUTE)
    setup_rate = backlog / (time.monotonic() - t0)

    def a_done() -> int:
        return int(bench.client.llen(key_a))

    worker = bench.celery_worker("bench.fifoapp", env, f"{settings.namespace}-w")
    a_rate = warm_up(a_done, worker, opts.warm)
    a0 = a_done()
    sent = dict(send(app, TENANT_B, ROUTE) for _ in range(opts.small))
    wait_until(
        lambda: int(bench.client.llen(key_b)) >= len(sent),
        worker,
        60 + backlog / 20,
        "B's tasks to start",
        0.01,
    )
    a1 = a_done()
    worker.stop()
    with contextlib.suppress(Exception):  # the producer pool may not exist
        app.pool.force_close_all()
    started: dict[str, float] = {}
    for raw in bench.client.lrange(key_b, 0, -1):
        run_id, at = (raw.decode() if isinstance(raw, bytes) else str(raw)).split("|")
        started[run_id] = float(at)
    return Fair(
        "fifo",
        backlog,
        [started[run_id] - at for run_id, at in sent.items()],
        backlog - a0,
        backlog - a1,
        a_rate,
        setup_rate,
    )


# --- 2. dispatch cost ------------------------------------------------------------------
@dataclass
class DispatchCost:
    tenants: int
    batch: int
    decisions: int = 0
    calls: int = 0
    wall_s: float = 0.0
    server_us: float = 0.0

    @property
    def wall_us(self) -> float:
        return 1e6 * self.wall_s / max(1, self.decisions)

    @property
    def server_us_per_decision(self) -> float:
        return self.server_us / max(1, self.decisions)


class DispatchRig:
    """A scheduler cell with ``tenants`` active tenants and no workers."""

    def __init__(
        self, bench: core.Bench, config: RuntimeConfig, tenants: int, per_tenant: int
    ) -> None:
        namespace = f"bench{bench.token}d{tenants}"
        bench.namespaces.append(namespace)
        self.client = bench.client
        self.tenants = tenants
        keys = Keys(namespace)
        self.sched = Scheduler(self.client, keys, config)
        StateMarkers(self.client, keys).mark(1)  # a state built from SQL (runtime.state)
        self.sched.publish_config(config.version, "bench")
        # far above anything in flight: only the decision itself is measured
        self.client.set(f"{self.sched.prefix}:capacity", 10**9)
        self.seq = 0
        names = [f"t{i:05d}" for i in range(tenants)]
        # the rig's tenants are not in the file: publish them without a cap (a tenant with
        # no published entry waits, it is never unlimited)
        self.client.hset(f"{self.sched.prefix}:tcap", mapping=dict.fromkeys(names, -1))
        self._apply_items([], [self._new(t) for _ in range(per_tenant) for t in names])

    def _new(self, tenant: str) -> Item:
        self.seq += 1
        return Item(f"r{self.seq}", 0, tenant, ROUTE)

    def _apply_items(self, done: list[Item], fresh: list[Item], per_call: int = 250) -> None:
        """Complete ``done`` and enqueue ``fresh``, ``per_call`` items a script call, one
        pipeline (untimed)."""
        batches: list[Ops] = []
        ops, n = Ops(), 0
        for item in done:
            ops.complete(item)
            n += 1
            if n >= per_call:
                batches.append(ops)
                ops, n = Ops(), 0
        for item in fresh:
            ops.enqueue(item)
            n += 1
            if n >= per_call:
                batches.append(ops)
                ops, n = Ops(), 0
        if n:
            batches.append(ops)
        for i in range(0, len(batches), 20):
            chunk = batches[i : i + 20]

            def build(pipe: Any, chunk: list[Ops] = chunk) -> None:
                for ops in chunk:
                    self.sched.queue_in(pipe, ops)

            scripts.run_pipeline(self.client, build)

    def _evalsha(self) -> tuple[int, int]:
        return core.commandstats(self.client).get("evalsha", (0, 0))

    def measure(self, batch: int, chunk: int, chunks: int) -> DispatchCost:
        cost = DispatchCost(self.tenants, batch)
        run = self.sched.run
        for _ in range(chunks):
            got: list[Item] = []
            calls0, usec0 = self._evalsha()
            t0 = time.perf_counter()
            while len(got) < chunk:
                out = run(Ops().dispatch(batch)).dispatched
                if not out:
                    raise RuntimeError(f"{self.tenants} tenants: a dispatch call found nothing")
                got.extend(out)
            cost.wall_s += time.perf_counter() - t0
            calls1, usec1 = self._evalsha()
            cost.calls += calls1 - calls0
            cost.server_us += usec1 - usec0
            cost.decisions += len(got)
            # each dispatched step completes and its run queues its next step
            self._apply_items(got, [self._new(i.tenant) for i in got])
        return cost


def dispatch_bench(bench: core.Bench, opts: argparse.Namespace) -> dict[tuple[int, int], Any]:
    config = load_config(opts.config)
    rigs = []
    for n in opts.tenants:
        per_tenant = max(opts.items_per_tenant, math.ceil(opts.dispatch_chunk / n) + 2)
        t0 = time.monotonic()
        rigs.append(DispatchRig(bench, config, n, per_tenant))
        log(f"dispatch: {n} tenants x {per_tenant} queued steps in {time.monotonic() - t0:.1f}s")
    for rig in rigs:  # warm-up: script cached, connection open, code paths hot
        rig.measure(1, opts.dispatch_chunk, 1)
        rig.measure(16, opts.dispatch_chunk, 1)
    results: dict[tuple[int, int], list[DispatchCost]] = {}
    for _ in range(opts.dispatch_repeats):  # interleaved: the machine is noisy
        for rig in rigs:
            for batch in (1, 16):
                cost = rig.measure(batch, opts.dispatch_chunk, opts.dispatch_chunks)
                results.setdefault((rig.tenants, batch), []).append(cost)
    return results


# --- report ----------------------------------------------------------------------------
def fair_lines(fairs: list[Fair], opts: argparse.Namespace) -> tuple[list[str], float]:
    out: list[str] = []
    backlogs = sorted({f.backlog for f in fairs}, reverse=True)
    p99: dict[tuple[str, int], float] = {}
    steps = opts.tool_calls + 1
    out.append(
        f"1. fairness: A queues a backlog of runs ({steps} step(s) each: "
        f"{'kb.search + ' if opts.tool_calls else ''}reply) before the worker starts; once "
        f"{opts.warm} of A's steps are done, B submits {opts.small} runs. B's wait = submit "
        f"-> first step start; {opts.fair_repeats} repeat(s) pooled"
    )
    for backlog in backlogs:
        out.append(f"  A backlog {backlog}:")
        out.append(
            f"    {'':<26}{'median':>9}{'p99':>9}{'max':>9}   A left at B's submit -> "
            "at B's last start; A's rate before B"
        )
        for kind, label in (("agentrt", "agentrt (fair scheduler)"), ("fifo", "plain FIFO Celery")):
            group = [f for f in fairs if f.kind == kind and f.backlog == backlog]
            waits = [w for f in group for w in f.waits]
            p99[(kind, backlog)] = percentile(waits, 0.99)
            left = ", ".join(f"{f.a_left_at_b} -> {f.a_left_after}" for f in group)
            rate = core.median([f.a_rate for f in group])
            out.append(
                f"    {label:<26}{statistics.median(waits):8.3f}s{p99[(kind, backlog)]:8.3f}s"
                f"{max(waits):8.3f}s   {left}; {rate:.0f}/s"
            )
        per_repeat = [
            percentile(f.waits, 0.99) for f in fairs if f.kind == "agentrt" and f.backlog == backlog
        ]
        out.append(
            f"    agentrt p99 per repeat: {', '.join(f'{v:.3f}s' for v in per_repeat)}; "
            f"ratio agentrt/fifo at this backlog: "
            f"{p99[('agentrt', backlog)] / p99[('fifo', backlog)]:.4f}"
        )
    top = backlogs[0]
    ratio = p99[("agentrt", top)] / p99[("fifo", top)] if p99[("fifo", top)] else 0.0
    out.append(f"p99 ratio agentrt/fifo: {ratio:.2f}")
    verdict = "meets" if ratio <= GOAL_P99_RATIO else "MISSES"
    out.append(f"  (backlog {top}: {ratio:.4f}; {verdict} the <= {GOAL_P99_RATIO} goal)")
    if len(backlogs) > 1:
        low = backlogs[-1]
        out.append(
            "  B's p99 wait vs A's backlog: agentrt "
            + ", ".join(f"{b}: {p99[('agentrt', b)]:.3f}s" for b in backlogs)
            + f" ({p99[('agentrt', top)] / p99[('agentrt', low)]:.2f}x for "
            f"{top / low:.0f}x the backlog); fifo "
            + ", ".join(f"{b}: {p99[('fifo', b)]:.3f}s" for b in backlogs)
            + f" ({p99[('fifo', top)] / p99[('fifo', low)]:.2f}x)"
        )
    rate_rt = core.median([f.a_rate for f in fairs if f.kind == "agentrt"])
    rate_fifo = core.median([f.a_rate for f in fairs if f.kind == "fifo"])
    if rate_rt and rate_fifo:
        out.append(
            f"  the FIFO's tasks are no-ops ({rate_fifo:.0f}/s vs agentrt's {rate_rt:.0f} "
            f"steps/s): a FIFO of steps as costly as agentrt's would make B wait "
            f"~{rate_fifo / rate_rt:.1f}x longer (ratio ~{ratio * rate_rt / rate_fifo:.4f})"
        )
    return out, ratio


def dispatch_lines(results: dict[tuple[int, int], list[DispatchCost]]) -> list[str]:
    tenants = sorted({n for n, _ in results})
    out = [
        "2. dispatch cost: N active tenants with queued steps, no workers; us per decision "
        "(medians of repeats)",
        f"    {'tenants':>8}  {'dispatch(1) wall':>17} {'server':>8}   "
        f"{'dispatch(16) wall':>18} {'server':>8}",
    ]
    med: dict[tuple[int, int, str], float] = {}
    for n in tenants:
        row = f"    {n:>8}  "
        for batch in (1, 16):
            costs = results[(n, batch)]
            wall = core.median([c.wall_us for c in costs])
            server = core.median([c.server_us_per_decision for c in costs])
            med[(n, batch, "wall")], med[(n, batch, "server")] = wall, server
            width = 17 if batch == 1 else 18
            row += f"{wall:>{width - 3}.1f} us {server:>5.1f} us   "
        out.append(row.rstrip())
    lo, hi = tenants[0], tenants[-1]
    parts = []
    for batch in (1, 16):
        for what in ("wall", "server"):
            parts.append(
                f"dispatch({batch}) {what} {med[(hi, batch, what)] / med[(lo, batch, what)]:.2f}x"
            )
    worst = max(med[(hi, b, w)] / med[(lo, b, w)] for b in (1, 16) for w in ("wall", "server"))
    out.append(
        f"dispatch cost ratio {hi}/{lo} tenants: {worst:.2f}x (worst of: {', '.join(parts)})"
    )
    verdict = "meets" if worst <= GOAL_DISPATCH_RATIO else "MISSES"
    out.append(f"  ({verdict} the <= {GOAL_DISPATCH_RATIO:g}x goal)")
    return out


def throughput_lines(drains: list[core.Drain], args: argparse.Namespace) -> list[str]:
    bare = [d for d in drains if d.label == "bare"]
    rt = [d for d in drains if d.label == "runtime"]
    bare_rate = core.median([d.rate for d in bare])
    rt_rate = core.median([d.rate for d in rt])
    ratio = rt_rate / bare_rate if bare_rate else 0.0
    return [
        f"3. throughput (bench/run.py phases, bench/config.yaml): bare {args.bare_tasks} no-op "
        f"tasks; runtime {args.runs} runs x {args.tool_calls + 1} steps; scheduler in the path",
        f"    bare celery no-op: {bare_rate:8.1f} tasks/s   runs: "
        + ", ".join(f"{d.rate:.1f}" for d in bare),
        f"    runtime steps:     {rt_rate:8.1f} steps/s   runs: "
        + ", ".join(f"{d.rate:.1f}" for d in rt),
        f"ratio runtime/bare: {ratio:.2f}",
        "  (per-repeat ratios: "
        + ", ".join(f"{r.rate / b.rate:.2f}" for b, r in zip(bare, rt, strict=False))
        + ")",
    ]


def report(
    bench: core.Bench,
    opts: argparse.Namespace,
    fairs: list[Fair],
    dispatch: dict[tuple[int, int], list[DispatchCost]],
    drains: list[core.Drain],
) -> None:
    args = bench.args
    info = bench.client.info("server")
    out = ["=" * 78, "agentrt fairness bench"]
    out.append(
        f"  machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-server {info.get('redis_version')}, SQL "
        f"{'PostgreSQL' if args.database_url else 'SQLite (WAL)'}"
    )
    out.append(
        f"  worker: -P {args.pool} -c {args.concurrency} --without-mingle --without-gossip "
        f"-l {args.loglevel}; task events {'off' if args.no_events else 'on'}; "
        "acks_late, prefetch 1, JSON (tasks.app.celery_config), for every phase"
    )
    if fairs:
        out.append("-" * 78)
        lines, _ = fair_lines(fairs, opts)
        out.extend(lines)
    if dispatch:
        out.append("-" * 78)
        out.extend(dispatch_lines(dispatch))
    if drains:
        out.append("-" * 78)
        out.extend(throughput_lines(drains, args))
    out.append("=" * 78)
    print("\n".join(out), flush=True)


# --- main ------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace("_", "").split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="agentrt fairness benchmark (see bench/README.md)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--database-url", help="PostgreSQL base URL (see bench/run.py)")
    p.add_argument("--config", type=Path, default=FAIR_CONFIG, help="fairness deployment")
    p.add_argument("--no-events", action="store_true", help="AGENTRT_TASK_EVENTS=false")
    p.add_argument("--backlogs", type=_ints, default=[5000, 1000], help="A's runs, e.g. 5000,1000")
    p.add_argument("--small", type=int, default=20, help="B's runs")
    p.add_argument("--warm", type=int, default=200, help="A's steps done before B submits")
    p.add_argument("--tool-calls", type=int, default=0, help="fairness runs: tool steps + reply")
    p.add_argument("--fair-repeats", type=int, default=2)
    p.add_argument("--tenants", type=_ints, default=[10, 1000, 10000])
    p.add_argument("--items-per-tenant", type=int, default=4)
    p.add_argument("--dispatch-chunk", type=int, default=200, help="decisions between refills")
    p.add_argument("--dispatch-chunks", type=int, default=10, help="chunks per measurement")
    p.add_argument("--dispatch-repeats", type=int, default=3)
    p.add_argument("--bare-tasks", type=int, default=3000)
    p.add_argument("--runs", type=int, default=1500)
    p.add_argument("--throughput-tool-calls", type=int, default=1)
    p.add_argument("--throughput-repeats", type=int, default=3)
    p.add_argument("--pool", default="prefork")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--skip-fairness", action="store_true")
    p.add_argument("--skip-dispatch", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    p.add_argument("--quick", action="store_true", help="small N: a smoke test")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.backlogs = [1000, 300]
        opts.small, opts.fair_repeats, opts.warm = 10, 1, 50
        opts.tenants = [10, 1000]
        opts.dispatch_chunks, opts.dispatch_repeats = 3, 1
        opts.bare_tasks, opts.runs, opts.throughput_repeats = 500, 200, 1
    return opts


def core_args(opts: argparse.Namespace) -> argparse.Namespace:
    """bench/run.py's options for its phases (and for ``Bench``)."""
    argv = [
        "--bare-tasks",
        str(opts.bare_tasks),
        "--runs",
        str(opts.runs),
        "--tool-calls",
        str(opts.throughput_tool_calls),
        "--pool",
        opts.pool,
        "--concurrency",
        str(opts.concurrency),
        "--loglevel",
        opts.loglevel,
    ]
    if opts.database_url:
        argv += ["--database-url", opts.database_url]
    if opts.no_events:
        argv.append("--no-events")
    if opts.keep:
        argv.append("--keep")
    return core.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    args = core_args(opts)
    workdir = Path(tempfile.mkdtemp(prefix="agentrt-fairness-"))
    server: EmbeddedRedis | None = None
    if opts.redis_url:
        redis_url = opts.redis_url
    else:
        server = start_server(workdir / "redis", persistent=False)
        redis_url = server.url
    bench = core.Bench(args, workdir, redis_url, redis.Redis.from_url(redis_url), server)
    started = time.monotonic()
    try:
        dispatch: dict[tuple[int, int], list[DispatchCost]] = {}
        if not opts.skip_dispatch:
            dispatch = dispatch_bench(bench, opts)
            log("dispatch cost done")
        fairs: list[Fair] = []
        if not opts.skip_fairness:
            for i in range(opts.fair_repeats):
                for backlog in opts.backlogs:
                    for phase in (agentrt_fair, fifo_fair):
                        t0 = time.monotonic()
                        f = phase(bench, opts, backlog, i)
                        log(
                            f"{f.kind} backlog {backlog} #{i + 1}: B median "
                            f"{statistics.median(f.waits):.3f}s p99 "
                            f"{percentile(f.waits, 0.99):.3f}s (A left {f.a_left_at_b}, "
                            f"setup {f.setup_rate:.0f}/s; phase {time.monotonic() - t0:.0f}s)"
                        )
                        fairs.append(f)
        drains: list[core.Drain] = []
        if not opts.skip_throughput:
            args.config = core.BENCH_CONFIG
            for i in range(opts.throughput_repeats):
                for tphase in (core.bare_phase, core.runtime_phase):
                    d = tphase(bench, i)
                    log(f"{d.label} #{i + 1}: {d.total} in {d.seconds:.2f}s = {d.rate:.1f}/s")
                    drains.append(d)
        report(bench, opts, fairs, dispatch, drains)
        if opts.keep:
            log(f"kept {workdir}")
    finally:
        bench.close()
        log(f"total bench time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
