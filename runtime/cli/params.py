"""Bounded option values: every number, duration, time and rate the CLI accepts.

A value outside its range is a usage error naming the option and the range (exit 2), never
an ``OverflowError`` deep inside ``timedelta``, SQLite or Redis. Integers use Typer's
``min``/``max`` (``click.IntRange``); floats use ``seconds`` here, because ``FloatRange``
lets ``nan`` and ``inf`` through. An echoed value is cut short: it may be kilobytes long.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

#: seconds ``submit --wait`` may wait
MAX_WAIT_S = 7 * 86400
#: seconds ``recover`` waits for steps in flight; the demo waits for its runs
MAX_LONG_WAIT_S = 86400
#: rows a listing shows
MAX_LIST = 10_000
#: entries one retry or purge acts on
MAX_BULK = 100_000
#: furthest back a duration (``--since 2h``) goes
MAX_BACK = timedelta(days=3650)
#: the times ``--since``/``--until`` accept
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
#: bulk retry rates, per second
MIN_RATE = 1 / 3600
MAX_RATE = 10_000.0
#: TCP ports
MIN_PORT, MAX_PORT = 1, 65535
#: worker pool processes
MAX_CONCURRENCY = 1024
#: pool processes of each demo worker
MAX_DEMO_POOL = 64


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def seconds(low: float, high: float) -> Callable[[Any], float]:
    """A parser for a number of seconds in ``[low, high]`` (no ``nan``, no ``inf``)."""

    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{shown(value)} is not a number of seconds") from None
        if not (math.isfinite(number) and low <= number <= high):
            raise typer.BadParameter(
                f"{shown(value)} is out of range: a number of seconds from {low:g} to {high:g}"
            )
        return number

    return parse


def percent(value: Any) -> float:
    """A share of runs: a number above 0 and at most 100 (no ``nan``, no ``inf``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{shown(value)} is not a percentage") from None
    if not (math.isfinite(number) and 0 < number <= 100):
        raise typer.BadParameter(f"{shown(value)} is out of range: above 0, at most 100")
    return number


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> timedelta:
    """A duration: 90s, 30m, 2h, 30d, 1w, 1h30m (more than 0, at most 3650d)."""
    compact = value.strip().replace(" ", "").lower()
    if not compact or _DURATION_PART.sub("", compact) != "":
        raise typer.BadParameter(f"{shown(value)} is not a duration (e.g. 30m, 12h, 30d)")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
    if not 0 < seconds <= MAX_BACK.total_seconds():
        raise typer.BadParameter(f"{shown(value)} is out of range: more than 0, at most 3650d")
    return timedelta(seconds=seconds)


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (naive means UTC) or a duration back from now: 90s, 30m, 2h, 7d,
    1w, 1h30m (at most 3650d). Returns an aware UTC datetime."""
    text = value.strip()
    compact = text.replace(" ", "").lower()
    if compact and _DURATION_PART.sub("", compact) == "":
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
        if not seconds <= MAX_BACK.total_seconds():  # also inf, from a 400-digit number
            raise typer.BadParameter(
                f"{shown(value)} is out of range: a duration goes back at most "
                f"{MAX_BACK.days}d ({MAX_BACK.days // 365} years)"
            )
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{shown(value)} is neither an ISO-8601 time (e.g. 2025-01-31T12:00:00Z) "
            "nor a duration back from now (e.g. 30m, 2h, 7d)"
        ) from None
    try:
        when = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        when = None
    if when is None or not EARLIEST <= when <= LATEST:
        raise typer.BadParameter(
            f"{shown(value)} is out of range: a time from "
            f"{EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)"
        )
    return when


def parse_past(value: str) -> datetime:
    """Like ``parse_when``, and not in the future (when something already happened)."""
    now = datetime.now(UTC)
    when = parse_when(value, now)
    if when > now:
        raise typer.BadParameter(f"{shown(value)} is in the future")
    return when


def parse_rate(value: str) -> float:
    """``N``, ``N/s``, ``N/m`` or ``N/h``: retries sent per second, from 1/h to 10000/s."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*", value)
    if not match:
        raise typer.BadParameter(f"{shown(value)} is not a rate such as 5/s, 300/m or 10")
    per = {"m": 60, "min": 60, "h": 3600, "hour": 3600}.get(match.group(2) or "s", 1)
    rate = float(match.group(1)) / per
    # a little slack: 1/h is 1/3600 per second, which floats do not hold exactly
    if not MIN_RATE * 0.999999 <= rate <= MAX_RATE:
        raise typer.BadParameter(
            f"{shown(value)} is out of range: a rate from 1/h to {MAX_RATE:g}/s"
        )
    return rate
