"""Admission: decide whether a request may start, before anything is spent.

Returns a refusal code (or None). Codes: ``unknown_tenant``, ``tenant_disabled``,
``unknown_route``, ``tenant_not_in_scope``, ``route_stopped``, ``invalid_input``,
``input_too_large``, ``invalid_priority``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.config import RuntimeConfig

MAX_GOAL_CHARS = 8000
PRIORITIES = ("critical", "high", "normal", "low")


@dataclass(frozen=True)
class Refusal:
    code: str
    detail: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Backpressure:
    """Queue depths at admission and what they mean for a new run."""

    tenant_queued: int
    route_queued: int
    estimated_wait_s: float


def queue_full(
    config: RuntimeConfig, tenant: str, route: str, pressure: Backpressure
) -> Refusal | None:
    """Over a tenant's or route's ``max_queued``: refuse (``queue_full`` with a retry-after)
    unless the route says to queue anyway (the caller then reports the estimated wait)."""
    route_cfg, tenant_cfg = config.routes[route], config.tenants[tenant]
    over = []
    if tenant_cfg.max_queued is not None and pressure.tenant_queued >= tenant_cfg.max_queued:
        over.append(f"tenant {tenant!r} has {pressure.tenant_queued} queued steps "
                    f"(max_queued {tenant_cfg.max_queued})")  # fmt: skip
    if route_cfg.max_queued is not None and pressure.route_queued >= route_cfg.max_queued:
        over.append(f"route {route!r} has {pressure.route_queued} queued steps "
                    f"(max_queued {route_cfg.max_queued})")  # fmt: skip
    if not over or route_cfg.on_queue_full == "queue":
        return None
    retry = max(1.0, round(pressure.estimated_wait_s, 1))
    return Refusal("queue_full", "; ".join(over) + f"; retry after {retry:g}s", retry)


@dataclass(frozen=True)
class AdmissionRequest:
    tenant: str
    route: str
    goal: str
    input: Any
    actor: str
    priority: str | None = None


def input_size(value: Any) -> int | None:
    """Bytes of the input as JSON, or None if it is not JSON-serialisable."""
    try:
        return len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        return None


def decide(
    config: RuntimeConfig,
    req: AdmissionRequest,
    *,
    route_stopped: bool,
    input_problems: list[str],
) -> Refusal | None:
    tenant = config.tenants.get(req.tenant)
    if tenant is None:
        return Refusal("unknown_tenant", f"tenant {req.tenant!r} is not configured")
    if not tenant.enabled:
        return Refusal("tenant_disabled", f"tenant {req.tenant!r} is disabled")
    route = config.routes.get(req.route)
    if route is None:
        return Refusal("unknown_route", f"route {req.route!r} is not configured")
    if "*" not in route.tenants and req.tenant not in route.tenants:
        return Refusal(
            "tenant_not_in_scope", f"tenant {req.tenant!r} may not use route {req.route!r}"
        )
    if not route.enabled or route_stopped:
        return Refusal("route_stopped", f"route {req.route!r} is stopped")
    if req.priority is not None and req.priority not in PRIORITIES:
        return Refusal("invalid_priority", f"priority must be one of {', '.join(PRIORITIES)}")
    if not isinstance(req.goal, str) or not req.goal.strip():
        return Refusal("invalid_input", "goal must be a non-empty string")
    if len(req.goal) > MAX_GOAL_CHARS:
        return Refusal("input_too_large", f"goal is longer than {MAX_GOAL_CHARS} characters")
    if not isinstance(req.input, dict):
        return Refusal("invalid_input", "input must be a JSON object")
    size = input_size(req.input)
    if size is None:
        return Refusal("invalid_input", "input is not JSON-serialisable")
    if size > route.max_input_bytes:
        return Refusal(
            "input_too_large",
            f"input is {size} bytes; route {req.route!r} accepts {route.max_input_bytes}",
        )
    if input_problems:
        return Refusal("invalid_input", "; ".join(input_problems))
    return None
