"""Every error the API answers is an RFC 9457 problem document
(``application/problem+json``: type, title, status, detail, and ``reason``, the runtime's
reason code). ``ERRORS`` is the one table from runtime error classes to statuses;
``REFUSALS`` maps the reason codes of runs admission refused (stored as refused runs).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import (
    AdmissionRefused,
    AgentRuntimeError,
    ApiKeyNotFound,
    ApiKeyRejected,
    ApprovalClosed,
    ApprovalForbidden,
    BoundsError,
    DeadLetterNotFound,
    GateFailed,
    InvalidRequest,
    InvalidTransition,
    ReleaseError,
    RequestTooLarge,
    RunNotFound,
    ScopeMissing,
    SettingsError,
    StaleWrite,
    StateUnknown,
)

log = logging.getLogger("agentrt.api")

#: ``request.state`` attribute: a blocking check (the key of an endpoint that reads its
#: key's row in its own worker thread, ``runtime.api.auth.presented``) that must pass
#: before a caller learns how its body is invalid
DEFERRED_CHECK = "deferred_check"

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://agentrt.dev/problems/"

#: runtime error class -> (status, title, reason code); the first that matches wins, so a
#: subclass comes before its base
ERRORS: tuple[tuple[type[AgentRuntimeError], int, str, str], ...] = (
    (ApiKeyRejected, 401, "Unauthorized", "unauthorized"),
    (ScopeMissing, 403, "Forbidden", "scope_missing"),
    (ApprovalForbidden, 403, "Forbidden", "approval_forbidden"),
    (RunNotFound, 404, "Not Found", "not_found"),  # ApprovalNotFound too
    (DeadLetterNotFound, 404, "Not Found", "not_found"),
    (ApiKeyNotFound, 404, "Not Found", "not_found"),
    (ApprovalClosed, 409, "Conflict", "approval_closed"),
    (InvalidTransition, 409, "Conflict", "invalid_transition"),
    (StaleWrite, 409, "Conflict", "stale_write"),
    # a promotion the eval gate refused; a release change the state does not allow
    (GateFailed, 409, "Conflict", "release_gate_failed"),
    (ReleaseError, 409, "Conflict", "release_refused"),
    (RequestTooLarge, 413, "Content Too Large", "body_too_large"),
    (AdmissionRefused, 422, "Unprocessable Content", "refused"),  # code below
    (InvalidRequest, 422, "Unprocessable Content", "invalid_request"),
    (BoundsError, 422, "Unprocessable Content", "invalid_request"),
    (StateUnknown, 503, "Service Unavailable", "state_unknown"),
    (SettingsError, 503, "Service Unavailable", "settings"),
)

#: refused:<code> of a run admission refused -> status (default 422)
REFUSALS: dict[str, int] = {
    "queue_full": 429,
    "unknown_route": 404,
    "unknown_tenant": 404,
    "tenant_not_in_scope": 403,
    "tenant_disabled": 403,
    "route_stopped": 403,
    "invalid_input": 422,
    "input_too_large": 422,
    "invalid_priority": 422,
    "idempotency_conflict": 409,
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem:
    """An error the API answers: a route returns ``problem_response(Problem(...))`` for an
    outcome that is not an exception (a run admission refused)."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_body(status: int, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": TYPE_BASE + reason.split(":", 1)[0],
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "reason": reason,
        **extra,
    }


def problem_response(problem: Problem) -> JSONResponse:
    body = problem_body(problem.status, problem.reason, problem.detail, **problem.extra)
    headers = dict(problem.headers)
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="agentrt"')
    return JSONResponse(body, status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)


def from_error(exc: AgentRuntimeError) -> Problem | None:
    """The problem for a runtime error (``ERRORS``); None: not in the table (a 500)."""
    for cls, status, _title, reason in ERRORS:
        if not isinstance(exc, cls):
            continue
        if isinstance(exc, ApiKeyRejected):
            # the same answer for every way a key fails: no oracle for key ids
            return Problem(401, reason, "a valid API key is required (Authorization: Bearer)")
        if isinstance(exc, AdmissionRefused):
            status = REFUSALS.get(exc.code, status)
            return Problem(status, f"refused:{exc.code}", exc.detail, fields=list(exc.fields))
        if isinstance(exc, InvalidRequest):
            return Problem(status, reason, exc.detail, fields=list(exc.fields))
        if isinstance(exc, ScopeMissing):
            return Problem(status, reason, str(exc), scope=exc.scope)
        return Problem(status, reason, str(exc))
    return None


def install(app: FastAPI) -> None:
    """Route every error through one shape: ours, FastAPI's validation, unknown paths."""

    async def on_runtime_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentRuntimeError)
        problem = from_error(exc)
        if problem is None:
            raise exc  # not an answer we know: the last resort's 500 (runtime.api.guards)
        return problem_response(problem)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        deferred = getattr(request.state, DEFERRED_CHECK, None)
        if deferred is not None:
            # an unknown, revoked or expired key (or one without the scope) is answered as
            # such, before 422: only the invalid requests pay for this extra thread hop
            try:
                await run_in_threadpool(deferred)
            except AgentRuntimeError as refused:
                return await on_runtime_error(request, refused)
        # the offending values are not echoed back (they may hold secrets)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()[:20]
        ]
        where = ", ".join(".".join(e["loc"]) for e in errors[:5])
        return problem_response(
            Problem(422, "invalid_request", f"invalid request: {where}", errors=errors)
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, AgentRuntimeError):
            # FastAPI turns an error raised while it reads the body (the body limit's
            # RequestTooLarge) into a 400: answer the error itself
            return await on_runtime_error(request, exc.__cause__)
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = (
            f"no such path: {request.url.path[:200]}" if exc.status_code == 404 else str(exc.detail)
        )
        return problem_response(
            Problem(exc.status_code, reason, detail, headers=dict(exc.headers or {}))
        )

    app.add_exception_handler(AgentRuntimeError, on_runtime_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
