"""Publishing dispatched steps to Celery, named so Flower reads well.

Task id ``<run_id>-<step>``; the name shown in Flower and logs (``shadow``) is
``agentrt.step[<tenant>/<route>]`` and the kwargs carry tenant, route, priority and run id.
Only steps the scheduler dispatched are published (``runtime.scheduling``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.scheduling.scheduler import Item
from tasks.messages import STEP_TASK, step_id, step_kwargs

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["STEP_TASK", "CeleryPublisher", "step_id"]


class CeleryPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app
        config = getattr(app, "agentrt_config", None)
        #: route -> (soft, hard) time limit in seconds
        self._limits: dict[str, tuple[float, float]] = {}
        if config is not None:
            for name in config.routes:
                self._limits[name] = (config.soft_limit_s(name), config.hard_limit_s(name))

    def publish(self, item: Item) -> None:
        soft, hard = self._limits.get(item.route, (70.0, 80.0))
        self.app.send_task(
            STEP_TASK,
            kwargs=step_kwargs(item),
            task_id=step_id(item),
            shadow=f"{STEP_TASK}[{item.tenant}/{item.route}]",
            # soft limit: the step's own code sees SoftTimeLimitExceeded and fails cleanly;
            # hard limit: the pool child is killed and replaced
            soft_time_limit=soft,
            time_limit=hard,
        )

    def redeclare(self) -> None:
        """Declare the step queue again. Kombu's Redis transport routes through a binding
        key; after Redis lost its data, a publish would be dropped silently until a worker
        restarts, so ``agentrt recover`` calls this first."""
        with self.app.connection_for_write() as conn:
            for queue in self.app.conf.task_queues or []:
                queue.bind(conn.default_channel).declare()
