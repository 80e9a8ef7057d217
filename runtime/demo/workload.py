"""The demo behind ``agentrt demo`` / ``make demo``: real workers, a multi-tenant workload,
a summary of what the runtime decided.

With nothing configured it runs on a fresh machine: an embedded redis-server (no
``AGENTRT_REDIS_URL``) and SQLite under ``AGENTRT_HOME`` (``./.agentrt``). Every invocation
uses its own namespace (``demo-<timestamp>-<hex>``) so budgets, locks, counters and queues
of earlier runs never mix with this one; the runs stay in SQL for ``agentrt trace``.

The workload is scripted (the scripted proposer replays each run's ``input.script``), so
each scenario shows one runtime decision on purpose:

==========================  ===================================================
scenario                    expected stop reason
==========================  ===================================================
triage                      completed
lock contention             completed, after waiting for ``ticket:T-1000``
failing tool                failed:backend_unavailable
invalid args                invalid_proposal:invalid_args
refund                      completed
refund over cap             policy_denied:refund_cap
refund approved             completed: it waited for approval, the demo's reviewer
                            approved it, the refund ran once
refund denied               approval_denied:demo:reviewer (the reviewer said why)
refund out of scope         refused:tenant_not_in_scope (initech may not refund)
counter                     completed; one exactly-once INCR each
tight run budget            budget_exhausted:tool_calls (per-run 'tight': 2 calls)
tool outside route          policy_denied:tool_not_allowed
tenant budget burst         budget_exhausted:tool_calls for some: initech has 12 tool
                            calls a day; this second wave starts after the first ended
==========================  ===================================================
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from runtime import stop_reasons
from runtime.config import RuntimeConfig, load_config
from runtime.demo import review
from runtime.demo.knowledge import CHILD_ROUTE as KNOWLEDGE_CHILD
from runtime.demo.knowledge import ROUTE as KNOWLEDGE_ROUTE
from runtime.demo.knowledge import KnowledgeReport, print_knowledge, run_knowledge
from runtime.demo.review import Decided, Reviewer
from runtime.demo.rollout import RolloutReport, print_rollout, run_rollout
from runtime.errors import DemoError
from runtime.service import WAIT_STATUSES, RuntimeService
from runtime.settings import Settings
from runtime.step_record import StepKind, StepOutcome
from runtime.wiring import Endpoints, Runtime, resolve_endpoints

TENANTS = ("acme", "globex", "initech")
TRIAGE, REFUNDS, COUNTER = "support.triage", "billing.refunds", "ops.counter"
ROUTES = (TRIAGE, REFUNDS, COUNTER)
KNOWLEDGE_ROUTES = (KNOWLEDGE_ROUTE, KNOWLEDGE_CHILD)
#: the ticket every "lock contention" run updates
CONTENDED_TICKET = "T-1000"
#: the counter key every counter.increment of the demo adds 1 to
COUNTER_KEY = "demo"
_FINISHED = frozenset(s.value for s in WAIT_STATUSES)
#: the repository's config, for runs from another directory (editable installs)
_REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "runtime.yaml"


# --- the workload ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    scenario: str
    tenant: str
    route: str
    goal: str
    script: list[dict[str, Any]]
    #: submitted once every run of the earlier waves has finished
    wave: int = 0
    #: the demo's reviewer decides its approval: "approve" or "deny" (runtime.demo.review)
    review: str | None = None


def _call(tool: str, args: dict[str, Any], tokens: tuple[int, int] = (420, 40)) -> dict[str, Any]:
    usage = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
    return {"type": "tool_call", "tool": tool, "args": args, "usage": usage}


def _reply(text: str) -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": {"input_tokens": 650, "output_tokens": 30}}


def _triage(tenant: str) -> RunSpec:
    ticket = f"T-{tenant}-1"
    return RunSpec(
        "triage",
        tenant,
        TRIAGE,
        f"Triage {ticket}",
        [
            _call("kb.search", {"query": "shipping delays"}),
            _call("tickets.update", {"ticket_id": ticket, "status": "pending", "note": "kb-3"}),
            _reply(f"Sent the shipping article and set {ticket} to pending."),
        ],
    )


def _contended(i: int) -> RunSpec:
    # every run updates the same ticket and holds its lock a while: the others wait
    args = {"ticket_id": CONTENDED_TICKET, "status": "pending", "note": f"agent {i}"}
    return RunSpec(
        "lock contention",
        TENANTS[i % 2],
        TRIAGE,
        f"Update {CONTENDED_TICKET} (agent {i})",
        [_call("tickets.update", {**args, "hold_ms": 250}), _reply("Updated.")],
    )


def _refund(
    scenario: str, tenant: str, amount: float, with_reply: bool, review: str | None = None
) -> RunSpec:
    script = [
        _call("kb.search", {"query": "refund policy"}),
        _call("payments.refund", {"customer_id": f"cus_{tenant}42", "amount": amount}),
    ]
    if with_reply:
        script.append(_reply(f"Refunded {amount:g} EUR."))
    return RunSpec(scenario, tenant, REFUNDS, f"Refund {amount:g} EUR", script, review=review)


def _counter(scenario: str, tenant: str, increments: int) -> RunSpec:
    script = [_call("counter.increment", {"key": COUNTER_KEY}, (300, 20))] * increments
    return RunSpec(scenario, tenant, COUNTER, f"Count {increments}", [*script, _reply("Counted.")])


def _burst(i: int) -> RunSpec:
    # after initech's first runs completed: 7 runs x 3 calls outgrow its 12 calls a day
    queries = ["password reset", "escalation", f"order {i}"]
    return RunSpec(
        "tenant budget burst",
        "initech",
        TRIAGE,
        f"Research batch {i}",
        [*[_call("kb.search", {"query": q}) for q in queries], _reply("Researched.")],
        wave=1,
    )


def build_workload() -> list[RunSpec]:
    """3 tenants x 3 routes; each scenario shows one decision (see the module docstring)."""
    specs = [_triage(t) for t in TENANTS]
    specs += [_contended(i) for i in range(4)]
    specs.append(
        RunSpec(
            "failing tool",
            "acme",
            TRIAGE,
            "Weekly backlog report",
            [
                _call("kb.search", {"query": "escalation"}),
                _call("reports.generate", {"topic": "weekly backlog", "fail": True}),
                _reply("Report attached."),
            ],
        )
    )
    specs.append(
        RunSpec(
            "invalid args",
            "globex",
            TRIAGE,
            "Archive T-7",
            # "archived" is not a ticket status: refused before policy, never executed
            [_call("tickets.update", {"ticket_id": "T-7", "status": "archived"})],
        )
    )
    specs += [
        _refund("refund", "acme", 40, with_reply=True),
        _refund("refund", "globex", 60, with_reply=True),
        _refund("refund over cap", "acme", 2500, with_reply=False),
        _refund("refund approved", "globex", 250, with_reply=True, review="approve"),
        _refund("refund denied", "acme", 400, with_reply=True, review="deny"),
        _refund("refund out of scope", "initech", 30, with_reply=True),
    ]
    specs += [_counter("counter", t, 1) for t in TENANTS * 2]
    specs.append(_counter("tight run budget", "globex", 3))
    specs.append(
        RunSpec(
            "tool outside route",
            "acme",
            COUNTER,
            "Refund from the ops route",
            [_call("payments.refund", {"customer_id": "cus_acme7", "amount": 5})],
        )
    )
    specs += [_burst(i) for i in range(7)]
    return sorted(specs, key=lambda spec: spec.wave)


# --- processes -------------------------------------------------------------------------


def worker_argv(
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    hostname: str | None = None,
) -> list[str]:
    """``celery worker`` for the step queue, run by this Python (no PATH lookup)."""
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-P", pool]
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]
    # mingle and gossip only add start-up latency and broker chatter for this runtime
    return [*argv, "--without-mingle", "--without-gossip", "-l", loglevel]


def flower_argv(port: int, address: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]


def settings_env(settings: Settings) -> dict[str, str]:
    """``AGENTRT_*`` variables that make a child process build exactly these settings."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, Path):
            value = value.resolve()
        env[f"AGENTRT_{name.upper()}"] = str(value)
    return env


