"""The plain-FIFO baseline of bench/fairness.py: one Celery queue, no scheduler.

``celery -A bench.fifoapp worker`` builds the app from the same ``AGENTRT_*`` settings and
the same ``tasks.app.celery_config`` as the runtime worker (acks_late, prefetch 1, JSON,
transport options, task events, the one queue). The task records when it started, as
``<run_id>|<unix time>`` appended to a per-tenant list, and does nothing else: a waiting
task's wait is then exactly the time the queue ahead of it took to drain.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Task

from bench.bareapp import BareCelery
from runtime.config import load_config
from runtime.settings import Settings
from runtime.wiring import Endpoints, resolve_endpoints
from tasks.app import celery_config

FIFO_TASK = "bench.fifo"


def starts_key(namespace: str, tenant: str) -> str:
    return f"{namespace}:bench:fifo_started:{tenant}"


def create_fifo_app(
    settings: Settings | None = None, endpoints: Endpoints | None = None
) -> BareCelery:
    settings = settings or Settings()
    config = load_config(settings.config)
    endpoints = endpoints or resolve_endpoints(settings)
    app = BareCelery("agentrt-fifo", set_as_current=False)
    app.conf.update(celery_config(settings, config, endpoints))
    app.bench_redis_url = endpoints.redis_url
    namespace = settings.namespace

    # same task options as tasks/steps.py's step task
    @app.task(  # type: ignore[untyped-decorator]
        name=FIFO_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        retry_on_worker_lost=True,
        max_retries=settings.worker_lost_retries,
        default_retry_delay=settings.worker_lost_retry_delay_s,
    )
    def fifo(
        self: Task,
        run_id: str,
        step: int,
        tenant: str = "",
        route: str = "",
        priority: str = "normal",
    ) -> dict[str, Any]:
        started = time.time()
        app.counter_client().rpush(starts_key(namespace, tenant), f"{run_id}|{started:.6f}")
        return {"outcome": "noop", "next_step": None}

    return app


def send(app: BareCelery, tenant: str, route: str) -> tuple[str, float]:
    """Queue one task with the message shape of ``tasks.publish.CeleryPublisher``;
    returns (run id, unix time just before the publish)."""
    run_id = uuid.uuid4().hex
    sent = time.time()
    app.send_task(
        FIFO_TASK,
        kwargs={
            "run_id": run_id,
            "step": 0,
            "tenant": tenant,
            "route": route,
            "priority": "normal",
        },
        task_id=f"{run_id}-0",
        shadow=f"{FIFO_TASK}[{tenant}/{route}]",
        soft_time_limit=40,
        time_limit=50,
    )
    return run_id, sent


_default_app: BareCelery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A bench.fifoapp` looks up `app`; build it on first use, not at import
    global _default_app
    if name in ("app", "celery"):
        if _default_app is None:
            _default_app = create_fifo_app()
        return _default_app
    raise AttributeError(name)
