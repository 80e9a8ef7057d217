"""Cron expressions, read by ``cronsim`` (pure Python, no Celery): when a schedule fires.

An expression has 5 fields (minute hour day-of-month month day-of-week, as in Debian cron)
or 6, with a leading seconds field. Times are computed in the schedule's time zone (DST
as Debian cron handles it) and returned in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: the longest expression read (a list of every minute is about 170 characters)
MAX_CRON_CHARS = 200


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a cron expression this runtime fires (None: it is)."""
    if len(expr) > MAX_CRON_CHARS:
        return f"is {len(expr)} characters; at most {MAX_CRON_CHARS}"
    fields = expr.split()
    if len(fields) not in (5, 6):
        return (
            f"{expr!r} has {len(fields)} fields; a cron expression has 5 (minute hour "
            "day-of-month month day-of-week) or 6 (seconds first)"
        )
    try:
        next(CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC)))
    except (CronSimError, StopIteration) as exc:
        return f"{expr!r} is not a valid cron expression ({exc or 'it never fires'})"
    return None


def zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone (None: it is)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not a known IANA time zone (e.g. UTC, Europe/Paris)"
    return None


def _local(at: datetime, zone: str) -> datetime:
    if at.tzinfo is None:
        raise ValueError("a cron time needs an aware datetime")
    return at.astimezone(ZoneInfo(zone))


def latest_at_or_before(expr: str, zone: str, at: datetime) -> datetime:
    """The latest time ``expr`` names that is not after ``at`` (whole seconds), in UTC."""
    # cronsim's reverse iteration starts strictly before its start: start a second later
    start = _local(at, zone).replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(expr, start, reverse=True)).astimezone(UTC)


def next_after(expr: str, zone: str, at: datetime) -> datetime:
    """The first time ``expr`` names strictly after ``at``, in UTC."""
    start = _local(at, zone).replace(microsecond=0)
    return next(CronSim(expr, start)).astimezone(UTC)
