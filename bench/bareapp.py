"""The bare-Celery baseline: agentrt's exact broker configuration and a no-op task.

``celery -A bench.bareapp worker`` builds the app from the same ``AGENTRT_*`` settings and
the same ``tasks.app.celery_config`` as the runtime worker (acks_late, prefetch 1, JSON,
transport options, task events, queue), so the only difference from ``tasks.app`` is the
task body: one Redis ``INCR`` (the completion counter) instead of a runtime step.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery, Task

from runtime.config import load_config
from runtime.settings import Settings
from runtime.wiring import Endpoints, resolve_endpoints
from tasks.app import celery_config

NOOP_TASK = "bench.noop"


def counter_key(namespace: str) -> str:
    return f"{namespace}:bench:noop_done"


class BareCelery(Celery):  # type: ignore[misc]
    bench_redis_url: str
    bench_counter_key: str
    _bench_client: redis.Redis | None = None

    def counter_client(self) -> redis.Redis:
        # built lazily: in a prefork worker this runs in the child, after fork
        if self._bench_client is None:
            self._bench_client = redis.Redis.from_url(self.bench_redis_url)
        return self._bench_client


def create_bare_app(
    settings: Settings | None = None, endpoints: Endpoints | None = None
) -> BareCelery:
    settings = settings or Settings()
    config = load_config(settings.config)
    endpoints = endpoints or resolve_endpoints(settings)
    app = BareCelery("agentrt-bare", set_as_current=False)
    app.conf.update(celery_config(settings, config, endpoints))
    app.bench_redis_url = endpoints.redis_url
    app.bench_counter_key = counter_key(settings.namespace)

    # same task options as tasks/steps.py's step task
    @app.task(  # type: ignore[untyped-decorator]
        name=NOOP_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        retry_on_worker_lost=True,
        max_retries=settings.worker_lost_retries,
        default_retry_delay=settings.worker_lost_retry_delay_s,
    )
    def noop(
        self: Task,
        run_id: str,
        step: int,
        tenant: str = "",
        route: str = "",
        priority: str = "normal",
    ) -> dict[str, Any]:
        app.counter_client().incr(app.bench_counter_key)
        return {"outcome": "noop", "next_step": None}

    return app


_default_app: BareCelery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A bench.bareapp` looks up `app`; build it on first use, not at import
    global _default_app
    if name in ("app", "celery"):
        if _default_app is None:
            _default_app = create_bare_app()
        return _default_app
    raise AttributeError(name)
