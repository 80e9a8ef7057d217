"""What Celery, and so Flower, records for a step task: the truth about its step.

Flower's task states come from the worker's task events and the task's return value or
exception. The runtime decides a step's fate itself (it retries a call through its own
scheduler, dead-letters a run, ends it failed), so a task that returned normally in every
case showed a dead-lettered step as SUCCESS and each retry as a new SUCCESS. Here a step's
result becomes how its task ends:

* the run ended ``failed`` (``dead_lettered:<class>``, ``failed:<class>``, ``timed_out``...):
  FAILURE, raising ``StepDeadLettered`` or ``StepFailed`` with the run id, step and stop
  reason. The runtime has already recorded it; ``tasks.steps._on_failure`` skips these, and
  the task lists them in ``throws`` (logged without a traceback, not sent to Sentry: the
  dead letter is reported as its own event).
* a call the runtime retries later (``tool_retry``/``proposer_retry``): RETRY, raising
  ``celery.exceptions.Retry`` whose ``exc`` is ``StepRetrying``. Raised, not
  ``Task.retry()``: the worker acks the message (acks_late), sends ``task-retried`` and
  publishes nothing (celery.worker.request.Request.on_retry); the runtime's scheduler
  re-dispatches the call as the run's next step (a task of its own), so nothing runs twice.
* anything else: SUCCESS, returning ``summary()`` (run id, step, outcome, stop reason).
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Retry

from runtime.contract import RunStatus
from runtime.errors import StepDeadLettered, StepFailed, StepRetrying
from runtime.scheduling.scheduler import Item
from runtime.step.state import StepResult
from runtime.step_record import StepOutcome, outcome_of

#: outcomes whose call the runtime tries again after a backoff (``runtime.step.outcomes``)
RETRY_OUTCOMES = frozenset({StepOutcome.TOOL_RETRY, StepOutcome.PROPOSER_RETRY})


def summary(item: Item, result: StepResult) -> dict[str, Any]:
    """A successful step task's return value (Flower shows it as the task's result)."""
    # the outcome first: log readers match "succeeded in ...: {'outcome': ..."
    return {
        "outcome": result.outcome,
        "run_id": item.run_id,
        "step": item.step_no,
        "stop_reason": result.stop_reason,
        "next_step": result.next_step,
    }


def ending(item: Item, result: StepResult) -> StepFailed | Retry | None:
    """The exception the step task ends with, or None: it returns (SUCCESS)."""
    if result.run_status == RunStatus.FAILED.value:
        reason = result.stop_reason or RunStatus.FAILED.value
        kind, _, detail = reason.partition(":")
        failed = StepDeadLettered if kind == "dead_lettered" else StepFailed
        return failed(item.run_id, item.step_no, reason, detail or kind)
    if (
        outcome_of(result.outcome) in RETRY_OUTCOMES
        and result.next_step is not None
        and result.countdown_s is not None
    ):
        cause = StepRetrying(
            item.run_id, item.step_no, result.outcome, result.next_step, result.countdown_s
        )
        return Retry(str(cause), exc=cause, when=result.countdown_s)
    return None