@dataclass
class ChildProcess:
    """A worker or Flower subprocess that logs to a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        return " ready." in self.log()

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.exited():
            return
        self.proc.send_signal(signal.SIGTERM)  # warm shutdown: children finish, then exit
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # the whole session (spawn starts one): pool children must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ChildProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # its own process group: Ctrl-C in the terminal reaches the demo, which then
            # stops the workers in order instead of every process at once
            start_new_session=True,
        )
    return ChildProcess(name, proc, log_path)


# --- the report ------------------------------------------------------------------------


@dataclass
class DemoRun:
    run_id: str
    scenario: str
    tenant: str
    route: str
    status: str
    stop_reason: str | None
    steps: int
    lock_waits: int


@dataclass
class DemoReport:
    namespace: str
    elapsed_s: float
    runs: list[DemoRun]
    #: tenant -> tokens, model_calls, tool_calls, cost_micro_usd
    spend: dict[str, dict[str, int]]
    #: tool -> {"ok": n, "failed": n}: tool calls the runtime executed
    tool_calls: dict[str, dict[str, int]]
    #: tool -> {status: n}: side-effect records (write and irreversible tools)
    effects: dict[str, dict[str, int]]
    counter_value: int
    #: the approvals the demo's reviewer decided, with their latency
    approvals: list[Decided] = field(default_factory=list)
    flower_url: str | None = None
    home: Path = field(default_factory=lambda: Path(".agentrt"))
    #: the rollout act: canary, lever, gated promotion (``runtime.demo.rollout``)
    rollout: RolloutReport | None = None
    #: the knowledge act: retrieval, memory, delegation (``runtime.demo.knowledge``)
    knowledge: KnowledgeReport | None = None

    @property
    def counter_increments(self) -> int:
        """Succeeded counter.increment side effects: each added exactly 1."""
        return self.effects.get("counter.increment", {}).get("succeeded", 0)

    def by_stop_reason(self) -> dict[str, int]:
        return dict(Counter(r.stop_reason or r.status for r in self.runs).most_common())

    def first(self, kind: str) -> DemoRun | None:
        return next((r for r in self.runs if (r.stop_reason or "").startswith(kind)), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "elapsedS": round(self.elapsed_s, 3),
            "byStopReason": self.by_stop_reason(),
            "runs": [
                {
                    "runId": r.run_id,
                    "scenario": r.scenario,
                    "tenantId": r.tenant,
                    "route": r.route,
                    "status": r.status,
                    "stopReason": r.stop_reason,
                    "steps": r.steps,
                    "lockWaits": r.lock_waits,
                }
                for r in self.runs
            ],
            "spendByTenant": self.spend,
            "toolCalls": self.tool_calls,
            "sideEffects": self.effects,
            "counter": {
                "value": self.counter_value,
                "succeededIncrements": self.counter_increments,
            },
            "approvals": review.to_json(self.approvals),
            "rollout": self.rollout.to_json() if self.rollout else None,
            "knowledge": self.knowledge.to_json() if self.knowledge else None,
        }


# --- running it ------------------------------------------------------------------------


@dataclass
class DemoOptions:
    workers: int = 2
    concurrency: int = 2
    timeout_s: float = 120.0
    #: keep Flower (on this port) and the workers up after the summary, until Ctrl-C
    flower_port: int | None = None


def new_namespace() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"demo-{stamp}-{uuid.uuid4().hex[:4]}"


def demo_config_path(configured: Path) -> Path:
    """The configured file, or the repository's when run from another directory."""
    if configured.exists() or configured.is_absolute():
        return configured.resolve()
    return _REPO_CONFIG if _REPO_CONFIG.exists() else configured


