"""Trace events: one timeline per run, secrets redacted before anything is stored or logged."""

from __future__ import annotations

import functools
import re
from typing import Any

from runtime.store.db import utcnow

REDACTED = "[redacted]"

_SECRET_NAMES = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "auth",
        "cookie",
        "session",
        "credentials",
        "private_key",
        "access_token",
        "refresh_token",
        "client_secret",
        "card_number",
        "cvv",
        "ssn",
    }
)
_SECRET_SUFFIXES = (
    "_password",
    "_secret",
    "_token",
    "_api_key",
    "_apikey",
    "_key_secret",
    "_cookie",
)
# \b: a key starts a word ("ask-the-team-about-refunds" is not an OpenAI key)
_SECRET_VALUE = re.compile(
    r"\b(sk-[A-Za-z0-9_\-]{16,}|Bearer\s+[A-Za-z0-9._\-]{8,}|ghp_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})"
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=8192)
def _secret_name(name: str) -> bool:
    # cached: traces repeat the same few keys, and this runs for every key of every event
    low = name.lower()
    # camelCase and header spellings too: apiKey, accessToken, X-Api-Key -> api_key, ...
    snake = _CAMEL_BOUNDARY.sub("_", name).lower().replace("-", "_")
    return any(n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES) for n in (low, snake))


def secret_name(name: str) -> bool:
    """Does a key name look like it holds a secret (``password``, ``apiKey``, ``x_token``)?"""
    return _secret_name(name)


def _is_secret_name(name: str, extra: frozenset[str]) -> bool:
    if extra and (name in extra or name.lower() in {e.lower() for e in extra}):
        return True
    return _secret_name(name)


def redact(value: Any, extra_names: frozenset[str] = frozenset()) -> Any:
    """Copy of ``value`` with secret-looking keys and values replaced by ``[redacted]``."""
    if isinstance(value, dict):
        return {
            k: REDACTED
            if isinstance(k, str) and _is_secret_name(k, extra_names)
            else redact(v, extra_names)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, extra_names) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.search(value):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


class TraceBuffer:
    """Events of one step, written in the step's transaction."""

    def __init__(self, run_id: str, tenant_id: str, trace_id: str, step_no: int | None) -> None:
        self.run_id = run_id
        self.tenant_id = tenant_id
        self.trace_id = trace_id
        self.step_no = step_no
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, **data: Any) -> None:
        self.events.append(
            {
                "run_id": self.run_id,
                "tenant_id": self.tenant_id,
                "trace_id": self.trace_id,
                "step_no": self.step_no,
                "at": utcnow(),
                "kind": kind,
                "data": redact(data),
            }
        )

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events
