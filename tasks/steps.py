"""The step task: a thin wrapper that calls the façade (``run_step``) and maps outcomes
onto Celery.

A message whose kwargs name no valid step, or a run that does not exist, is dead-lettered
as ``poison`` and acknowledged (the task ends in FAILURE, ``MessagePoisoned``): never
executed, never lost. A step that fails for good outside the step loop lands in the
dead-letter queue too (``task_failure``): it hit its hard time limit (``timeout``), or
infrastructure errors outlasted their retries or a bug escaped (``exhausted``).

How the task ends tells Flower what the runtime did with the step (``tasks.verdicts``): a
run it ended failed (a dead letter included) is a FAILURE raising ``StepFailed`` (which
``_on_failure`` skips: nothing new to handle), a call it retries later is a RETRY raised
without ``self.retry`` (its scheduler re-dispatches it), anything else a SUCCESS.

A step whose pool process died (``WorkerLostError``) is not re-sent by Celery: the
scheduler's hand-back is the one path that brings it back. It sees the dead owner instance
(declared dead by the worker's main process, or its heartbeat expired when the whole worker
died), counts the death in one place (``keys.scheduler().deaths``) and publishes one new
copy, or dead-letters the step as ``worker_lost`` on its (AGENTRT_WORKER_LOST_RETRIES + 1)th
death (``RuntimeService.pump``). With Celery's ``retry_on_worker_lost`` as well, every death
brought two copies back: a Celery retry that started before the hand-back took over the dead
owner's record uncounted, and Celery counted only its own lineage of messages, so a step was
dead-lettered after 4 to 8 deaths instead of 4.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, signals
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import OperationalError

from runtime import report_context
from runtime.dead_letter_entries import format_exception
from runtime.errors import MessagePoisoned, RunNotFound, StepHandled
from runtime.scheduling.scheduler import Item
from runtime.step.chain import Chain
from runtime.step.state import StepResult
from tasks import verdicts
from tasks.host import RuntimeHost
from tasks.messages import STEP_QUEUE, STEP_TASK, step_id, step_kwargs

log = logging.getLogger("agentrt.tasks")

#: infrastructure hiccups: retry the step (bounded) rather than fail the run
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError)

#: a pool process died running the step: the scheduler's hand-back re-sends or dead-letters it
_WORKER_LOST = "WorkerLostError"

#: exception names (as Celery reports them) -> dead-letter class; anything else: exhausted
_DL_CLASSES = {
    "TimeLimitExceeded": "timeout",
    "SoftTimeLimitExceeded": "timeout",
}


class StepMessage(BaseModel):
    """The kwargs of a step message, checked before anything runs."""

    model_config = ConfigDict(extra="forbid")
    run_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    step: int = Field(ge=0, lt=1_000_000)
    tenant: str = Field(default="", max_length=100)
    route: str = Field(default="", max_length=100)
    priority: str = Field(default="normal", max_length=20)


def register(app: RuntimeHost) -> None:
    settings = app.agentrt_settings

    def poison(task: Task, error_type: str, error: str, kwargs: dict[str, Any]) -> MessagePoisoned:
        """Keep the message in the dead-letter queue; the exception the task ends with."""
        log.error("step message %s is poison (%s): %s", task.request.id, error_type, error)
        run_id = kwargs.get("run_id") if isinstance(kwargs.get("run_id"), str) else None
        entry_id = app.runtime_service().dead_letters.poison(
            queue=str((task.request.delivery_info or {}).get("routing_key") or STEP_QUEUE),
            error_type=error_type,
            error=error,
            message={
                "task": STEP_TASK,
                "id": task.request.id,
                "args": list(task.request.args or []),
                "kwargs": kwargs,
            },
            task_name=STEP_TASK,
            task_id=task.request.id,
            run_id=run_id,
        )
        return MessagePoisoned(str(task.request.id), error_type, error, entry_id)

    @app.task(
        name=STEP_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        # one re-send path for a dead pool process: the scheduler's hand-back (see above)
        retry_on_worker_lost=False,
        # bounds the transient-error retries below
        max_retries=settings.worker_lost_retries,
        # a step the runtime handled already (tasks.verdicts, poison): logged without a
        # traceback, and Sentry's Celery integration skips it
        throws=(StepHandled,),
        # a FAILURE (a dead-lettered step) is acked: the runtime decided it, never redeliver
        acks_on_failure=True,
    )
    def step(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args:
            raise poison(self, "invalid_payload", "a step takes keyword arguments only", kwargs)
        try:
            msg = StepMessage.model_validate(kwargs)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'kwargs'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise poison(self, "invalid_payload", problems, kwargs) from None
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        attempt = int(self.request.retries or 0) + (1 if redelivered else 0)
        first = Item(msg.run_id, msg.step, msg.tenant, msg.route, msg.priority)
        chain = app.runtime_service().new_chain(str(self.request.id), first)
        item: Item | None = first
        outcomes: list[str] = []
        while item is not None:
            if outcomes:
                # a chained step: a failure or a retry from here on is this step's
                self.request.kwargs = kwargs = step_kwargs(item)
            try:
                result = run_one(item, attempt if not outcomes else 0, chain)
            except RunNotFound as exc:
                raise poison(self, "unknown_run", str(exc), kwargs) from exc
            except TRANSIENT as exc:
                log.warning(
                    "step %s/%s: transient error, retrying: %r", item.run_id, item.step_no, exc
                )
                raise self.retry(
                    exc=exc, countdown=min(2 ** int(self.request.retries or 0), 30)
                ) from exc
            if not outcomes:
                done = verdicts.summary(item, result)
            outcomes.append(result.outcome)
            ending = verdicts.ending(item, result)
            if ending is not None:
                # Flower shows this step's FAILURE or RETRY (tasks.verdicts); a step kept
                # for this chain was dispatched and not run: publish it, or it would wait
                # for its lease to expire
                if result.kept is not None:
                    app.runtime_service().publish([result.kept])
                    log.info(
                        "step %s: published %s (kept for this task) before ending as %s",
                        step_id(item),
                        step_id(result.kept),
                        type(ending).__name__,
                    )
                raise ending
            item = result.kept
        if chain is not None and len(chain.steps) > 1:
            # shown by Flower as the task's result: which steps this task ran
            done["chained"] = [
                f"{step_id(s)}:{outcome}" for s, outcome in zip(chain.steps, outcomes, strict=True)
            ]
        return done

    def run_one(item: Item, attempt: int, chain: Chain | None) -> StepResult:
        with report_context.step_scope(
            tenant=item.tenant, route=item.route, run_id=item.run_id, step=item.step_no
        ):
            return run_step(item, attempt, chain)

    def run_step(item: Item, attempt: int, chain: Chain | None) -> StepResult:
        result = app.runtime_service().run_step(item, attempt, chain)
        if result.outcome == "config_changed":
            # a new config was applied: run the step under it, as every worker will
            if chain is not None:
                chain.steps.pop()  # it runs again, as the same link
            result = app.reload_runtime().run_step(item, attempt, chain)
        return result

    @signals.task_failure.connect(sender=step, weak=False)
    def _on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        kwargs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if isinstance(exception, StepHandled):
            # raised by the step itself, handled already (tasks.verdicts, poison)
            return
        # a final failure: the run must not stay "running" forever; it waits in the DLQ
        kwargs = kwargs or {}
        run_id, step_no = kwargs.get("run_id"), kwargs.get("step")
        if not isinstance(run_id, str) or not isinstance(step_no, int):
            return
        name = type(exception).__name__ if exception else "unknown"
        if name == "TimeLimitExceeded" and task_id:
            # reported by the main process, which knows only the message: a chain may have
            # moved on to another step (runtime.step.chain)
            chained = app.runtime_service().chained_step(task_id)
            if chained is not None:
                run_id, step_no = chained.run_id, chained.step_no
        if name == _WORKER_LOST:
            # Celery acked the message; the step keeps its slot and its dead owner record,
            # so the hand-back counts this death and re-sends (or dead-letters) it. A step
            # that died before it started has no owner: its slot lease expires and it is
            # queued again, as any dispatched step whose message was lost.
            log.warning(
                "step %s/%s: its pool process died; the scheduler hands it back", run_id, step_no
            )
            return
        try:
            app.runtime_service().dead_letters.dead_letter_step(
                run_id,
                step_no,
                _DL_CLASSES.get(name, "exhausted"),
                error_type=name,
                error=str(exception) if exception else None,
                traceback=format_exception(exception),
                task_id=task_id,
            )
        except Exception:
            log.exception("could not dead-letter step %s/%s", run_id, step_no)