def check_demo_config(config: RuntimeConfig, path: Path) -> None:
    missing = [f"tenants.{t}" for t in TENANTS if t not in config.tenants]
    missing += [f"routes.{r}" for r in (*ROUTES, *KNOWLEDGE_ROUTES) if r not in config.routes]
    if missing:
        raise DemoError(
            f"the demo needs config/runtime.yaml's tenants and routes; {path} lacks "
            f"{', '.join(missing)} (unset AGENTRT_CONFIG)"
        )


@contextlib.contextmanager
def _owned_redis(endpoints: Endpoints, console: Console) -> Iterator[None]:
    """Stop the embedded Redis at the end if this process started it."""
    embedded = endpoints.embedded_redis
    if embedded is not None and embedded.owned:
        console.print(f"[dim]started an embedded redis-server at {embedded.url}[/]")
    try:
        yield
    finally:
        if embedded is not None and embedded.owned:
            embedded.stop()
            console.print("[dim]stopped the embedded redis-server[/]")


def run_demo(
    settings: Settings,
    options: DemoOptions | None = None,
    console: Console | None = None,
    on_report: Callable[[DemoReport], None] | None = None,
) -> DemoReport:
    """Start workers, run the workload, wait, collect the report; always clean up.

    ``on_report`` sees the report while the workers (and Flower) are still up."""
    options = options or DemoOptions()
    console = console or Console(stderr=True)
    config_path = demo_config_path(settings.config)
    check_demo_config(load_config(config_path), config_path)
    home = settings.home.resolve()
    endpoints = resolve_endpoints(settings.model_copy(update={"home": home}))
    with _owned_redis(endpoints, console):
        demo_settings = settings.model_copy(
            update={
                "namespace": new_namespace(),
                "config": config_path,
                "home": home,
                "redis_url": endpoints.redis_url,
                "broker_url": endpoints.broker_url,
                "database_url": endpoints.database_url,
            }
        )
        return _run_in_namespace(demo_settings, options, console, on_report)


