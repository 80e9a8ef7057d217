"""The step task: a thin wrapper that calls the service and maps outcomes onto Celery."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis
from celery import Task, signals
from sqlalchemy.exc import OperationalError

from runtime.scheduling.scheduler import Item
from tasks.publish import STEP_TASK

if TYPE_CHECKING:
    from tasks.app import AgentrtCelery

log = logging.getLogger("agentrt.tasks")

#: infrastructure hiccups: retry the step (bounded) rather than fail the run
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError)


def register(app: AgentrtCelery) -> None:
    settings = app.agentrt_settings

    @app.task(
        name=STEP_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        retry_on_worker_lost=True,
        max_retries=settings.worker_lost_retries,
        default_retry_delay=settings.worker_lost_retry_delay_s,
    )
    def step(
        self: Task,
        run_id: str,
        step: int,
        tenant: str = "",
        route: str = "",
        priority: str = "normal",
    ) -> dict[str, Any]:
        svc = app.runtime_service()
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        attempt = int(self.request.retries or 0) + (1 if redelivered else 0)
        try:
            result = svc.run_step(Item(run_id, step, tenant, route, priority), attempt)
        except TRANSIENT as exc:
            log.warning("step %s/%s: transient error, retrying: %r", run_id, step, exc)
            raise self.retry(
                exc=exc, countdown=min(2 ** int(self.request.retries or 0), 30)
            ) from exc
        return {"outcome": result.outcome, "next_step": result.next_step}

    @signals.task_failure.connect(sender=step, weak=False)
    def _on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        kwargs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        # final failure (retries exhausted, hard time limit, worker lost too often, a bug):
        # the run must not stay "running" forever
        kwargs = kwargs or {}
        run_id, step_no = kwargs.get("run_id"), kwargs.get("step")
        if not run_id or step_no is None:
            return
        try:
            app.runtime_service().steps.fail_step(
                str(run_id), int(step_no), type(exception).__name__ if exception else "unknown"
            )
        except Exception:
            log.exception("could not record the failure of step %s/%s", run_id, step_no)
