"""Every Celery name agentrt uses: the step task, its queue, its message format.

The domain (``runtime/``) never spells them: it is handed ``STEP_MESSAGES`` (the
``runtime.ports.StepMessages`` protocol, named by ``AGENTRT_STEP_MESSAGES``) for what its
dead-letter entries record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the read-only CLI imports this module: it must stay light
    from runtime.scheduling.scheduler import Item

STEP_TASK = "agentrt.step"
#: the one small fixed queue steps go to; fairness is the scheduler's, not per-tenant queues
STEP_QUEUE = "agentrt.steps"
#: sent by beat (``tasks.schedules``) with a schedule's name: fire it
FIRE_SCHEDULE_TASK = "agentrt.fire_schedule"
#: what a failed compensation's dead-letter entry is filed under (no task runs it: an
#: operator's retry runs the compensation in the retrying process)
COMPENSATE_TASK = "agentrt.compensate"


def step_id(item: Item) -> str:
    """A step's task id: ``<run_id>-<step>`` (a redelivered step keeps its id)."""
    return task_id(item.run_id, item.step_no)


def task_id(run_id: str, step_no: int) -> str:
    return f"{run_id}-{step_no}"


def step_kwargs(item: Item) -> dict[str, Any]:
    """The kwargs of a step message (checked by ``tasks.steps.StepMessage``)."""
    return message_kwargs(item.run_id, item.step_no, item.tenant, item.route, item.priority)


def message_kwargs(
    run_id: str, step_no: int, tenant: str, route: str, priority: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step_no,
        "tenant": tenant,
        "route": route,
        "priority": priority,
    }


@dataclass(frozen=True)
class CeleryStepMessages:
    """``runtime.ports.StepMessages`` for the Celery transport."""

    queue: str = STEP_QUEUE
    step_task: str = STEP_TASK
    compensate_task: str = COMPENSATE_TASK

    def task_id(self, run_id: str, step_no: int) -> str:
        return task_id(run_id, step_no)

    def describe(self, run: dict[str, Any], step_no: int) -> dict[str, Any]:
        kwargs = message_kwargs(
            run["run_id"], step_no, run["tenant_id"], run["route"], run["priority"]
        )
        return {"task": self.step_task, "id": task_id(run["run_id"], step_no), "kwargs": kwargs}


STEP_MESSAGES = CeleryStepMessages()