def _run_in_namespace(
    settings: Settings,
    options: DemoOptions,
    console: Console,
    on_report: Callable[[DemoReport], None] | None,
) -> DemoReport:
    started = time.monotonic()
    # creates the schema before workers start; the demo's file is the deployment's config
    svc = Runtime.from_settings(settings, enforce_applied=False)
    svc.apply_config("demo")
    env = settings_env(settings)
    log_dir = settings.home / "logs"
    ns = settings.namespace
    children: list[ChildProcess] = []
    try:
        console.print(
            f"namespace [bold]{ns}[/] · {options.workers} workers x {options.concurrency} "
            f"processes · logs in {log_dir}"
        )
        workers = [
            spawn(
                f"{ns}-w{i}",
                worker_argv(options.concurrency, hostname=f"{ns}-w{i}@%h"),
                env,
                log_dir,
            )
            for i in range(options.workers)
        ]
        children += workers
        flower_url = None
        if options.flower_port:
            children.append(spawn(f"{ns}-flower", flower_argv(options.flower_port), env, log_dir))
            flower_url = f"http://127.0.0.1:{options.flower_port}"
            console.print(f"Flower (this demo's namespace): [bold]{flower_url}[/]")
        specs = build_workload()
        console.print(
            f"{len(specs)} runs over {len(TENANTS)} tenants x {len(ROUTES)} routes, "
            f"in {specs[-1].wave + 1} waves"
        )
        reviewer = Reviewer({})
        run_ids = _run_waves(svc, specs, workers, options.timeout_s, console, reviewer)
        report = _collect(svc, specs, run_ids, time.monotonic() - started)
        report.approvals = reviewer.collect(svc)
        console.print("rollout: a canary, a lever and a gated promotion on billing.refunds")
        over_cap = next(
            (r for s, r in zip(specs, run_ids, strict=True) if s.scenario == "refund over cap"),
            None,
        )
        report.rollout = run_rollout(svc, over_cap, settings.home / "evals", options.timeout_s)
        console.print("knowledge: retrieval with evidence, a memory write and a delegation")
        report.knowledge = run_knowledge(svc, options.timeout_s)
        report.flower_url = flower_url
        report.home = settings.home
        if on_report is not None:
            on_report(report)
        if flower_url:
            _hold_until_interrupted(console)
        return report
    finally:
        for child in children:
            child.stop()
        if children:
            console.print(f"[dim]stopped {len(children)} demo processes[/]")
        svc.close()


def _run_waves(
    svc: RuntimeService,
    specs: list[RunSpec],
    workers: list[ChildProcess],
    timeout_s: float,
    console: Console,
    reviewer: Reviewer,
) -> list[str]:
    """Submit each wave, wait until all its runs finished, then the next; returns run ids
    in the order of ``specs``."""
    deadline = time.monotonic() + timeout_s
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    run_ids: list[str] = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting workers", total=len(specs))
        for wave in sorted({spec.wave for spec in specs}):
            for spec in specs[len(run_ids) :]:
                if spec.wave != wave:
                    break
                run_ids.append(_submit(svc, spec, len(run_ids)))
                if spec.review:
                    reviewer.reviews[run_ids[-1]] = (spec.scenario, spec.review)
            # a waiting run the reviewer has yet to decide is not finished
            while reviewer.review(svc) or not _all_finished(svc, run_ids, workers, progress, task):
                _check_progress(workers, deadline, timeout_s)
                time.sleep(0.1)
    return run_ids


def _submit(svc: RuntimeService, spec: RunSpec, index: int) -> str:
    view = svc.submit(
        spec.tenant,
        spec.route,
        spec.goal,
        {"script": spec.script},
        actor="demo",
        request_id=f"{svc.settings.namespace}-{index}",
    )
    return view.run_id


