"""A route's memory rules (``routes.<name>.memory``) and the retention-class grammar.

A route without a ``memory`` block refuses every memory write (``memory_not_enabled``):
remembering is something a route opts into, never a default. Retention classes are
``run`` (kept until the run ends), ``<N>h`` / ``<N>d`` (kept that long after the write)
and ``permanent`` (kept until an operator forgets it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the longest duration a retention class may name (10 years): bounded like every number
MAX_RETENTION_DAYS = 3650
#: the largest memory a route may allow (the proposal's own cap is 64 KiB)
MAX_MEMORY_BYTES = 64 * 1024

_DURATION = re.compile(r"^([1-9][0-9]{0,5})([hd])$")

RetentionKind = Literal["run", "duration", "permanent"]


@dataclass(frozen=True)
class Retention:
    """A parsed retention class: how long a memory written under it is kept."""

    text: str
    kind: RetentionKind
    #: the duration of a ``<N>h``/``<N>d`` class (None for ``run`` and ``permanent``)
    ttl: timedelta | None = None


def parse_retention(text: str) -> Retention:
    """``run``, ``permanent``, ``<N>h`` or ``<N>d``; ``ValueError`` naming the grammar."""
    if text in ("run", "permanent"):
        return Retention(text, text)  # type: ignore[arg-type]
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"retention class {text[:40]!r} is not one of: run, permanent, <N>h, <N>d")
    n, unit = int(m.group(1)), m.group(2)
    ttl = timedelta(hours=n) if unit == "h" else timedelta(days=n)
    if ttl > timedelta(days=MAX_RETENTION_DAYS):
        raise ValueError(f"retention class {text!r} is longer than {MAX_RETENTION_DAYS}d")
    return Retention(text, "duration", ttl)


#: a namespace: lower-case words (also the policy's synthetic tool name ``memory:<ns>``)
Namespace = Annotated[str, Field(pattern=r"^[a-z0-9_.\-]{1,100}$")]


class MemoryRules(BaseModel):
    """What a route lets its runs remember."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: namespaces a write may name (at least one)
    namespaces: list[Namespace] = Field(min_length=1, max_length=100)
    #: retention classes a write may ask for (at least one)
    retention_classes: list[str] = Field(min_length=1, max_length=20)
    #: a write must name evidence retrieved in this run
    require_evidence: bool = False
    #: the largest content (UTF-8 bytes) a write may store
    max_bytes: int = Field(default=4096, ge=1, le=MAX_MEMORY_BYTES)
    #: refuse content that looks like a secret or personal data (``memory_screened``)
    screen: bool = True

    @field_validator("retention_classes")
    @classmethod
    def _classes_parse(cls, classes: list[str]) -> list[str]:
        for text in classes:
            parse_retention(text)
        if len(set(classes)) != len(classes):
            raise ValueError("retention_classes names a class twice")
        return classes

    @field_validator("namespaces")
    @classmethod
    def _namespaces_once(cls, namespaces: list[str]) -> list[str]:
        if len(set(namespaces)) != len(namespaces):
            raise ValueError("namespaces names a namespace twice")
        return namespaces
