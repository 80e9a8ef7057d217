"""What the read-only commands read: SQL, and nothing else they do not need.

``runs list``, ``runs show``, ``trace`` and ``dlq list/show/stats/audit`` build only the
store, from the database URL: no Redis connection, no embedded redis-server started, no
scheduler config published, no tool modules or model clients imported. The one exception
is ``dlq stats``, which shows the Redis counters for alerting next to the SQL counts when a
Redis is at hand (``AGENTRT_REDIS_URL``, or an embedded server some other process already
runs); it never starts one.

Two readers: ``Reads``, the SQL store (SQLAlchemy) and the pydantic views, for ``--json``
and the dead letters; and ``PlainViews``, for what ``runs list``, ``runs show`` and ``trace``
show people: the same rows read on the DB-API driver (``runtime.store.plain``), shown by the
same field rule (``runtime.run_rows``), with neither SQLAlchemy, pydantic nor the settings
class imported. This module imports neither at its top either: every command imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from runtime.run_rows import VIEW_COLUMNS, PlainRun, TraceLine, plain_run, trace_lines

if TYPE_CHECKING:
    from runtime.approvals import ApprovalReads
    from runtime.cli.render import RunLike, TraceLike
    from runtime.contract import RunView, TraceEvent
    from runtime.settings import Settings
    from runtime.store.dead_letters import DeadLetterStore
    from runtime.store.plain import PlainReads
    from runtime.store.runs import RunStore


def _no_input(value: Any) -> None:
    """Views for people do not show the input: leave it out rather than redact it."""
    return None


@dataclass(frozen=True)
class Counter:
    """A dead-letter queue's Redis counter and stream, for alerting."""

    key: str
    stream: str
    open: int
    stream_length: int


R = TypeVar("R", bound="RunLike", covariant=True)
T = TypeVar("T", bound="TraceLike", covariant=True)


@dataclass(frozen=True)
class Details(Generic[R]):
    """What ``runs show`` shows of a run."""

    run: R
    steps: list[dict[str, Any]]
    spend: dict[str, int]
    effects: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


class RunReads(Protocol[R, T]):
    """What the views for people read; ``Reads`` and ``PlainViews`` both do."""

    def run(self, run_id: str, tenant: str | None = None) -> R: ...

    def runs(
        self, tenant: str | None, status: str | None, route: str | None, limit: int
    ) -> Sequence[R]: ...

    def trace(self, run_id: str, tenant: str | None = None) -> Sequence[T]: ...

    def details(self, run_id: str, tenant: str | None = None) -> Details[R]: ...


