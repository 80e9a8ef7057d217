"""Test support: a deployment (settings + service) and real worker subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from runtime.contract import RunView
from runtime.service import RuntimeService
from runtime.settings import Settings
from runtime.wiring import Runtime

ROOT = Path(__file__).resolve().parent.parent

#: test routes have step_timeout_s 10: the visibility timeout must exceed 10 + 15 + 30
TEST_VISIBILITY_TIMEOUT_S = 60


def pg_schema_url(base: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use their own, freshly created schema."""
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    options = urllib.parse.quote(f"-csearch_path={schema}")
    sep = "&" if "?" in base else "?"
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}{sep}options={options}"


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        # a killed child stays listed (state Z) until its parent reaps it: not a live one
        if int(ppid) == pid and state != "Z":
            out.append(int(entry))
    return out


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        return child_pids(self.proc.pid)

    def kill_children(self) -> list[int]:
        """SIGKILL the pool processes (Celery replaces them and re-sends their steps)."""
        pids = self.children()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def kill_all(self) -> None:
        """SIGKILL the whole worker: main process and pool, nothing gets to clean up."""
        pids = [self.proc.pid, *self.children()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        children = self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Deployment:
    name: str
    settings: Settings
    env: dict[str, str]
    home: Path
    svc: RuntimeService
    workers: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        *,
        name: str,
        redis_url: str,
        database_url: str,
        config: Path,
        home: Path,
        extra_env: dict[str, str] | None = None,
        apply_config: bool = True,
    ) -> Deployment:
        namespace = f"t{name}{uuid.uuid4().hex[:6]}"
        env = {
            "AGENTRT_REDIS_URL": redis_url,
            "AGENTRT_DATABASE_URL": database_url,
            "AGENTRT_CONFIG": str(config),
            "AGENTRT_NAMESPACE": namespace,
            "AGENTRT_HOME": str(home),
            "AGENTRT_VISIBILITY_TIMEOUT_S": str(TEST_VISIBILITY_TIMEOUT_S),
            "AGENTRT_UNACKED_RESTORE_INTERVAL_S": "1",
            "AGENTRT_WORKER_LOST_RETRY_DELAY_S": "0.2",
            "AGENTRT_TASK_EVENTS": "false",
            **(extra_env or {}),
        }
        settings = Settings(**{k[len("AGENTRT_") :].lower(): v for k, v in env.items()})
        svc = Runtime.from_settings(settings)
        if apply_config:
            # the deployment's config has one owner: the test applies it, as an operator would
            svc.apply_config("test")
        return cls(name=name, settings=settings, env=env, home=home, svc=svc)

    # --- workers ---------------------------------------------------------------------
    def start_worker(self, concurrency: int = 2, pool: str = "prefork") -> WorkerProcess:
        index = len(self.workers)
        name = f"{self.settings.namespace}-w{index}"
        log_path = self.home / f"{name}.log"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.app",
            "worker",
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        worker = WorkerProcess(name, proc, log_path)
        self.workers.append(worker)
        try:
            wait_for(
                lambda: "ready." in worker.log() or proc.poll() is not None,
                timeout=60,
                message=f"worker {name} to start",
            )
        except AssertionError:
            raise AssertionError(f"worker {name} did not start:\n{worker.log()[-3000:]}") from None
        if proc.poll() is not None:
            raise AssertionError(
                f"worker {name} exited with {proc.returncode}:\n{worker.log()[-3000:]}"
            )
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.svc.close()

    # --- runs ------------------------------------------------------------------------
    def submit_script(
        self, script: list[Any], *, tenant: str = "t1", route: str = "r.basic", **kw: Any
    ) -> RunView:
        return self.svc.submit(
            tenant,
            route,
            kw.pop("goal", "test run"),
            {"script": script},
            actor=kw.pop("actor", "tester"),
            **kw,
        )

    def wait_all(self, run_ids: list[str], timeout: float = 60.0) -> dict[str, RunView]:
        done: dict[str, RunView] = {}
        deadline = time.monotonic() + timeout
        pending = list(run_ids)
        while pending:
            statuses = self.svc.store.statuses(pending)
            still = []
            for run_id in pending:
                if statuses.get(run_id) in (
                    "succeeded",
                    "failed",
                    "refused",
                    "cancelled",
                    "waiting",
                ):
                    done[run_id] = self.svc.get(run_id)
                else:
                    still.append(run_id)
            pending = still
            if pending and time.monotonic() > deadline:
                logs = "\n".join(w.log()[-2000:] for w in self.workers)
                raise AssertionError(
                    f"{len(pending)} runs not finished after {timeout}s "
                    f"(e.g. {statuses.get(pending[0])}); worker logs:\n{logs}"
                )
            if pending:
                time.sleep(0.1)
        return done

    def counter(self, key: str) -> int:
        raw = self.svc.tool_redis.get(self.svc.keys.demo(f"counter:{key}"))
        return int(raw or 0)


