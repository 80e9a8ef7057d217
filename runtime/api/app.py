"""The FastAPI application over one runtime (built by the composition root) and the
uvicorn server ``agentrt api`` starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from runtime.api import events, health, metrics, operations, problems, runs, webhooks
from runtime.api.guards import BodyLimit, LastResort
from runtime.dashboard import routes as dashboard_routes
from runtime.service import RuntimeService
from runtime.settings import Settings

log = logging.getLogger("agentrt.api")
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """The HTTP API of agentrt: submit runs, follow them (SSE), decide approvals,
operate dead letters. Authenticate with `Authorization: Bearer <API key>`
(`agentrt keys create`); every error is an RFC 9457 problem document with a `reason`."""


def create_app(svc: RuntimeService, lifespan: Lifespan | None = None) -> FastAPI:
    """The API over ``svc``; the caller owns ``svc`` (and closes it, in ``lifespan`` if
    it likes)."""
    app = FastAPI(
        lifespan=lifespan,
        title="agentrt",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.svc = svc
    problems.install(app)
    for module in (health, runs, events, operations, metrics):
        app.include_router(module.router)
    # the operating dashboard: HTML pages behind a session cookie (runtime.dashboard)
    app.include_router(dashboard_routes.router)
    # webhooks authenticate by their source's signature, not by an API key
    app.include_router(webhooks.router(svc))
    # outermost last: the last resort sees whatever the body limit and the app raise
    app.add_middleware(BodyLimit, max_bytes=svc.settings.api_max_body_bytes)
    app.add_middleware(LastResort)
    return app


def init_error_reporting(settings: Settings) -> bool:
    """Sentry for this API process if ``AGENTRT_SENTRY_DSN`` is set (its Starlette and
    FastAPI integrations report 5xx answers and unhandled exceptions); whether it is on.
    No DSN: sentry_sdk is not even imported."""
    if settings.sentry_dsn is None:
        return False
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    from runtime.error_reporting import init_sentry

    return init_sentry(settings, integrations=[StarletteIntegration(), FastApiIntegration()])


def _configure_process(settings: Settings) -> None:
    init_error_reporting(settings)
    # the runtime's own records (a 500's error id with its traceback) reach stderr
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _uvicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "log_level": settings.log_level.lower(),
        # the key is in a header; uvicorn's access log shows no headers, and paths and
        # queries hold no secrets
        "access_log": True,
        "server_header": False,
    }


def serve(svc: RuntimeService, host: str, port: int) -> None:
    """Serve the API in this process until interrupted."""
    import uvicorn

    _configure_process(svc.settings)
    uvicorn.run(create_app(svc), **_uvicorn_options(svc.settings, host, port))


def serve_processes(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve the API from ``workers`` processes on one port (uvicorn's supervisor restarts
    one that dies). Each builds its own runtime from the environment (``app_in_process``):
    a runtime's connections and threads cannot cross a process boundary. The caller has
    built one already (config checked, an embedded Redis started and owned here)."""
    import uvicorn

    uvicorn.run(
        f"{__name__}:app_in_process",
        factory=True,
        workers=workers,
        **_uvicorn_options(settings, host, port),
    )


def app_in_process() -> FastAPI:
    """uvicorn's factory in each process of ``serve_processes``: the runtime of this
    process (from the environment, as ``agentrt api`` built its own), closed when the
    process stops serving."""
    from runtime.wiring import Runtime

    settings = Settings()
    _configure_process(settings)
    svc = Runtime.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            svc.close()

    return create_app(svc, lifespan=lifespan)
