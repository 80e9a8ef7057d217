"""``/dashboard``: the operating dashboard's pages and its actions (plain HTML forms).

Who: the session cookie (``runtime.dashboard.session``); a page without one goes to the
login form. What: a tenant key sees its tenant only, an ``ops:admin`` key of tenant ``*``
every tenant. Reading needs ``runs:read``; each action needs its scope (cancel/pause:
``runs:cancel``, approvals: ``approvals:decide``, levers and releases, which act on the
whole deployment: ``ops:admin``). Every POST is refused (403) without the session's CSRF
token. Every error is a page with its status; nothing is echoed unescaped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from runtime.api.problems import from_error
from runtime.api.runs import NAME, RunId
from runtime.api_keys import ADMIN, Principal
from runtime.dashboard import session
from runtime.dashboard_view import PANELS, DashboardView
from runtime.errors import (
    AgentRuntimeError,
    ApiKeyRejected,
    DashboardSessionMissing,
    InvalidRequest,
    ReleaseError,
)
from runtime.service import RuntimeService
from runtime.wiring import build_dashboard_view

PREFIX = "/dashboard"
router = APIRouter(prefix=PREFIX, include_in_schema=False)
_env = Environment(
    loader=FileSystemLoader(FsPath(__file__).parent / "templates"),
    autoescape=True,  # every value, not only .html files: nothing reaches a page raw
)
templates = Jinja2Templates(env=_env)
#: no script runs on these pages, nothing frames them
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Field = Annotated[str, Form(max_length=200)]
Csrf = Annotated[str, Form(max_length=200)]
#: a POST without the field is refused like one with a wrong token (403), not a 422
NO_CSRF = ""
Reason = Annotated[str, Form(max_length=2000)]


def _svc(request: Request) -> RuntimeService:
    svc: RuntimeService = request.app.state.svc
    return svc


def _view(request: Request) -> DashboardView:
    view: DashboardView | None = getattr(request.app.state, "dashboard_view", None)
    # built again when the service's config changed (an applied config replaces it)
    if view is None or view.config is not _svc(request).config:
        view = build_dashboard_view(_svc(request))
        request.app.state.dashboard_view = view
    return view


def _principal(request: Request) -> tuple[Principal, str]:
    token = request.cookies.get(session.COOKIE)
    try:
        return session.principal_of(_svc(request).api_keys, token), str(token)
    except ApiKeyRejected:
        raise DashboardSessionMissing() from None


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(HEADERS)
    return response


def _error(request: Request, exc: AgentRuntimeError, who: Principal | None) -> HTMLResponse:
    problem = from_error(exc)
    if problem is not None:
        status, detail = problem.status, problem.detail
    elif isinstance(exc, ReleaseError):
        status, detail = 409, str(exc)  # refused: no such canary, the gate failed, ...
    else:
        raise exc  # not an answer we know: the API's last resort answers 500
    context = {"status": status, "detail": detail, "who": who, "csrf": None}
    return _page(request, "error.html", context, status)


def _refused(request: Request, who: Principal | None, detail: str) -> HTMLResponse:
    context = {"status": 403, "detail": detail, "who": who, "csrf": None}
    return _page(request, "error.html", context, 403)


def _back(to: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{to}?done={quote(done[:200])}", status_code=303)


def _login_redirect() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


def _read(request: Request, render: Callable[[Principal, str], HTMLResponse]) -> Response:
    try:
        who, token = _principal(request)
    except DashboardSessionMissing:
        return _login_redirect()
    try:
        who.require("runs:read")
        return render(who, token)
    except AgentRuntimeError as exc:
        return _error(request, exc, who)


def _act(
    request: Request, csrf: str, scope: str, action: Callable[[Principal], str], to: str
) -> Response:
    """Run one operator action: a session (else 401), its CSRF token (else 403), the
    scope (else 403); then back to the page with what was done."""
    try:
        who, token = _principal(request)
    except DashboardSessionMissing:
        return _page(
            request,
            "error.html",
            {"status": 401, "detail": "log in first", "who": None, "csrf": None},
            401,
        )
    if not session.csrf_ok(token, csrf):
        return _refused(request, who, "the form's CSRF token is missing or wrong: reload the page")
    try:
        who.require(scope)
        return _back(to, action(who))
    except AgentRuntimeError as exc:
        return _error(request, exc, who)


# --- login ---------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request) -> Response:
    nonce = session.login_nonce()
    response = _page(request, "login.html", {"csrf": nonce, "who": None, "failed": False})
    response.set_cookie(
        session.LOGIN_COOKIE,
        nonce,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )
    return response


@router.post("/login")
def login(
    request: Request, key: Annotated[str, Form(max_length=300)], csrf: Csrf = NO_CSRF
) -> Response:
    expected = request.cookies.get(session.LOGIN_COOKIE)
    if not expected or not session.hmac_equal(expected, csrf):
        return _refused(request, None, "the login form's CSRF token is missing or wrong")
    try:
        token, _who = session.open_session(_svc(request).api_keys, key.strip())
    except ApiKeyRejected:
        # the same answer for every way a key fails
        nonce = session.login_nonce()
        response = _page(request, "login.html", {"csrf": nonce, "who": None, "failed": True}, 401)
        response.set_cookie(
            session.LOGIN_COOKIE,
            nonce,
            max_age=600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=PREFIX,
        )
        return response
    entered = RedirectResponse(PREFIX, status_code=303)
    entered.set_cookie(
        session.COOKIE,
        token,
        max_age=session.MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )
    entered.delete_cookie(session.LOGIN_COOKIE, path=PREFIX)
    return entered


@router.post("/logout")
def logout(request: Request, csrf: Csrf = NO_CSRF) -> Response:
    def out(who: Principal) -> str:
        return "logged out"

    response = _act(request, csrf, "runs:read", out, f"{PREFIX}/login")
    if response.status_code == 303:
        response.delete_cookie(session.COOKIE, path=PREFIX)
    return response


# --- pages ---------------------------------------------------------------------------
#: ``?refresh=N``: the page reloads itself every N seconds (a wall screen); bounded
REFRESH_S = (5, 300)


@router.get("")
def index(
    request: Request,
    refresh: Annotated[int | None, Query(ge=REFRESH_S[0], le=REFRESH_S[1])] = None,
) -> Response:
    def render(who: Principal, token: str) -> HTMLResponse:
        view = _view(request)
        context = {
            "refresh_s": refresh,
            "who": who,
            "admin": ADMIN in who.scopes,
            "csrf": session.csrf_token(token),
            "done": request.query_params.get("done", "")[:200],
            "panels": view.panels(who.tenant),
            "panel_names": PANELS,
            "can_decide": "approvals:decide" in who.scopes or ADMIN in who.scopes,
        }
        return _page(request, "index.html", context)

    return _read(request, render)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: RunId) -> Response:
    def render(who: Principal, token: str) -> HTMLResponse:
        svc = _svc(request)
        run = svc.get(run_id, who.tenant)  # another tenant's run: not found
        view = _view(request)
        context = {
            "who": who,
            "admin": ADMIN in who.scopes,
            "csrf": session.csrf_token(token),
            "done": request.query_params.get("done", "")[:200],
            "run": run,
            "trace": svc.trace(run_id, who.tenant),
            "budget": view.budget_of(run.route, run_id),
            "flower": svc.settings.flower_url.rstrip("/"),
            **view.run_page(run_id, who.tenant),
        }
        return _page(request, "run.html", context)

    return _read(request, render)


# --- actions -------------------------------------------------------------------------
RUN_ACTIONS = ("cancel", "pause", "resume")


@router.post("/runs/{run_id}/{action}")
def run_action(request: Request, run_id: RunId, action: str, csrf: Csrf = NO_CSRF) -> Response:
    def act(who: Principal) -> str:
        svc = _svc(request)
        if action not in RUN_ACTIONS:
            raise InvalidRequest(("action",), f"action must be one of {', '.join(RUN_ACTIONS)}")
        done = getattr(svc, action)(run_id, who.actor, who.tenant)
        return f"{action}: run {run_id} is {done.status}"

    return _act(request, csrf, "runs:cancel", act, f"{PREFIX}/runs/{run_id}")


@router.post("/approvals/{approval_id}/{decision}")
def decide(
    request: Request,
    approval_id: RunId,
    decision: str,
    csrf: Csrf = NO_CSRF,
    reason: Reason = "",
    back: Field = "",
) -> Response:
    def act(who: Principal) -> str:
        approvals = _svc(request).approvals
        if decision == "approve":
            out = approvals.approve(approval_id, who.actor, reason or None, who.tenant)
        elif decision == "deny":
            out = approvals.deny(approval_id, who.actor, reason, who.tenant)
        else:
            raise InvalidRequest(("decision",), "decision must be approve or deny")
        return f"approval {approval_id}: {out.status}"

    return _act(request, csrf, "approvals:decide", act, _safe_back(back))


LEVERS = (
    "disable_tool",
    "enable_tool",
    "set_concurrency",
    "force_approval",
    "unforce_approval",
    "stop_route",
    "start_route",
    "drain_route",
    "undrain_route",
)


@router.post("/levers/{lever}")
def pull_lever(
    request: Request,
    lever: str,
    csrf: Csrf = NO_CSRF,
    tool: Field = "",
    route: Field = "",
    limit: Field = "",
    mode: Field = "drain",
    reason: Reason = "",
) -> Response:
    def act(who: Principal) -> str:
        levers = _svc(request).levers
        kw: dict[str, Any] = {"actor": f"dashboard:{who.actor}", "reason": reason or None}
        calls: dict[str, Callable[[], Any]] = {
            "disable_tool": lambda: levers.disable_tool(tool, **kw),
            "enable_tool": lambda: levers.enable_tool(tool, **kw),
            "set_concurrency": lambda: levers.set_concurrency(route, _limit(limit), **kw),
            "force_approval": lambda: levers.force_approval(route=route, **kw),
            "unforce_approval": lambda: levers.unforce_approval(route=route, **kw),
            "stop_route": lambda: levers.stop_route(route, mode, **kw),
            "start_route": lambda: levers.start_route(route, **kw),
            "drain_route": lambda: levers.drain(route=route, **kw),
            "undrain_route": lambda: levers.undrain(route=route, **kw),
        }
        if lever not in calls:
            raise InvalidRequest(("lever",), f"lever must be one of {', '.join(LEVERS)}")
        change = calls[lever]()
        return (
            f"{lever} {change.target}: {change.old!r} -> {change.new!r} "
            f"({change.affected_count} active runs affected from their next step)"
        )

    return _act(request, csrf, ADMIN, act, PREFIX)


def _limit(raw: str) -> int | None:
    if raw.strip() in ("", "default"):
        return None
    if not raw.strip().isdigit():
        raise InvalidRequest(("limit",), "limit: a whole number, or empty for the config's")
    return int(raw.strip())


RELEASE_ACTIONS = ("promote", "rollback", "pin")


@router.post("/releases/{route}/{action}")
def release_action(
    request: Request,
    route: Annotated[str, Path(min_length=1, max_length=100, pattern=NAME)],
    action: str,
    csrf: Csrf = NO_CSRF,
    release: Field = "",
    reason: Reason = "",
) -> Response:
    def act(who: Principal) -> str:
        releases = _svc(request).releases
        if releases is None:
            raise ReleaseError("this deployment declares no releases")
        actor, why = f"dashboard:{who.actor}", reason or None
        if action == "promote":
            from runtime.evals.gate import eval_gate  # the replay engine: only when promoting

            svc = _svc(request)
            gate = eval_gate(svc.config, svc.settings)  # the blocking evals, as the CLI
            state = releases.promote(route, actor=actor, reason=why, gate=gate)
        elif action == "rollback":
            state = releases.rollback(route, actor=actor, reason=why)
        elif action == "pin":
            state = releases.rollback(route, to=release, actor=actor, reason=why)
        else:
            raise InvalidRequest(("action",), f"action must be one of {', '.join(RELEASE_ACTIONS)}")
        return f"{action} {route}: active {state.active}, canary {state.canary or '-'}"

    return _act(request, csrf, ADMIN, act, PREFIX)


def _safe_back(back: str) -> str:
    """Only a page of the dashboard: never a redirect elsewhere (open redirect)."""
    if (
        back.startswith(f"{PREFIX}/runs/")
        and back[len(PREFIX) + 6 :].replace("-", "").replace("_", "").isalnum()
    ):
        return back
    return PREFIX