def _all_finished(
    svc: RuntimeService,
    run_ids: list[str],
    workers: list[ChildProcess],
    progress: Progress,
    task: TaskID,
) -> bool:
    statuses = Counter(svc.store.statuses(run_ids).values())
    done = sum(n for s, n in statuses.items() if s in _FINISHED)
    progress.update(task, completed=done, description=_progress_text(statuses, workers))
    return done == len(run_ids)


def _progress_text(statuses: Counter[str], workers: list[ChildProcess]) -> str:
    ready = sum(w.ready() for w in workers)
    if not ready:
        return f"starting workers (0/{len(workers)} ready)"
    active = statuses.get("queued", 0) + statuses.get("running", 0)
    return f"runs ({ready}/{len(workers)} workers, {active} in flight)"


def _check_progress(workers: list[ChildProcess], deadline: float, timeout_s: float) -> None:
    if all(w.exited() for w in workers):
        tail = "\n".join(w.log()[-1500:] for w in workers)
        raise DemoError(f"every demo worker exited; last log lines:\n{tail}")
    if time.monotonic() > deadline:
        raise DemoError(
            f"the runs did not finish within {timeout_s:g}s; worker logs: "
            f"{', '.join(str(w.log_path) for w in workers)}"
        )


def _hold_until_interrupted(console: Console) -> None:
    console.print("Flower and the demo workers stay up; press [bold]Ctrl-C[/] to stop them.")
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()


def _collect(
    svc: RuntimeService, specs: list[RunSpec], run_ids: list[str], elapsed_s: float
) -> DemoReport:
    runs: list[DemoRun] = []
    tool_calls: dict[str, Counter[str]] = {}
    for spec, run_id in zip(specs, run_ids, strict=True):
        row = svc.store.get_run(run_id)
        runs.append(
            DemoRun(
                run_id=run_id,
                scenario=spec.scenario,
                tenant=spec.tenant,
                route=spec.route,
                status=row["status"],
                stop_reason=row["stop_reason"],
                steps=row["next_step"],
                lock_waits=row["lock_waits"],
            )
        )
        for step in svc.store.steps(run_id):
            if step["kind"] == StepKind.TOOL_CALL and step["proposal"]:
                ok = step["outcome"] == StepOutcome.TOOL_SUCCEEDED
                tool = str(step["proposal"].get("tool"))
                tool_calls.setdefault(tool, Counter())["ok" if ok else "failed"] += 1
    counter = svc.tool_redis.get(svc.keys.demo(f"counter:{COUNTER_KEY}"))
    return DemoReport(
        namespace=svc.settings.namespace,
        elapsed_s=elapsed_s,
        runs=runs,
        spend=svc.store.spend_by_tenant(run_ids),
        tool_calls={t: dict(c) for t, c in sorted(tool_calls.items())},
        effects=svc.store.effect_counts(run_ids),
        counter_value=int(counter or 0),
    )


# --- the summary -----------------------------------------------------------------------

_STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "refused": "magenta",
    "waiting": "yellow",
    "cancelled": "dim",
}


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.4f}"


