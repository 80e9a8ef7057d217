"""``POST /v1/events/{source}``: webhook events that start runs (``runtime.events``).

No API key: a webhook authenticates by its signature, checked on the raw body before
anything else. Responses: ``202`` with the run when the event started it, ``200`` with the
same run for a replay, the API's RFC 9457 problem documents otherwise (``reason`` carries
the reason code): ``401`` bad signature, ``404`` unknown source, ``413`` body too large, ``409`` an
event id replayed with another body, ``422`` a body that is not a usable event,
``429``/``422`` a run admission refused (``Retry-After`` when it says when).

``router(runtime)`` reads every source's secret first: a missing one fails the app's
start-up (``ConfigError`` naming the variable), never a request later.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from runtime.api import problems
from runtime.api.runs import run_json
from runtime.contract import RunStatus, RunView
from runtime.errors import EventRejected
from runtime.event_config import MAX_BODY_BYTES
from runtime.events import EventIntake

_STATUS = {
    "event:bad_signature": 401,
    "event:unknown_source": 404,
    "event:too_large": 413,
    "event:conflict": 409,
    "event:invalid_body": 422,
    "event:no_event_id": 422,
    "event:no_key": 422,
}


class EventReceiver(Protocol):
    events: EventIntake

    def receive_event(self, source: str, headers: Any, body: bytes) -> tuple[RunView, bool]: ...


def problem(status: int, reason: str, detail: str, **extra: Any) -> JSONResponse:
    """The API's problem document (``runtime.api.problems``) for an event's refusal."""
    body = problems.problem_body(status, reason, detail, **extra)
    return JSONResponse(body, status_code=status, media_type=problems.PROBLEM_JSON)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it grows past ``limit`` (never read whole first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def router(runtime: EventReceiver) -> APIRouter:
    runtime.events.require_secrets()  # fail at start-up, not on the first webhook
    api = APIRouter()

    @api.post("/v1/events/{source}", response_model=None)
    async def receive(source: str, request: Request) -> JSONResponse:
        cfg = runtime.events.sources.get(source)
        if cfg is None or not cfg.enabled:
            return problem(404, "event:unknown_source", f"no event source {source[:100]!r}")
        body = await _bounded_body(request, min(cfg.max_body_bytes, MAX_BODY_BYTES))
        if body is None:
            return problem(413, "event:too_large",
                           f"body over {cfg.max_body_bytes} bytes")  # fmt: skip
        try:
            run, created = runtime.receive_event(source, dict(request.headers), body)
        except EventRejected as exc:
            extra = {"run_id": exc.run_id} if exc.run_id else {}
            return problem(_STATUS.get(exc.code, 422), exc.code, exc.detail, **extra)
        if run.status == RunStatus.REFUSED:
            return _refused(run)
        return JSONResponse(run_json(run), status_code=202 if created else 200)

    return api


def _refused(run: RunView) -> JSONResponse:
    reason = run.stop_reason or "refused"
    status = 429 if reason == "refused:queue_full" else 422
    response = problem(status, reason, f"the event's run was refused: {reason}",
                       run_id=run.run_id)  # fmt: skip
    if run.retry_after_s:
        response.headers["Retry-After"] = str(max(1, round(run.retry_after_s)))
    return response
