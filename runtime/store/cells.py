"""Stored cells decoded as the store reads them, without SQLAlchemy.

SQLite hands JSON and timestamp columns back as text (timestamps as
``YYYY-MM-DD HH:MM:SS.ffffff``, UTC without an offset, as SQLAlchemy writes them);
PostgreSQL's driver decodes both itself. ``RunStore`` (SQLAlchemy) and ``PlainReads`` (the
DB-API drivers, for the CLI's views for people) decode them here, the same way: a cell that
does not decode is an ``Unreadable`` value in its row, never an error for every reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Unreadable:
    """A stored cell that does not decode (corrupt JSON, a malformed timestamp)."""

    raw: str


def decode(value: Any, *, json_column: bool) -> Any:
    """A JSON or timestamp cell SQLite returned as text; ``Unreadable`` if it is corrupt."""
    if not isinstance(value, str):
        return value
    try:
        if json_column:
            return json.loads(value)
        parsed = datetime.fromisoformat(value)
    except ValueError:  # JSONDecodeError too
        return Unreadable(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def in_utc(value: Any) -> Any:
    """A timestamp the driver decoded, in UTC (SQLModel's ``UTCDateTime`` on reading)."""
    if not isinstance(value, datetime):
        return value
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)
