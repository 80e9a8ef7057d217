"""What the read-only commands read: SQL, and nothing else they do not need.

``runs list``, ``runs show``, ``trace`` and ``dlq list/show/stats/audit`` build only the
store, from the database URL: no Redis connection, no embedded redis-server started, no
scheduler config published, no tool modules or model clients imported. The one exception
is ``dlq stats``, which shows the Redis counters for alerting next to the SQL counts when a
Redis is at hand (``AGENTRT_REDIS_URL``, or an embedded server some other process already
runs); it never starts one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.contract import RunView, TraceEvent
from runtime.settings import Settings
from runtime.store.db import default_sqlite_url, make_engine
from runtime.store.dead_letters import DeadLetterStore
from runtime.store.runs import RunStore

#: the step queue (``tasks.app.STEP_QUEUE``, ``runtime.dead_letters.STEP_QUEUE``), named
#: here so that showing dead letters does not import the step loop
STEP_QUEUE = "agentrt.steps"


def run_view(row: dict[str, Any]) -> RunView:
    """A stored run as the contract (what ``RuntimeService.get`` returns for it)."""
    fields = {name: row[name] for name in RunView.model_fields if name in row}
    return RunView.model_validate({**fields, "steps": row["next_step"]})


@dataclass(frozen=True)
class Counter:
    """A dead-letter queue's Redis counter and stream, for alerting."""

    key: str
    stream: str
    open: int
    stream_length: int


class Reads:
    """The SQL store of a deployment, read-only (schema created if the database is new)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = settings.database_url or default_sqlite_url(settings.home)
        self.store = RunStore(make_engine(url))
        self.store.create_schema()
        self.dead_letters = DeadLetterStore(self.store)

    def close(self) -> None:
        self.store.engine.dispose()

    # --- runs ----------------------------------------------------------------------------
    def run(self, run_id: str, tenant: str | None = None) -> RunView:
        return run_view(self.store.get_run(run_id, tenant))

    def runs(
        self, tenant: str | None, status: str | None, route: str | None, limit: int
    ) -> list[RunView]:
        return [run_view(r) for r in self.store.list_runs(tenant, status, route, limit)]

    def trace(self, run_id: str, tenant: str | None = None) -> list[TraceEvent]:
        return [
            TraceEvent(
                run_id=e["run_id"],
                trace_id=e["trace_id"],
                step=e["step_no"],
                seq=i,
                at=e["at"],
                kind=e["kind"],
                data=e["data"] or {},
            )
            for i, e in enumerate(self.store.trace(run_id, tenant))
        ]

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
