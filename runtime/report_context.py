"""What an error report may say about the step this thread runs, and what it must not.

The step loop notes the run it loaded (tenant, route, run, trace and step ids) and the
values of the current call's secret arguments; an error reporter (``runtime.error_reporting``)
reads them when it builds an event: the ids become tags, the values are cut out of every
string. Context variables, so each thread or task sees its own step; no reporting library
is imported here, so the step loop pays two assignments whether or not reporting is on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

_TAGS: ContextVar[Mapping[str, str]] = ContextVar(
    "agentrt_report_tags", default=MappingProxyType({})
)
_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("agentrt_report_secrets", default=())

#: the most secret values one step keeps (a call has a handful of arguments)
MAX_SECRETS = 32


def note_run(run: Mapping[str, Any], step_no: int | None) -> None:
    """The run a step works on: its ids tag any report made while it runs."""
    tags = {
        "tenant": run.get("tenant_id"),
        "route": run.get("route"),
        "run_id": run.get("run_id"),
        "trace_id": run.get("trace_id"),
        "step": step_no,
    }
    _TAGS.set({k: str(v) for k, v in tags.items() if v is not None})


def note_secrets(values: list[str]) -> None:
    """Values of the current call's secret arguments: no report may contain them."""
    if values:
        _SECRETS.set((*_SECRETS.get(), *values)[-MAX_SECRETS:])


def tags() -> Mapping[str, str]:
    return _TAGS.get()


def secrets() -> tuple[str, ...]:
    return _SECRETS.get()


def clear() -> None:
    """Drop what a step that raised left on this thread (``step_context`` keeps it for the
    report made after the step): a long-lived thread that made that report, or never
    will, starts its next work clean."""
    _TAGS.set({})
    _SECRETS.set(())


@contextmanager
def step_context() -> Iterator[None]:
    """One step's notes: a step starts clean, and what it noted does not outlive it (the
    next step of a chain, another task of the same process). When the step raises, the
    notes stay until the next step starts: the exception is reported after this block
    (Celery's error hooks run outside the task body), and must still be scrubbed."""
    tags_token = _TAGS.set({})
    secrets_token = _SECRETS.set(())
    yield
    _TAGS.reset(tags_token)
    _SECRETS.reset(secrets_token)


@contextmanager
def step_scope(*, tenant: str, route: str, run_id: str, step: int) -> Iterator[None]:
    """Around one step (``tasks.steps``): reports made while it runs, or about its failure
    after it, carry its ids. Kept here and not on a Sentry scope: Celery's integration
    reports a task's exception after the task body (and any scope opened in it) has exited,
    and the step loop adds the trace id once it has loaded the run (``note_run``)."""
    with step_context():
        note_run({"tenant_id": tenant or None, "route": route or None, "run_id": run_id}, step)
        yield