def redis_now(client: Any) -> float:
    """The Redis server's clock, in seconds: the clock the scheduler's scripts age by."""
    sec, usec = client.time()
    return float(sec) + float(usec) / 1e6


def wait_until(client: Any, at: float, message: str) -> None:
    """Until the Redis clock passes ``at``: a wait on a condition about age (a step's
    enqueue time plus its max wait, say), not an assumption about speed."""
    wait_for(lambda: redis_now(client) > at, timeout=max(0.0, at - redis_now(client)) + 30,
             interval=0.05, message=message)  # fmt: skip


@dataclass
class Gate:
    """The test's side of ``probe.gate`` (tests/probe_tools.py).

    Every call of ``probe.gate`` with this key takes the next number of one global start
    order (a Redis INCR), so tests compare the order in which steps started, whatever the
    machine's speed. ``close_after(n)`` lets the first ``n`` calls through and holds the
    rest inside the tool (holding their pool processes) until ``open()``."""

    dep: Deployment
    key: str = field(default_factory=lambda: f"g{uuid.uuid4().hex[:8]}")

    def _k(self, name: str) -> str:
        return self.dep.svc.keys.demo(f"probe:{self.key}:{name}")

    def step(self) -> dict[str, Any]:
        """A scripted proposal calling the gate."""
        return {"type": "tool_call", "tool": "probe.gate", "args": {"key": self.key}}

    def close_after(self, calls: int) -> None:
        self.dep.svc.tool_redis.set(self._k("allow"), calls)

    def open(self) -> None:
        self.dep.svc.tool_redis.delete(self._k("allow"))

    def started(self) -> int:
        """Calls started so far (the last number taken)."""
        return int(self.dep.svc.tool_redis.get(self._k("seq")) or 0)

    def held(self) -> int:
        """Calls waiting at the closed gate now."""
        return int(self.dep.svc.tool_redis.get(self._k("held")) or 0)

    def order(self) -> dict[str, int]:
        """Run id -> the number of its first call (a redelivered call keeps the first)."""
        numbers: dict[str, int] = {}
        for raw in self.dep.svc.tool_redis.lrange(self._k("order"), 0, -1):
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            n, run_id = text.split("|", 1)
            numbers.setdefault(run_id, int(n))
        return numbers


@dataclass
class Hold:
    """The test's side of ``probe.held`` (tests/probe_tools.py): calls with this key take
    the lock ``held:<key>`` and stay inside while the hold is on, so a test waits for a
    state (another run finding the lock busy, a decision stored) before letting them go,
    instead of betting that it comes within a sleep."""

    dep: Deployment
    key: str = field(default_factory=lambda: f"h{uuid.uuid4().hex[:8]}")

    def _k(self, name: str) -> str:
        return self.dep.svc.keys.demo(f"probe:{self.key}:{name}")

    def step(self, tool: str = "probe.held") -> dict[str, Any]:
        """A scripted proposal calling ``tool`` (``probe.held*``, route r.held)."""
        return {"type": "tool_call", "tool": tool, "args": {"key": self.key}}

    def on(self) -> None:
        self.dep.svc.tool_redis.set(self._k("hold"), 1)

    def off(self) -> None:
        self.dep.svc.tool_redis.delete(self._k("hold"))

    def entered(self) -> int:
        """Calls that came inside so far."""
        return int(self.dep.svc.tool_redis.get(self._k("entered")) or 0)

    def count(self) -> int:
        """Effects ``probe.held_count`` made with this key (once per idempotency key)."""
        return int(self.dep.svc.tool_redis.get(self._k("count")) or 0)
