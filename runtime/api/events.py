"""``GET /v1/runs/{id}/events``: a run's trace as Server-Sent Events until it is terminal.

Each trace event is one SSE event (``id:`` its id, ``event:`` its kind, ``data:`` JSON);
the stream polls SQL for events after the last one sent (tenant-scoped), sleeping between
polls, and ends with an ``end`` event (no id) once the run is terminal and every event
has been sent. A client that reconnects with ``Last-Event-ID`` gets what came after it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from runtime.api.auth import Reader, Svc
from runtime.api.runs import RunId
from runtime.contract import TERMINAL_STATUSES, RunView, TraceEvent
from runtime.errors import InvalidRequest
from runtime.run_rows import trace_fields
from runtime.service import RuntimeService

router = APIRouter(prefix="/v1")

#: events read per poll
BATCH = 200
#: a comment line this often keeps proxies from closing an idle stream
KEEPALIVE_S = 15.0
MAX_EVENT_ID = 2**63 - 1


def frame(event_id: int, event: TraceEvent) -> str:
    data = event.model_dump(mode="json", by_alias=True)
    data["id"] = event_id
    del data["seq"]
    return f"id: {event_id}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n"


def end_frame(view: RunView) -> str:
    data = {"runId": view.run_id, "status": view.status.value, "stopReason": view.stop_reason}
    return f"event: end\ndata: {json.dumps(data)}\n\n"


def _last_id(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise InvalidRequest(("Last-Event-ID",), "Last-Event-ID must be an event id (digits)")
    return int(raw)


def trace_after(
    svc: RuntimeService, run_id: str, after: int, tenant: str | None
) -> list[tuple[int, TraceEvent]]:
    """A run's trace events with an id above ``after``, with their ids (tenant-scoped)."""
    rows = svc.store.events_after(run_id, tenant, after, BATCH)
    return [(int(r["id"]), TraceEvent(**trace_fields(r, int(r["id"])))) for r in rows]


async def _stream(
    svc: RuntimeService, run_id: str, tenant: str | None, after: int, poll_s: float
) -> AsyncIterator[str]:
    idle = 0.0
    while True:
        # the status first: events a terminal run wrote are all visible to the read after
        view = await run_in_threadpool(svc.get, run_id, tenant)
        batch = await run_in_threadpool(trace_after, svc, run_id, after, tenant)
        for event_id, event in batch:
            after = event_id
            yield frame(event_id, event)
        if len(batch) == BATCH:
            continue
        if view.status in TERMINAL_STATUSES:
            yield end_frame(view)
            return
        if batch:
            idle = 0.0
        elif idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)
        idle += poll_s


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def run_events(
    run_id: RunId,
    svc: Svc,
    who: Reader,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    after = _last_id(last_event_id)
    svc.get(run_id, who.tenant)  # 404 before the stream starts (another tenant's too)
    poll_s = svc.settings.api_events_poll_s
    return StreamingResponse(
        _stream(svc, run_id, who.tenant, after, poll_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
