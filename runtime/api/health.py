"""``/healthz`` (the process answers; no auth, no I/O) and ``/readyz`` (Redis answers,
SQL answers at the schema head, this process enforces the applied config): 503 naming
what failed. Neither says more than ok/failed and why: no URLs, no credentials."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from runtime.api.auth import Svc
from runtime.api.problems import PROBLEM_JSON, problem_body
from runtime.service import RuntimeService
from runtime.store.migrations import HEAD

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _redis(svc: RuntimeService) -> str | None:
    try:
        svc.redis.ping()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return None


def _sql(svc: RuntimeService) -> str | None:
    try:
        with svc.store.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    if revision != HEAD:
        return f"schema at {revision}, this code needs {HEAD} (agentrt db upgrade)"
    return None


def _config(svc: RuntimeService) -> str | None:
    if svc.drift is not None:
        return "this process's config file differs from the applied one"
    try:
        applied = svc.deployments.applied()
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    if applied is None:
        return "no config applied yet (agentrt config apply)"
    if applied.digest != svc.config_digest:
        return f"config {applied.version} was applied after this process started (restart it)"
    return None


@router.get("/readyz", responses={503: {"description": "not ready; names what failed"}})
def readyz(svc: Svc) -> Any:
    checks = {"redis": _redis(svc), "sql": _sql(svc), "config": _config(svc)}
    shown = {name: problem or "ok" for name, problem in checks.items()}
    failed = [f"{name}: {problem}" for name, problem in checks.items() if problem]
    if failed:
        body = problem_body(503, "not_ready", "; ".join(failed), checks=shown)
        return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)
    return {"status": "ready", "checks": shown}
