"""Celery beat for the deployment's schedules, and the task that fires one.

``agentrt beat`` (``celery -A tasks.app beat``) builds its schedule from the config's
``schedules:``: one entry per enabled schedule, due at the times its cron expression
names, read by the same parser as the domain (``runtime.cron``: no second reading of the
expression by Celery's ``crontab``). Each entry sends ``agentrt.fire_schedule`` with the
schedule's name only; the task asks ``runtime.schedules`` to fire the latest due time, so
what a message says can never name a time twice.

Beat keeps its schedule in memory (``celery.beat:Scheduler``: no shelve file, which would
be a pickle). At start it sends one firing per enabled schedule: the latest time missed
while no beat ran fires then, once, if within the schedule's ``misfire_grace_s`` (a time
that fired already returns its run). Run one beat per deployment; a second one only sends
duplicates that fire nothing new. Restart beat after ``agentrt config apply`` changes
``schedules:``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import signals
from celery.schedules import BaseSchedule, schedstate

from runtime.config import RuntimeConfig, ScheduleConfig
from runtime.errors import AgentRuntimeError
from runtime.schedules import ScheduleFirer, next_fire
from tasks.host import RuntimeHost
from tasks.messages import FIRE_SCHEDULE_TASK, STEP_QUEUE

log = logging.getLogger("agentrt.schedules")

#: beat wakes up at least this often (a schedule's next time is computed each wake-up)
BEAT_MAX_INTERVAL_S = 60.0


class CronSchedule(BaseSchedule):  # type: ignore[misc]
    """A beat schedule due at the times a ``ScheduleConfig``'s cron expression names."""

    def __init__(self, schedule: ScheduleConfig, app: Any = None) -> None:
        super().__init__(app=app)
        self.schedule = schedule

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return next_fire(self.schedule, _aware(last_run_at)) - self._now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self._now()
        due = next_fire(self.schedule, _aware(last_run_at))
        if due <= now:
            return schedstate(True, (next_fire(self.schedule, now) - now).total_seconds())
        return schedstate(False, (due - now).total_seconds())

    def __repr__(self) -> str:
        return f"<CronSchedule {self.schedule.cron!r} {self.schedule.timezone}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronSchedule) and other.schedule == self.schedule

    __hash__ = None  # type: ignore[assignment]


def _aware(at: datetime) -> datetime:
    # beat's own times are aware (UTC); an entry never run yet may carry a naive one
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def entry_name(name: str) -> str:
    return f"agentrt.schedule.{name}"


def beat_schedule(config: RuntimeConfig) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for the enabled schedules of ``config``."""
    return {
        entry_name(name): {
            "task": FIRE_SCHEDULE_TASK,
            "schedule": CronSchedule(schedule),
            "kwargs": {"name": name},
            # a message older than the grace could only be skipped by the task
            "options": {"queue": STEP_QUEUE, "expires": schedule.misfire_grace_s},
        }
        for name, schedule in sorted(config.schedules.items())
        if schedule.enabled
    }


def register(app: RuntimeHost) -> None:
    app.conf.beat_schedule = beat_schedule(app.agentrt_config)
    app.conf.beat_scheduler = "celery.beat:Scheduler"
    app.conf.beat_max_loop_interval = BEAT_MAX_INTERVAL_S
    # no result backend: beat must not schedule Celery's result clean-up task
    app.conf.result_expires = None

    @app.task(name=FIRE_SCHEDULE_TASK, acks_late=True, ignore_result=True)
    def fire_schedule(*args: Any, **kwargs: Any) -> dict[str, Any]:
        name = kwargs.get("name")
        if args or not isinstance(name, str) or set(kwargs) != {"name"}:
            log.error("a fire_schedule message takes name= only: %r %r", args, kwargs)
            return {"outcome": "invalid_payload"}
        svc = app.runtime_service()
        try:
            firing = ScheduleFirer(schedules=svc.config.schedules, submit=svc.submit).fire_due(name)
        except AgentRuntimeError as exc:  # an unknown schedule, a conflicting request
            log.error("schedule %r did not fire: %s", name, exc)
            return {"outcome": "error", "error": str(exc)}
        log.info("schedule %s: %s", name, firing.as_dict())
        return {"outcome": firing.skipped or "fired", **firing.as_dict()}

    @signals.beat_init.connect(weak=False)
    def _catch_up(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        # the latest time missed while no beat ran (the task skips it past the grace)
        for name, schedule in sorted(app.agentrt_config.schedules.items()):
            if schedule.enabled:
                sender.app.send_task(
                    FIRE_SCHEDULE_TASK,
                    kwargs={"name": name},
                    queue=STEP_QUEUE,
                    expires=schedule.misfire_grace_s,
                )
