"""``/v1/runs``: submit (idempotent), get, list (filters, cursor pages), trace, cancel,
pause, resume. Every call is scoped to the key's tenant; the actor recorded is the key
(``key:<id>``, plus ``:user:<end_user>`` when the app names its user), never the body."""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from runtime import telemetry
from runtime.api.auth import Canceller, PresentedKey, Reader, SubmitKey, Svc
from runtime.api.problems import REFUSALS, Problem, problem_response
from runtime.api_keys import Principal
from runtime.contract import TERMINAL_STATUSES, RunView
from runtime.errors import InvalidRequest
from runtime.service import RuntimeService
from runtime.statuses import RunStatus
from runtime.store.run_pages import RunPageQuery

router = APIRouter(prefix="/v1")

#: the most runs one page holds
MAX_PAGE = 200
END_USER = r"^[A-Za-z0-9_.:@\-]{1,100}$"
TOKEN = r"^[\x21-\x7e]{1,200}$"
#: what a run, approval or dead-letter id is made of
ID = r"^[A-Za-z0-9_\-]+$"
#: a route's (or tenant's) name as the deployment file spells it; a value outside it - a
#: NUL byte, say, which PostgreSQL's text cannot hold - is a 422 here, never a SQL error
NAME = r"^[A-Za-z0-9_.\-]+$"
RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID)]


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=100, pattern=NAME, examples=["support.triage"])
    goal: str = Field(min_length=1, max_length=4000)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["critical", "high", "normal", "low"] | None = None
    #: the app's own user, recorded next to the key as the actor
    end_user: str | None = Field(default=None, pattern=END_USER)
    request_id: str | None = Field(default=None, pattern=TOKEN)
    #: only for a cross-tenant (ops:admin, tenant *) key; else it must be the key's own
    tenant: str | None = Field(default=None, max_length=100, pattern=NAME)
    #: one of the route's modes instead of its default (admission refuses any other)
    execution_mode: str | None = Field(default=None, max_length=30, examples=["sync"])


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["immediate", "drain"] = "immediate"
    compensate: bool = False


def actor_of(who: Principal, end_user: str | None = None) -> str:
    return who.actor if end_user is None else f"{who.actor}:user:{end_user}"


def run_json(view: RunView) -> dict[str, Any]:
    return view.model_dump(mode="json", by_alias=True)


def _tenant_for_submit(who: Principal, asked: str | None) -> str:
    if who.tenant is None:
        if asked is None:
            raise InvalidRequest(("tenant",), "a cross-tenant key must name the run's tenant")
        return asked
    if asked is not None and asked != who.tenant:
        raise InvalidRequest(("tenant",), "a key submits for its own tenant only")
    return who.tenant


def _refusal(svc: RuntimeService, view: RunView, tenant: str) -> JSONResponse:
    code = (view.stop_reason or "refused:unknown").split(":", 1)[1]
    detail = str((view.output or {}).get("detail") or view.stop_reason)
    extra: dict[str, Any] = {"run_id": view.run_id}
    headers = {}
    if code == "queue_full" and view.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(view.retry_after_s)))
    if code == "unknown_route":
        extra["known_routes"] = sorted(
            name
            for name, cfg in svc.config.routes.items()
            if "*" in cfg.tenants or tenant in cfg.tenants
        )
    if code in ("tenant_not_in_scope", "tenant_disabled", "route_stopped"):
        extra["rule"] = code
    status = REFUSALS.get(code, 422)
    return problem_response(Problem(status, f"refused:{code}", detail, headers=headers, **extra))


@router.post("/runs", status_code=202, responses={200: {"description": "an existing run"}})
async def submit_run(
    body: SubmitBody,
    key: SubmitKey,
    request: Request,
    idempotency_key: Annotated[str | None, Header(pattern=TOKEN)] = None,
) -> Response:
    """Submit a run: 202 with the run and its ``Location``. A run whose mode is ``sync`` is
    run by this process first: 200 with the terminal run when it finished within the route's
    ``sync_timeout_s`` (plus the step under way then), else 202 (its rest runs on workers).
    A repeat with the same ``Idempotency-Key`` (or ``request_id``) and the same payload
    returns the same run (200); a different payload is 409."""
    # ``async`` with one worker thread for the key check, the submit and the answer's JSON:
    # a sync endpoint behind a sync key check would make two thread hops a submit
    return await run_in_threadpool(_traced_submit, body, key, request.headers, idempotency_key)


def _traced_submit(
    body: SubmitBody, key: PresentedKey, headers: Headers, idempotency_key: str | None
) -> Response:
    # the submit's span continues the caller's W3C traceparent; the run adopts its trace
    with telemetry.server_span(
        "agentrt.submit", headers, {"http.method": "POST", "http.route": "/v1/runs"}
    ) as span:
        who = key.principal()
        answer = _submit(body, key.svc, who, idempotency_key)
        location = answer.headers.get("Location")
        if location:
            span.set("agentrt.run_id", location.rsplit("/", 1)[-1])
        span.set("agentrt.tenant", who.tenant if body.tenant is None else body.tenant)
        span.set("agentrt.route", body.route)
        span.set("agentrt.outcome", str(answer.status_code))
        return answer


