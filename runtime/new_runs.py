"""What a submit stores: the row of a new run (admitted or refused) and its first trace
events, and the conflict raised when a held request id names another payload."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from runtime import admission, stop_reasons, telemetry
from runtime.catalog import Catalog
from runtime.contract import RunStatus
from runtime.errors import AdmissionRefused
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.db import utcnow
from runtime.tracing import TraceBuffer


def recorded_versions(catalog: Catalog, route: str) -> tuple[dict[str, Any], str]:
    """(version set, budget policy version) a new run records; ``-`` for what an
    unknown route has none of."""
    config = catalog.config
    route_cfg = config.routes.get(route)
    if route_cfg is not None:
        budget_policy = config.budget_policies[route_cfg.budget_policy]
        return catalog.version_set(route).model_dump(), budget_policy.version
    unknown = {"model": "-", "prompt": "-", "tool_schema": "-", "retriever": None}
    return {
        **unknown,
        "policy": config.policy.version,
        "harness": config.harness_version,
    }, "-"


def row_for(
    catalog: Catalog, req: admission.AdmissionRequest, refusal: admission.Refusal | None
) -> dict[str, Any]:
    """The run row of a prepared request (what it stores of the request:
    ``admission.stored_content``)."""
    config = catalog.config
    now = utcnow()
    route_cfg = config.routes.get(req.route)
    vs, bp_version = recorded_versions(catalog, req.route)
    keep = route_cfg.max_input_bytes if route_cfg else admission.KEEP_REFUSED_INPUT_BYTES
    content = admission.stored_content(req, refusal, keep)
    status = RunStatus.QUEUED if refusal is None else RunStatus.REFUSED
    return {
        "run_id": uuid.uuid4().hex,
        # the caller's trace (a web app's request) if one is current: one trace end to end
        "trace_id": telemetry.new_trace_id(),
        "request_id": req.request_id or uuid.uuid4().hex,
        "actor_id": req.actor,
        "tenant_id": req.tenant,
        "route": req.route,
        "goal": content.goal,
        "autonomy_level": route_cfg.autonomy_level if route_cfg else "advisory",
        "risk_class": route_cfg.risk_class if route_cfg else "high",
        "execution_mode": admission.execution_mode(route_cfg, req),
        "status": status.value,
        "version_set": vs,
        "budget_policy_version": bp_version,
        "policy_version": config.policy.version,
        "workflow_step": "queued" if refusal is None else "refused",
        "allowed_tools": list(route_cfg.allowed_tools) if route_cfg else [],
        "idempotency_key": req.idempotency_key,
        "stop_reason": None if refusal is None else stop_reasons.make("refused", refusal.code),
        "priority": (content.priority or (route_cfg.priority if route_cfg else "normal")),
        "input": content.input,
        "output": content.output,
        "admitted": refusal is None,
        "request_digest": req.digest,
        "created_at": now,
        "updated_at": now,
        "finished_at": now if refusal else None,
        "deadline_at": now + timedelta(seconds=route_cfg.run_timeout_s) if route_cfg else None,
        "started_at": None,
        "approval_id": None,
        "checkpoint_ref": None,
        "pending_proposal": None,
        "next_step": 0,
        "turns": 0,
        "invalid_proposals": 0,
        "tool_errors": 0,
        "lock_waits": 0,
        "attempt": 0,
        "version": 1,
        "release": None,
        "plan": None,
    }


def hold_for_turn(row: dict[str, Any], source: str) -> None:
    """Make an admitted run's row wait for its turn (``runtime.event_ordering``): no step
    queued until the runs of its ordering key before it have ended."""
    row["status"] = RunStatus.WAITING.value
    row["workflow_step"] = workflow_step(WorkflowStep.ORDERED, source)
    row["stop_reason"] = stop_reasons.make("ordered", source)


def request_row(
    catalog: Catalog,
    tenant: str,
    route: str,
    goal: str,
    run_input: Any,
    actor: str,
    request_id: str | None,
    idempotency_key: str | None,
    priority: str | None,
    refusal: admission.Refusal | None,
    execution_mode: str | None = None,
) -> dict[str, Any]:
    """The row ``submit`` stores for this request (for tools and tests that store a run
    directly); ``AdmissionRefused`` for a malformed identity, like ``submit``."""
    req = admission.prepare(
        tenant=tenant,
        route=route,
        goal=goal,
        input=run_input,
        actor=actor,
        request_id=request_id,
        idempotency_key=idempotency_key,
        priority=priority,
        execution_mode=execution_mode,
    )
    return row_for(catalog, req, refusal)


def admission_events(row: dict[str, Any], refusal: admission.Refusal | None) -> list[Any]:
    """The trace events a new run is stored with."""
    trace = TraceBuffer(row["run_id"], row["tenant_id"], row["trace_id"], None)
    if refusal is None:
        trace.add(
            "admission",
            decision="admitted",
            route=row["route"],
            priority=row["priority"],
            version_set=row["version_set"],
            **({"release": row["release"]} if row.get("release") else {}),
        )
        if row["status"] == RunStatus.WAITING.value:  # an event run waits for its turn
            trace.add("waiting_for_turn", reason=row["stop_reason"])
    else:
        detail = row["output"]["detail"]
        trace.add("admission", decision="refused", code=refusal.code, detail=detail)
        trace.add("stop", reason=row["stop_reason"], status=row["status"])
    return trace.drain()


def admission_conflict(
    detail: str, run_id: str | None, fields: tuple[str, ...]
) -> AdmissionRefused:
    return AdmissionRefused("idempotency_conflict", detail, run_id=run_id, fields=fields)


def held_run(req: admission.AdmissionRequest, held: list[dict[str, Any]]) -> dict[str, Any]:
    """The admitted run a repeated request id / idempotency key names, if the payload is
    the same; ``AdmissionRefused`` (``idempotency_conflict``) otherwise."""
    if len(held) > 1:
        by_key = next(r for r in held if r["idempotency_key"] == req.idempotency_key)
        by_id = next(r for r in held if r is not by_key)
        raise admission_conflict(
            f"request_id {req.request_id!r} names run {by_id['run_id']} but "
            f"idempotency_key {req.idempotency_key!r} names run {by_key['run_id']}",
            None,
            ("request_id", "idempotency_key"),
        )
    run = held[0]
    differ = admission.differing_fields(run.get("request_digest"), req.digest)
    if differ:
        if req.idempotency_key is not None and run["idempotency_key"] == req.idempotency_key:
            via = f"idempotency_key {req.idempotency_key!r}"
        else:
            via = f"request_id {req.request_id!r}"
        stored = isinstance(run.get("request_digest"), dict)
        raise admission_conflict(
            f"{via} is held by run {run['run_id']} whose request differs in "
            f"{', '.join(differ)}"
            + ("" if stored else " (stored without a request digest; cannot compare)"),
            run["run_id"],
            tuple(differ),
        )
    return run
