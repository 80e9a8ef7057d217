"""Recognise a database an older agentrt made with ``create_all`` (tables, no version).

It holds the baseline when it has every baseline table and column; each later revision
says (``adopted(inspector)``) whether the database already has what that revision makes.
The database is at the last revision of the unbroken run of those that say yes: it is
stamped there and upgraded, and since every revision after the baseline looks before it
changes anything, whatever of a later revision it already has is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import Inspector

from runtime.store.migrations import BASELINE


@dataclass(frozen=True)
class Recognised:
    #: the newest revision the database fully holds; None: older than the baseline
    revision: str | None
    #: what it lacks of the baseline (when ``revision`` is None)
    missing: list[str] = field(default_factory=list)


def _module(script: ScriptDirectory, revision: str) -> Any:
    found = script.get_revision(revision)
    assert found is not None, revision
    return found.module


def recognise(inspector: Inspector, script: ScriptDirectory) -> Recognised:
    missing: list[str] = _module(script, BASELINE).missing(inspector)
    if missing:
        return Recognised(None, missing)
    # oldest first, the baseline excluded
    later = [s.revision for s in reversed(list(script.walk_revisions())) if s.down_revision]
    revision = BASELINE
    for candidate in later:
        if not _module(script, candidate).adopted(inspector):
            break
        revision = candidate
    return Recognised(revision)
