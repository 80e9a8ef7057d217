"""A run's progress as Server-Sent Events, read through the Python API (``rt.get`` and
``rt.trace``): no HTTP API, no API key, the same tenant scoping.

Frames: every trace event once, in order, as a ``trace`` event (``id:`` its 1-based
position in the trace, so a browser's ``EventSource`` resumes with ``Last-Event-ID``;
``data:`` the event, its ``kind`` among it); a
``status`` event (no id) whenever the run's status, stop reason or pending approval
changes - a run waiting for a human is not finished, the stream stays open; and an ``end``
event (no id) once the run is terminal and every trace event was sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from runtime import Runtime, RunView, TraceEvent
from runtime.contract import TERMINAL_STATUSES

#: a comment line this often keeps proxies from closing an idle stream
KEEPALIVE_S = 15.0


def run_json(view: RunView) -> dict[str, Any]:
    return view.model_dump(mode="json", by_alias=True)


def _frame(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def trace_frame(position: int, event: TraceEvent) -> str:
    return _frame("trace", event.model_dump(mode="json", by_alias=True), position)


def status_frame(view: RunView) -> str:
    data = {
        "runId": view.run_id,
        "status": view.status.value,
        "stopReason": view.stop_reason,
        "approvalId": view.approval_id if view.status.value == "waiting" else None,
    }
    return _frame("status", data)


def end_frame(view: RunView) -> str:
    data = {"runId": view.run_id, "status": view.status.value, "stopReason": view.stop_reason}
    return _frame("end", data)


async def run_events(
    rt: Runtime, run_id: str, tenant: str, sent: int, poll_s: float
) -> AsyncIterator[str]:
    """The stream of one run, after the first ``sent`` trace events."""
    shown: tuple[Any, ...] | None = None
    idle = 0.0
    while True:
        # the status first: every event a terminal run wrote is visible to the read after
        view = await run_in_threadpool(rt.get, run_id, tenant)
        events = await run_in_threadpool(rt.trace, run_id, tenant)
        for position, event in enumerate(events[sent:], start=sent + 1):
            yield trace_frame(position, event)
        progressed = len(events) > sent
        sent = max(sent, len(events))
        state = (view.status, view.stop_reason, view.approval_id)
        if state != shown:
            shown, progressed = state, True
            yield status_frame(view)
        if view.status in TERMINAL_STATUSES:
            yield end_frame(view)
            return
        idle = 0.0 if progressed else idle + poll_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)
