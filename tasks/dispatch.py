"""Sending steps to Celery, named so Flower reads well.

Task id ``<run_id>-<step>``; the name shown in Flower and logs (``shadow``) is
``agentrt.step[<tenant>/<route>]`` and the kwargs carry tenant, route and run id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.steps import StepAddress

if TYPE_CHECKING:
    from celery import Celery

    from runtime.service import RuntimeService

STEP_TASK = "agentrt.step"


def step_id(address: StepAddress) -> str:
    return f"{address.run_id}-{address.step_no}"


class CeleryDispatcher:
    def __init__(self, app: Celery, time_limit_s: dict[str, float] | None = None) -> None:
        self.app = app
        config = getattr(app, "agentrt_config", None)
        self._limits = time_limit_s or (
            {name: r.step_timeout_s for name, r in config.routes.items()} if config else {}
        )

    def enqueue(self, address: StepAddress, countdown: float | None = None) -> None:
        step_timeout = self._limits.get(address.route, 60.0)
        self.app.send_task(
            STEP_TASK,
            kwargs={
                "run_id": address.run_id,
                "step": address.step_no,
                "tenant": address.tenant_id,
                "route": address.route,
                "priority": address.priority,
            },
            task_id=step_id(address),
            shadow=f"{STEP_TASK}[{address.tenant_id}/{address.route}]",
            countdown=countdown,
            # soft limit: the step's own code sees SoftTimeLimitExceeded and fails cleanly;
            # hard limit: the pool child is killed and replaced
            soft_time_limit=step_timeout + 10,
            time_limit=step_timeout + 20,
        )


def dispatcher_for(svc: RuntimeService) -> CeleryDispatcher:
    """Default dispatcher for ``Runtime.from_env()``: a producer-only Celery app."""
    from tasks.app import create_app

    return CeleryDispatcher(create_app(svc.settings, svc.endpoints))
