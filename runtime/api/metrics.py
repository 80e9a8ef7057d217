"""``/metrics``: the runtime's Prometheus metrics (``runtime.metrics``), read from the
shared state at each scrape, so every API process answers the same.

No API key: Prometheus scrapes without one, as it does ``/healthz``. The answer names
tenants and routes (never runs, arguments or secrets); keep it off the public internet
by where the API listens (127.0.0.1 by default) or by the proxy in front of it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from runtime import metrics
from runtime.service import RuntimeService
from runtime.wiring import build_metric_sources

router = APIRouter()


def _registry(request: Request) -> CollectorRegistry:
    reg = getattr(request.app.state, "metrics_registry", None)
    if reg is None:
        svc: RuntimeService = request.app.state.svc
        sources = build_metric_sources(svc)
        reg = metrics.registry(lambda: sources)
        request.app.state.metrics_registry = reg
    return reg


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    # the reads block (Redis, SQL): off the event loop
    body = await run_in_threadpool(generate_latest, _registry(request))
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