class Reads:
    """The SQL store of a deployment, read-only (schema created if the database is new).

    Run views are built as the service builds them (``runtime.run_views``). Their input is
    left out unless ``with_input`` (``--json``): showing it means redacting the secret
    arguments of the tools it calls, so only then are the deployment file and its tool
    modules loaded; if they cannot be, the input is not shown (fail closed)."""

    def __init__(self, settings: Settings) -> None:
        from runtime.store.db import default_sqlite_url, make_engine
        from runtime.store.dead_letters import DeadLetterStore
        from runtime.store.runs import RunStore

        self.settings = settings
        url = settings.database_url or default_sqlite_url(settings.home)
        self.store: RunStore = RunStore(make_engine(url))
        self.store.create_schema()
        self.dead_letters: DeadLetterStore = DeadLetterStore(self.store)
        self._shown_input: Callable[[Any], Any] | None = None

    def close(self) -> None:
        self.store.engine.dispose()

    @property
    def approvals(self) -> ApprovalReads:
        """``rt.approvals``' reads over this store (``agentrt approvals list/show/stats``)."""
        from runtime.approvals import ApprovalReads
        from runtime.store.approvals import ApprovalStore

        return ApprovalReads(store=ApprovalStore(self.store.engine))

    # --- runs ----------------------------------------------------------------------------
    def run(self, run_id: str, tenant: str | None = None, *, with_input: bool = False) -> RunView:
        return self._view(self.store.read_run(run_id, tenant), with_input)

    def runs(
        self,
        tenant: str | None,
        status: str | None,
        route: str | None,
        limit: int,
        *,
        with_input: bool = False,
    ) -> list[RunView]:
        rows = self.store.list_runs(tenant, status, route, limit)
        return [self._view(r, with_input) for r in rows]

    def trace(self, run_id: str, tenant: str | None = None) -> list[TraceEvent]:
        from runtime.contract import TraceEvent
        from runtime.run_rows import trace_fields

        self.store.read_run(run_id, tenant)  # RunNotFound (or wrong tenant) before an empty list
        return [
            TraceEvent(**trace_fields(e, i)) for i, e in enumerate(self.store.trace(run_id, tenant))
        ]

    def details(
        self, run_id: str, tenant: str | None = None, *, with_input: bool = False
    ) -> Details[RunView]:
        return Details(
            self.run(run_id, tenant, with_input=with_input),
            self.store.steps(run_id, tenant),
            self.store.spend(run_id=run_id),
            self.store.side_effects(run_id=run_id),
            self.store.policy_decisions(run_id),
        )

    def _view(self, row: dict[str, Any], with_input: bool) -> RunView:
        from runtime.run_views import run_view

        return run_view(row, self._input_redactor() if with_input else _no_input)

    def _input_redactor(self) -> Callable[[Any], Any]:
        if self._shown_input is None:
            from runtime import proposals
            from runtime.config import load_config
            from runtime.tools.registry import ToolRegistry

            try:
                config = load_config(self.settings.config)
                registry = ToolRegistry.from_modules(config.tool_modules)
            except Exception as exc:  # the view says "could not be shown (<type>)"
                problem = exc

                def withheld(value: Any) -> Any:
                    raise problem

                self._shown_input = withheld
            else:
                self._shown_input = lambda value: proposals.shown_input(value, registry)
        return self._shown_input

    # --- dead letters ----------------------------------------------------------------------
    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        entry = self.dead_letters.get(entry_id)
        if entry is None:
            from runtime.dead_letters import DeadLetterNotFound

            raise DeadLetterNotFound(entry_id)
        return entry

    def counters(self, queues: list[str]) -> dict[str, Counter] | str:
        """Each queue's Redis counter and stream length, or why they were not read."""
        url = self._redis_at_hand()
        if url is None:
            return "no Redis running (AGENTRT_REDIS_URL unset, embedded server not started)"
        import redis

        from runtime.keys import Keys

        keys = Keys(self.settings.namespace)
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.get(keys.dlq_open(queue))
                    pipe.xlen(keys.dlq_stream(queue))
                values = pipe.execute()
        except redis.RedisError as exc:
            return f"Redis unreachable: {exc}"
        finally:
            client.close()
        return {
            queue: Counter(
                keys.dlq_open(queue),
                keys.dlq_stream(queue),
                int(values[2 * i] or 0),
                int(values[2 * i + 1]),
            )
            for i, queue in enumerate(queues)
        }

    def _redis_at_hand(self) -> str | None:
        if self.settings.redis_url:
            return self.settings.redis_url
        from runtime.embedded_redis import running_embedded

        server = running_embedded(self.settings.home)
        return server.url if server else None


class PlainViews:
    """What ``runs list``, ``runs show`` and ``trace`` show people, read on the DB-API
    driver: ``Reads``'s rows and values without SQLAlchemy or pydantic (tested)."""

    def __init__(self, reads: PlainReads) -> None:
        self.reads = reads

    def close(self) -> None:
        self.reads.close()

    def run(self, run_id: str, tenant: str | None = None) -> PlainRun:
        return plain_run(self.reads.read_run(run_id, tenant, VIEW_COLUMNS))

    def runs(
        self, tenant: str | None, status: str | None, route: str | None, limit: int
    ) -> list[PlainRun]:
        rows = self.reads.list_runs(tenant, status, route, limit, VIEW_COLUMNS)
        return [plain_run(r) for r in rows]

    def trace(self, run_id: str, tenant: str | None = None) -> list[TraceLine]:
        self.reads.read_run(run_id, tenant, ("run_id",))  # RunNotFound before an empty list
        return trace_lines(self.reads.trace(run_id, tenant))

    def details(self, run_id: str, tenant: str | None = None) -> Details[PlainRun]:
        return Details(
            self.run(run_id, tenant),
            self.reads.steps(run_id, tenant),
            self.reads.spend(run_id),
            self.reads.side_effects(run_id),
            self.reads.policy_decisions(run_id),
        )
