"""Protocols the domain is handed by an entry point, so ``runtime/`` never imports the
Celery edge (``tasks/``): the entry point builds the implementation and passes it down."""

from __future__ import annotations

from typing import Any, Protocol

from runtime.scheduling.scheduler import Item


class StepPublisher(Protocol):
    """Hands a dispatched step to the workers; only steps the scheduler dispatched are
    published. ``AGENTRT_PUBLISHER`` names the factory that builds it (default
    ``tasks.producer:publisher_for``, a ``tasks.publish.CeleryPublisher``)."""

    def publish(self, item: Item) -> None: ...

    def redeclare(self) -> None:
        """Declare the step queue again (after Redis lost its data, a broker may drop
        publishes to a queue whose binding is gone)."""


class StepMessages(Protocol):
    """How the workers' transport names a step: queue, task names and the message an
    operator reads in a dead-letter entry. ``tasks.messages`` owns the Celery names."""

    #: the queue steps are sent to (and whose dead-letter queue holds their entries)
    queue: str
    #: the task that runs a step
    step_task: str
    #: the name a failed compensation's entry is filed under
    compensate_task: str

    def task_id(self, run_id: str, step_no: int) -> str: ...

    def describe(self, run: dict[str, Any], step_no: int) -> dict[str, Any]:
        """The step's message as the publisher sends it."""
        ...
