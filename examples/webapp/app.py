"""The example web app: one tenant's people submit runs, watch them live, and approve or
deny the actions a policy rule sends to a human.

It uses the runtime's Python API (``Runtime.from_env()``, the same settings as the
workers): ``rt.submit`` enqueues, ``rt.get``/``rt.trace`` feed the live stream
(``examples.webapp.stream``), ``rt.approvals`` lists and decides. Errors are the
runtime's RFC 9457 problem documents (``runtime.api.problems``).

The person's name comes from the page (``user``) and is recorded as ``user:<name>``: a
real app takes it from its own login session instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from examples.webapp.stream import run_events, run_json
from runtime import Runtime, RunView
from runtime.api import problems
from runtime.api.guards import BodyLimit, LastResort
from runtime.approvals import ApprovalView

PAGE = Path(__file__).with_name("page.html")
USER = r"^[A-Za-z0-9_.@\-]{1,64}$"
Id = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
#: a browser's Last-Event-ID: a position in the trace
LastEventId = Annotated[str | None, Header(max_length=12, pattern=r"^[0-9]*$")]
MAX_BODY_BYTES = 256 * 1024


class WebappSettings(BaseSettings):
    """``WEBAPP_*`` variables; the runtime reads its own ``AGENTRT_*`` ones."""

    model_config = SettingsConfigDict(env_prefix="WEBAPP_")

    #: the tenant this app's users belong to (one app, one tenant)
    tenant: str = Field(default="acme", pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    #: how often a live stream reads the run
    poll_s: float = Field(default=0.25, ge=0.01, le=10)


class Submit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=USER)
    route: str = Field(min_length=1, max_length=100)
    goal: str = Field(min_length=1, max_length=4000)
    input: dict[str, Any] = Field(default_factory=dict)
    #: the page sends one per click: a double click (or a retry) is the same run
    request_id: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,200}$")


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=USER)
    reason: str | None = Field(default=None, max_length=2000)


def approval_json(approval: ApprovalView) -> dict[str, Any]:
    """The approval, with the exact action it covers: the canonical JSON whose SHA-256 is
    its digest (checked here, so the page shows whether they agree)."""
    canonical = approval.canonical_action()
    verified = hashlib.sha256(canonical.encode()).hexdigest() == approval.digest
    return {
        **approval.model_dump(mode="json"),
        "canonical_action": canonical,
        "digest_verified": verified,
    }


def create_app(rt: Runtime, settings: WebappSettings | None = None) -> FastAPI:
    """The app over ``rt``; the caller owns ``rt`` (``from_env`` closes its own)."""
    cfg = settings or WebappSettings()
    app = FastAPI(title="agentrt web-app example", docs_url=None, redoc_url=None)
    problems.install(app)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/config")
    def config() -> dict[str, Any]:
        routes = sorted(
            name
            for name, route in rt.config.routes.items()
            if "*" in route.tenants or cfg.tenant in route.tenants
        )
        return {"tenant": cfg.tenant, "routes": routes}

    app.include_router(runs_router(rt, cfg))
    app.include_router(approvals_router(rt, cfg.tenant))
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(LastResort)
    return app


def refused(view: RunView) -> JSONResponse:
    """A run admission refused (stored, with its reason): the runtime's problem for it."""
    code = (view.stop_reason or "refused:unknown").split(":", 1)[-1]
    status = problems.REFUSALS.get(code, 422)
    detail = str((view.output or {}).get("detail") or view.stop_reason)
    problem = problems.Problem(status, f"refused:{code}", detail, run_id=view.run_id)
    return problems.problem_response(problem)


def runs_router(rt: Runtime, cfg: WebappSettings) -> APIRouter:
    router = APIRouter(prefix="/runs")

    @router.post("", status_code=202)
    def submit(body: Submit) -> JSONResponse:
        view = rt.submit(
            tenant=cfg.tenant,
            route=body.route,
            goal=body.goal,
            input=body.input,
            actor=f"user:{body.user}",
            request_id=body.request_id,
        )
        if view.status.value == "refused":
            return refused(view)
        return JSONResponse(run_json(view), status_code=202)

    @router.get("/{run_id}")
    def get_run(run_id: Id) -> dict[str, Any]:
        return run_json(rt.get(run_id, cfg.tenant))

    @router.get("/{run_id}/events", response_class=StreamingResponse)
    def events(run_id: Id, last_event_id: LastEventId = None) -> StreamingResponse:
        rt.get(run_id, cfg.tenant)  # 404 before the stream starts
        return StreamingResponse(
            run_events(rt, run_id, cfg.tenant, int(last_event_id or 0), cfg.poll_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


def approvals_router(rt: Runtime, tenant: str) -> APIRouter:
    router = APIRouter(prefix="/approvals")

    @router.get("")
    def pending() -> dict[str, Any]:
        return {"items": [approval_json(a) for a in rt.approvals.list(tenant=tenant)]}

    @router.get("/{approval_id}")
    def show(approval_id: Id) -> dict[str, Any]:
        return approval_json(rt.approvals.get(approval_id, tenant))

    @router.post("/{approval_id}/approve")
    def approve(approval_id: Id, body: Decide) -> dict[str, Any]:
        actor = f"user:{body.user}"
        return approval_json(rt.approvals.approve(approval_id, actor, body.reason, tenant))

    @router.post("/{approval_id}/deny")
    def deny(approval_id: Id, body: Decide) -> dict[str, Any]:
        actor = f"user:{body.user}"
        # the runtime refuses a denial without a reason, naming the field
        return approval_json(rt.approvals.deny(approval_id, actor, body.reason or "", tenant))

    return router


def from_env() -> FastAPI:
    """``uvicorn examples.webapp.app:from_env --factory``: the runtime from ``AGENTRT_*``,
    the app from ``WEBAPP_*``; the runtime is closed when the server stops."""
    rt = Runtime.from_env()
    app = create_app(rt, WebappSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            rt.close()

    app.router.lifespan_context = lifespan
    return app
