"""Replay eval fixtures through the real step code.

Each replay builds a runtime through ``runtime.wiring`` on the deployment's own Redis and
SQL server, isolated: a fresh key namespace and a scratch database (a SQLite file, or a
PostgreSQL schema), both removed afterwards, so budgets, leases and runs of the deployment
are never touched and replays never see each other. The run is admitted and its steps run
in this process on the ``sync`` path (``runtime.sync_runs``): no Celery worker is needed,
and a publisher that refuses keeps any step from reaching one (a replay that tried to hand
a step over is an error, not a pass).

What is replaced, and nothing else: every model becomes the ``scripted`` proposer fed the
recorded proposals (with their usage), and every tool is a replay tool that returns the
recorded result of that execution, in order, and never performs the side effect (its
compensation is a no-op too). A call with no recorded result fails (``replay_unrecorded``)
instead of calling the real tool. Policy, budgets, validation, retries, dead-lettering and
checkpoints are the real ones, under the config being evaluated.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import admission
from runtime.config import RuntimeConfig
from runtime.contract import TERMINAL_STATUSES, RunStatus
from runtime.endpoints import Endpoints
from runtime.errors import AgentRuntimeError, EvalError, ToolExecutionError, ToolTimeout
from runtime.evals.fixture import Expected, Fixture, ToolResult
from runtime.evals.outcome import differences, outcome_of
from runtime.locks.identity import Liveness
from runtime.scheduling.scheduler import Item, Ops
from runtime.service import RuntimeService
from runtime.settings import Settings
from runtime.store.scratch import scratch_database
from runtime.tools.registry import ToolRegistry, ToolSpec
from runtime.wiring import build_service

#: (config, route) -> the config a route's fixtures replay under (a candidate release)
ConfigTransform = Callable[[RuntimeConfig, str], RuntimeConfig]
#: (fixture name, execution index, recorded result, repeat index) -> the result to return;
#: tests use it to make a replay nondeterministic on purpose
ResultHook = Callable[[str, int, ToolResult, int], ToolResult]

_SETTLED = frozenset(s.value for s in TERMINAL_STATUSES | {RunStatus.WAITING})
#: the longest a replayed run may take in process (the sync path's bound)
REPLAY_TIMEOUT_S = 120.0
_LARGEST_INPUT = 16 * 1024 * 1024


@dataclass
class Replay:
    """One replay of one fixture."""

    fixture: Fixture
    repeat: int
    got: Expected | None = None
    diffs: list[str] = field(default_factory=list)
    #: the replay could not be carried out (that is a failure too)
    error: str | None = None
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.diffs


class _NoWorkers:
    """The replay's publisher: a step handed to workers is recorded, never sent."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def publish(self, item: Item) -> None:
        self.items.append(item)

    def redeclare(self) -> None:
        return None


class ReplayTools:
    """The registry one replay runs with: each tool answers from the fixture's recording,
    execution by execution, in the order the recorded run made them."""

    def __init__(
        self, registry: ToolRegistry, fixture: Fixture, repeat: int, hook: ResultHook | None
    ) -> None:
        self.real = registry
        self.fixture = fixture
        self.repeat = repeat
        self.hook = hook
        self._queue: deque[ToolResult] = deque(fixture.tool_results)
        self._count = 0

    def registry(self) -> ToolRegistry:
        return ToolRegistry(self._replaying(self.real.get(n)) for n in self.real.names())

    def _replaying(self, spec: ToolSpec | None) -> ToolSpec:
        assert spec is not None
        name, timeout_s = spec.name, spec.timeout_s

        def replay(args: Any, ctx: Any) -> Any:
            return self._answer(name, timeout_s)

        def undo(args: Any, result: Any, ctx: Any) -> None:
            return None  # the replayed call changed nothing: there is nothing to undo

        return dataclasses.replace(
            spec, fn=replay, compensate=undo if spec.compensate is not None else None
        )

    def _answer(self, tool: str, timeout_s: float) -> Any:
        if not self._queue or self._queue[0].tool != tool:
            raise ToolExecutionError(
                f"replay: no recorded result for this {tool} call; the real tool is not called",
                code="replay_unrecorded",
            )
        recorded = self._queue.popleft()
        index, self._count = self._count, self._count + 1
        if self.hook is not None:
            recorded = self.hook(self.fixture.name, index, recorded, self.repeat)
        if recorded.ok:
            return recorded.result
        if recorded.error_code == "tool_timeout":
            raise ToolTimeout(tool, timeout_s)
        raise ToolExecutionError(
            recorded.error or "recorded failure", code=recorded.error_code or "tool_error"
        )