def _by_reason_table(report: DemoReport) -> Table:
    table = Table(title="Runs by stop reason", title_justify="left")
    table.add_column("stop reason", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("scenarios")
    for reason, count in report.by_stop_reason().items():
        try:
            status = stop_reasons.status_for(reason).value
        except ValueError:  # no stop reason yet: the row shows the bare status
            status = reason
        scenarios = sorted({r.scenario for r in report.runs if (r.stop_reason or "") == reason})
        style = _STATUS_STYLE.get(status, "")
        table.add_row(
            f"[{style}]{escape(reason)}[/]" if style else escape(reason),
            status,
            str(count),
            ", ".join(scenarios),
        )
    return table


def _tenant_route_table(report: DemoReport) -> Table:
    table = Table(title="Outcomes per tenant and route", title_justify="left")
    table.add_column("tenant")
    for route in ROUTES:
        table.add_column(route)
    for tenant in TENANTS:
        cells = []
        for route in ROUTES:
            kinds = Counter(
                stop_reasons.kind_of(r.stop_reason or r.status)
                for r in report.runs
                if r.tenant == tenant and r.route == route
            )
            cells.append("\n".join(f"{k} x{n}" for k, n in kinds.most_common()) or "-")
        table.add_row(tenant, *cells)
    return table


def _spend_table(report: DemoReport) -> Table:
    table = Table(title="Spend per tenant (settled)", title_justify="left")
    for name in ("tenant", "runs", "tokens", "model calls", "tool calls", "cost"):
        table.add_column(name, justify="left" if name == "tenant" else "right")
    total = Counter[str]()
    for tenant in TENANTS:
        spend = report.spend.get(tenant, {})
        total.update(spend)
        runs = sum(r.tenant == tenant for r in report.runs)
        table.add_row(
            tenant,
            str(runs),
            f"{spend.get('tokens', 0):,}",
            str(spend.get("model_calls", 0)),
            str(spend.get("tool_calls", 0)),
            _usd(spend.get("cost_micro_usd", 0)),
        )
    table.add_section()
    table.add_row(
        "[bold]all[/]",
        str(len(report.runs)),
        f"{total['tokens']:,}",
        str(total["model_calls"]),
        str(total["tool_calls"]),
        _usd(total["cost_micro_usd"]),
    )
    return table


def _tools_table(report: DemoReport) -> Table:
    table = Table(title="Tool calls executed", title_justify="left")
    table.add_column("tool")
    table.add_column("ok", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("side-effect records")
    for tool in sorted(set(report.tool_calls) | set(report.effects)):
        calls = report.tool_calls.get(tool, {})
        effects = report.effects.get(tool, {})
        table.add_row(
            tool,
            str(calls.get("ok", 0)),
            str(calls.get("failed", 0)),
            ", ".join(f"{s} {n}" for s, n in sorted(effects.items())) or "- (read)",
        )
    return table


def _checks(report: DemoReport) -> list[str]:
    lines = []
    contended = [r for r in report.runs if r.scenario == "lock contention"]
    waits = sum(r.lock_waits for r in contended)
    completed = sum(r.stop_reason == "completed" for r in contended)
    lines.append(
        f"lock contention: {len(contended)} runs updated ticket {CONTENDED_TICKET}; they "
        f"waited {waits} times for its lock and {completed} completed (fenced writes)"
    )
    same = report.counter_value == report.counter_increments
    mark = "[green]equal: exactly once[/]" if same else "[red]MISMATCH[/]"
    lines.append(
        f"counter '{COUNTER_KEY}' = {report.counter_value}; succeeded counter.increment "
        f"side effects = {report.counter_increments} -> {mark}"
    )
    return lines


def _hints(report: DemoReport) -> list[str]:
    prefix = f"AGENTRT_HOME={report.home} " if "AGENTRT_HOME" in os.environ else ""
    lines = []
    for kind, why in (
        ("policy_denied:refund_cap", "the refund over the hard cap, denied by policy"),
        ("approval_denied", "the refund the reviewer denied (agentrt approvals list --status all)"),
        ("budget_exhausted", "a run its budget stopped"),
        ("invalid_proposal", "invalid model arguments, refused before policy"),
    ):
        run = report.first(kind)
        if run is not None:
            lines += [f"  [dim]# {why}[/]", f"  {prefix}agentrt trace {run.run_id}"]
    lines += [
        "  [dim]# every run of a tenant; then runs show RUN_ID[/]",
        f"  {prefix}agentrt runs list --tenant initech",
    ]
    if report.flower_url:
        lines.append(f"Flower for this demo: {report.flower_url}")
    else:
        lines += [
            "Flower: [bold]agentrt demo --flower[/] keeps Flower and this demo's workers up "
            "until Ctrl-C;",
            "for your own workers: [bold]agentrt worker[/] and [bold]agentrt flower[/] "
            "(make worker / make flower), then open http://127.0.0.1:5555",
        ]
    return lines


def print_summary(report: DemoReport, console: Console) -> None:
    console.print()
    console.print(_by_reason_table(report))
    console.print(_tenant_route_table(report))
    console.print(_spend_table(report))
    console.print(_tools_table(report))
    console.print(review.approvals_table(report.approvals))
    console.print(review.latency_line(report.approvals))
    if report.rollout is not None:
        print_rollout(report.rollout, console)
    if report.knowledge is not None:
        print_knowledge(report.knowledge, console)
    for line in _checks(report):
        console.print(line)
    console.print(
        f"\n{len(report.runs)} runs finished in {report.elapsed_s:.1f}s "
        f"(namespace {report.namespace}). Look closer:"
    )
    for line in _hints(report):
        console.print(line)
