"""Scheduled runs: a schedule of the deployment file fires by submitting a run.

Celery beat (``tasks.schedules``, ``agentrt beat``) sends ``agentrt.fire_schedule`` with a
schedule's name at each time its cron expression names; the task calls ``fire_due``
here, which submits through the façade's ``submit`` (the one admission path). Firing is
deterministic in the time fired, not in who fires:

* the time fired is the latest cron time not after "now" (``fire_time``);
* the run's request id is ``schedule:<name>@<time, UTC>``, so two beat processes, a
  restart, a redelivered message or a manual ``agentrt schedules fire`` for the same time
  all get the one run the first of them admitted (admission's unique request id);
* its actor is ``schedule:<name>``.

Missed firings (beat was down, a message waited in the queue): only the latest missed time
fires, once, and only within the schedule's ``misfire_grace_s``; older ones are skipped,
never replayed. A refused firing (``refused:queue_full``, a disabled tenant) is stored as
a refused run and, as every refusal, holds no request id: the next firing for the same
time is decided afresh. A time that fired before the file changed the schedule keeps its
run (``Firing.changed_since``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from runtime.config import ScheduleConfig
from runtime.contract import RunView
from runtime.cron import latest_at_or_before, next_after
from runtime.errors import AdmissionRefused, InvalidRequest


class Submit(Protocol):
    """The façade's ``submit``, as a schedule calls it."""

    def __call__(
        self,
        tenant: str,
        route: str,
        goal: str,
        input: dict[str, Any] | None = None,
        actor: str = ...,
        request_id: str | None = None,
    ) -> RunView: ...


#: the admitted run of (tenant, request id), or None
FindRun = Callable[[str, str], Mapping[str, Any] | None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def actor(name: str) -> str:
    return f"schedule:{name}"


def request_id(name: str, fire_time: datetime) -> str:
    """The request id of the run fired for ``fire_time``: one per (schedule, time)."""
    return f"schedule:{name}@{fire_time.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def fire_time(schedule: ScheduleConfig, at: datetime) -> datetime:
    """The latest time the schedule names that is not after ``at`` (UTC)."""
    return latest_at_or_before(schedule.cron, schedule.timezone, at)


def next_fire(schedule: ScheduleConfig, at: datetime) -> datetime:
    """The first time the schedule names after ``at`` (UTC)."""
    return next_after(schedule.cron, schedule.timezone, at)


@dataclass(frozen=True)
class Firing:
    """What one firing did: the run it submitted (or found), or why it was skipped."""

    schedule: str
    fire_time: datetime
    request_id: str
    run_id: str | None = None
    status: str | None = None
    #: ``disabled`` or ``missed`` (later than misfire_grace_s); None: fired
    skipped: str | None = None
    #: the time fired before under another goal, input or route (the file changed in
    #: between): ``run_id`` is that run; nothing new was submitted
    changed_since: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fire_time"] = self.fire_time.isoformat()
        return data


class ScheduleFirer:
    """Fires the deployment's schedules through ``submit``."""

    def __init__(
        self,
        *,
        schedules: Mapping[str, ScheduleConfig],
        submit: Submit,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._schedules = schedules
        self._submit = submit
        self._clock = clock

    def schedule(self, name: str) -> ScheduleConfig:
        """The schedule called ``name``; ``InvalidRequest`` naming the known ones if none."""
        found = self._schedules.get(name) if isinstance(name, str) else None
        if found is None:
            known = ", ".join(sorted(self._schedules)[:20]) or "none"
            raise InvalidRequest(("schedule",), f"unknown schedule {name!r} (defined: {known})")
        return found

    def fire_due(self, name: str) -> Firing:
        """Beat's firing: the latest due time, unless the schedule is disabled or that
        time is more than ``misfire_grace_s`` ago (skipped, not replayed)."""
        schedule, now = self.schedule(name), self._clock()
        when = fire_time(schedule, now)
        rid = request_id(name, when)
        if not schedule.enabled:
            return Firing(name, when, rid, skipped="disabled")
        if (now - when).total_seconds() > schedule.misfire_grace_s:
            return Firing(name, when, rid, skipped="missed")
        return self._fire(name, schedule, when)

    def fire_at(self, name: str, at: datetime | None = None) -> Firing:
        """An operator's firing (``agentrt schedules fire``): the latest time not after
        ``at`` (default now), however late; the same request id as beat's, so a time
        beat fired already returns beat's run. A disabled schedule, or a time still to
        come, is ``InvalidRequest``."""
        schedule, now = self.schedule(name), self._clock()
        if at is not None and at.tzinfo is None:
            raise InvalidRequest(("at",), "--at needs a time zone (e.g. 2026-01-01T09:00:00Z)")
        if at is not None and at > now:
            raise InvalidRequest(("at",), f"{at.isoformat()} has not come yet")
        if not schedule.enabled:
            raise InvalidRequest(("schedule",), f"schedule {name!r} is disabled")
        return self._fire(name, schedule, fire_time(schedule, at or now))

    def _fire(self, name: str, schedule: ScheduleConfig, when: datetime) -> Firing:
        rid = request_id(name, when)
        try:
            run = self._submit(
                tenant=schedule.tenant,
                route=schedule.route,
                goal=schedule.goal,
                input=dict(schedule.input),
                actor=actor(name),
                request_id=rid,
            )
        except AdmissionRefused as exc:
            # the time has its run already: a changed file does not make it fire twice
            if exc.code != "idempotency_conflict" or exc.run_id is None:
                raise
            return Firing(name, when, rid, run_id=exc.run_id, changed_since=True)
        return Firing(name, when, rid, run_id=run.run_id, status=str(run.status))


@dataclass(frozen=True)
class ScheduleStatus:
    """A schedule as ``agentrt schedules list`` shows it."""

    name: str
    cron: str
    timezone: str
    tenant: str
    route: str
    enabled: bool
    next_fire: datetime
    #: the latest due time and the run fired for it (None: not fired)
    last_fire: datetime
    last_run_id: str | None
    last_status: str | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_fire"] = self.next_fire.isoformat()
        data["last_fire"] = self.last_fire.isoformat()
        return data


def statuses(
    schedules: Mapping[str, ScheduleConfig], find_run: FindRun, now: datetime
) -> list[ScheduleStatus]:
    """Every schedule, by name, with its next time and the run of its latest due time
    (one unique-index lookup each)."""
    out = []
    for name in sorted(schedules):
        s = schedules[name]
        last = fire_time(s, now)
        run = find_run(s.tenant, request_id(name, last))
        out.append(
            ScheduleStatus(
                name=name,
                cron=s.cron,
                timezone=s.timezone,
                tenant=s.tenant,
                route=s.route,
                enabled=s.enabled,
                next_fire=next_fire(s, now),
                last_fire=last,
                last_run_id=None if run is None else str(run["run_id"]),
                last_status=None if run is None else str(run["status"]),
            )
        )
    return out