def _submit(
    body: SubmitBody, svc: RuntimeService, who: Principal, idempotency_key: str | None
) -> Response:
    tenant = _tenant_for_submit(who, body.tenant)
    # under an idempotency key, a request id of our own (unless the app gave one): a run
    # that comes back with another request id was admitted before (by that key). With
    # neither, none: a fresh id can match no run, and looking it up costs a SQL read
    request_id = body.request_id or (
        f"http-{uuid.uuid4().hex}" if idempotency_key is not None else None
    )
    existed = body.request_id is not None and bool(
        svc.store.find_admitted(tenant, body.request_id, idempotency_key)
    )
    view = svc.submit(
        tenant,
        body.route,
        body.goal,
        body.input,
        actor=actor_of(who, body.end_user),
        request_id=request_id,
        idempotency_key=idempotency_key,
        priority=body.priority,
        execution_mode=body.execution_mode,
    )
    if view.status == RunStatus.REFUSED and (view.stop_reason or "").startswith("refused:"):
        return _refusal(svc, view, tenant)
    # no request id and no key: nothing could hold the run, it is new
    created = request_id is None or (view.request_id == request_id and not existed)
    # a sync run that finished within its route's sync_timeout_s is answered with its result
    finished = view.execution_mode == "sync" and view.status in TERMINAL_STATUSES
    # pydantic writes the JSON itself: the same document as ``run_json``, without the
    # intermediate dict
    return Response(
        view.model_dump_json(by_alias=True),
        status_code=202 if created and not finished else 200,
        headers={"Location": f"/v1/runs/{view.run_id}"},
        media_type="application/json",
    )


@router.get("/runs/{run_id}")
def get_run(run_id: RunId, svc: Svc, who: Reader) -> dict[str, Any]:
    return run_json(svc.get(run_id, who.tenant))


def _cursor(view: RunView) -> str:
    raw = json.dumps({"t": view.created_at.isoformat(), "r": view.run_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _utc(name: str, when: datetime | None) -> datetime | None:
    """``when`` in UTC. A naive time, or one its offset pushes out of the calendar in UTC
    (year 0 or 10000), is a 422 naming the field, never an error in SQL."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidRequest((name,), f"{name} needs a time zone (e.g. 2025-01-31T12:00:00Z)")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest((name,), f"{name} is outside the calendar in UTC") from None


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        at, run_id = datetime.fromisoformat(data["t"]), data["r"]
        if not isinstance(run_id, str) or at.tzinfo is None:
            raise ValueError
        at = at.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError, OverflowError):
        raise InvalidRequest(("cursor",), "cursor is not one this API returned") from None
    return at, run_id


@router.get("/runs")
def list_runs(
    svc: Svc,
    who: Reader,
    status: RunStatus | None = None,
    route: Annotated[str | None, Query(max_length=100, pattern=NAME)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Runs newest first; ``next_cursor`` fetches the next page (null: the last one)."""
    query = RunPageQuery(
        tenant_id=who.tenant,
        status=status.value if status else None,
        route=route,
        created_after=_utc("created_after", created_after),
        created_before=_utc("created_before", created_before),
        after=_after(cursor),
        limit=limit,
    )
    views = svc.page_runs(query)
    more = len(views) == limit and bool(svc.page_runs(_next(query, views[-1], 1)))
    return {
        "items": [run_json(v) for v in views],
        "next_cursor": _cursor(views[-1]) if more else None,
    }


def _next(query: RunPageQuery, last: RunView, limit: int) -> RunPageQuery:
    return RunPageQuery(
        query.tenant_id,
        query.status,
        query.route,
        query.created_after,
        query.created_before,
        (last.created_at, last.run_id),
        limit,
    )


@router.get("/runs/{run_id}/trace")
def get_trace(run_id: RunId, svc: Svc, who: Reader) -> dict[str, Any]:
    events = svc.trace(run_id, who.tenant)
    return {"run_id": run_id, "events": [e.model_dump(mode="json", by_alias=True) for e in events]}


@router.post("/runs/{run_id}/cancel")
def cancel_run(
    run_id: RunId, svc: Svc, who: Canceller, body: CancelBody | None = None
) -> dict[str, Any]:
    chosen = body or CancelBody()
    view = svc.cancel(run_id, who.actor, who.tenant, mode=chosen.mode, compensate=chosen.compensate)
    return run_json(view)


@router.post("/runs/{run_id}/pause")
def pause_run(run_id: RunId, svc: Svc, who: Canceller) -> dict[str, Any]:
    return run_json(svc.pause(run_id, who.actor, who.tenant))


@router.post("/runs/{run_id}/resume")
def resume_run(run_id: RunId, svc: Svc, who: Canceller) -> dict[str, Any]:
    return run_json(svc.resume(run_id, who.actor, who.tenant))