def replay_config(config: RuntimeConfig) -> RuntimeConfig:
    """``config`` with what a replay needs in place of live model calls: every model
    scripted (same version and prices), every route's sync bound at its longest and its
    input limit at its largest (the recorded script rides in the input)."""
    models = {
        name: model.model_copy(update={"kind": "scripted"}) for name, model in config.models.items()
    }
    routes = {
        name: route.model_copy(
            update={"sync_timeout_s": REPLAY_TIMEOUT_S, "max_input_bytes": _LARGEST_INPUT}
        )
        for name, route in config.routes.items()
    }
    return config.model_copy(update={"models": models, "routes": routes})


class ReplayEngine:
    """Replays fixtures under ``config`` (or what ``config_transform`` derives from it per
    route) on the servers ``endpoints`` name."""

    def __init__(
        self,
        *,
        settings: Settings,
        endpoints: Endpoints,
        config: RuntimeConfig,
        registry: ToolRegistry,
        config_transform: ConfigTransform | None = None,
        result_hook: ResultHook | None = None,
        scratch_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.config = config
        self.registry = registry
        self.result_hook = result_hook
        self.config_transform = config_transform
        self.scratch_dir = scratch_dir or Path(tempfile.gettempdir())

    def config_for(self, route: str) -> RuntimeConfig:
        config = self.config
        if self.config_transform is not None:
            config = self.config_transform(config, route)
        return replay_config(config)

    def run(self, fixtures: list[Fixture], repeat: int = 1) -> list[list[Replay]]:
        """Every fixture ``repeat`` times: one list of replays per fixture, in order."""
        if not 1 <= repeat <= 100:
            raise EvalError(f"--repeat {repeat}: use 1 to 100")
        return [[self.replay(f, r) for r in range(repeat)] for f in fixtures]

    def replay(self, fixture: Fixture, repeat: int = 0) -> Replay:
        result = Replay(fixture=fixture, repeat=repeat)
        try:
            config = self.config_for(fixture.case.route)
        except Exception as exc:  # a candidate that cannot be derived fails its cases
            result.error = f"cannot derive the candidate config: {exc}"
            return result
        if fixture.case.route not in config.routes:
            result.error = f"route {fixture.case.route!r} is not in the config replayed under"
            return result
        with scratch_database(self.endpoints.database_url, self.scratch_dir) as database_url:
            self._replay_isolated(result, config, database_url)
        return result

    def _replay_isolated(self, result: Replay, config: RuntimeConfig, database_url: str) -> None:
        namespace = f"eval{uuid.uuid4().hex[:12]}"
        settings = self.settings.model_copy(update={"namespace": namespace})
        endpoints = dataclasses.replace(self.endpoints, database_url=database_url)
        publisher = _NoWorkers()
        tools = ReplayTools(self.registry, result.fixture, result.repeat, self.result_hook)
        svc = build_service(
            settings, config, endpoints=endpoints, registry=tools.registry(), publisher=publisher
        )
        try:
            svc.store.create_schema()
            svc.apply_config("evals")
            try:
                self._submit(result, svc, publisher)
            except AgentRuntimeError as exc:  # e.g. a request the candidate cannot take
                result.error = f"{type(exc).__name__}: {exc}"
        finally:
            Liveness.retire(svc.keys)
            try:
                keys = list(svc.redis.scan_iter(match=svc.keys.pattern(), count=1000))
                for start in range(0, len(keys), 500):
                    svc.redis.delete(*keys[start : start + 500])
            finally:
                svc.close()

    def _submit(self, result: Replay, svc: RuntimeService, publisher: _NoWorkers) -> None:
        fixture = result.fixture
        case = fixture.case
        req = admission.prepare(
            tenant=case.tenant,
            route=case.route,
            goal=case.goal,
            input={**case.input, "script": fixture.proposals},
            actor="evals",
            request_id=f"eval:{fixture.name}:{uuid.uuid4().hex[:8]}",
            idempotency_key=None,
            priority=None,
        )
        # the scheduler dispatches only within live worker capacity: this process is the
        # replay's one worker, for as long as a replay may take
        ttl_ms = int((REPLAY_TIMEOUT_S + 30) * 1000)
        svc.schedule(Ops().heartbeat(f"evals-{svc.keys.namespace}", 1, ttl_ms))
        admitted = svc.sync_runs.admit_and_run(req)
        run_id = str(admitted.row["run_id"])
        result.run_id = run_id
        run = svc.store.read_run(run_id)
        if publisher.items:
            result.error = f"the replay handed {len(publisher.items)} step(s) to workers"
        elif run["status"] not in _SETTLED:
            result.error = f"the replay did not finish in process (status {run['status']})"
        got = outcome_of(run, svc.store.trace(run_id), svc.store.spend(run_id=run_id))
        result.got = got
        result.diffs = differences(fixture.expected, got)
