"""Approvals (``approvals:decide``), dead letters (``dlq:operate``) and the queues view
(``runs:read``), each scoped to the key's tenant: another tenant's approval or dead letter
is 404, the same answer as a missing one."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field

from runtime.api.auth import Approver, Operator, Reader, Svc
from runtime.api.runs import END_USER, ID, NAME, actor_of
from runtime.api_keys import Principal
from runtime.approvals import ApprovalView
from runtime.errors import DeadLetterNotFound, InvalidRequest
from runtime.scheduling import view as scheduler_view
from runtime.service import RuntimeService
from runtime.store.dead_letters import DeadLetterFilter

router = APIRouter(prefix="/v1")

Id = Annotated[str, Path(min_length=1, max_length=64, pattern=ID)]
Name = Annotated[str | None, Query(max_length=100, pattern=NAME)]
DL_CLASSES = Literal["exhausted", "poison", "worker_lost", "timeout", "compensation"]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)
    end_user: str | None = Field(default=None, pattern=END_USER)


class Denial(Decision):
    reason: str = Field(min_length=1, max_length=2000)


class Purge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = True
    ids: list[Annotated[str, Field(max_length=64, pattern=ID)]] = Field(
        default_factory=list, max_length=1000
    )
    route: str | None = Field(default=None, max_length=100, pattern=NAME)
    dl_class: DL_CLASSES | None = None
    #: purge every open entry of the tenant (no other filter)
    all: bool = False
    limit: int = Field(default=1000, ge=1, le=10_000)


# --- approvals -----------------------------------------------------------------------


def approval_json(approval: ApprovalView) -> dict[str, Any]:
    """The approval, with ``canonical_action``: the exact bytes its digest covers (RFC 8785
    JSON), so a client shows a person exactly what they approve and can check the digest."""
    return {**approval.model_dump(mode="json"), "canonical_action": approval.canonical_action()}


@router.get("/approvals")
def list_approvals(
    svc: Svc,
    who: Approver,
    status: Literal["pending", "approved", "denied", "expired", "consumed", "all"] = "pending",
    route: Name = None,
    owner: Name = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    wanted = None if status == "all" else status
    found = svc.approvals.list(who.tenant, wanted, owner, route, limit)
    return {"items": [approval_json(a) for a in found]}


@router.get("/approvals/{approval_id}")
def get_approval(approval_id: Id, svc: Svc, who: Approver) -> dict[str, Any]:
    return approval_json(svc.approvals.get(approval_id, who.tenant))


@router.post("/approvals/{approval_id}/approve")
def approve(
    approval_id: Id, svc: Svc, who: Approver, body: Decision | None = None
) -> dict[str, Any]:
    given = body or Decision()
    decided = svc.approvals.approve(
        approval_id, actor_of(who, given.end_user), given.reason, who.tenant
    )
    return approval_json(decided)


@router.post("/approvals/{approval_id}/deny")
def deny(approval_id: Id, body: Denial, svc: Svc, who: Approver) -> dict[str, Any]:
    decided = svc.approvals.deny(approval_id, actor_of(who, body.end_user), body.reason, who.tenant)
    return approval_json(decided)


# --- dead letters ----------------------------------------------------------------------


def _entry(svc: RuntimeService, who: Principal, entry_id: str) -> dict[str, Any]:
    entry = svc.dead_letters.show(entry_id)
    if who.tenant is not None and entry.get("tenant_id") != who.tenant:
        raise DeadLetterNotFound(entry_id)  # another tenant's: as if it did not exist
    return entry


@router.get("/dead-letters")
def list_dead_letters(
    svc: Svc,
    who: Operator,
    status: Literal["open", "retried", "purged", "all"] = "open",
    route: Name = None,
    dl_class: DL_CLASSES | None = None,
    run_id: Annotated[str | None, Query(max_length=64, pattern=ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    f = DeadLetterFilter(
        run_id=run_id,
        tenant=who.tenant,
        route=route,
        dl_class=dl_class,
        status=None if status == "all" else status,
    )
    return {"items": jsonable_encoder(svc.dead_letters.find(f, limit))}


@router.get("/dead-letters/{entry_id}")
def get_dead_letter(entry_id: Id, svc: Svc, who: Operator) -> dict[str, Any]:
    found: dict[str, Any] = jsonable_encoder(_entry(svc, who, entry_id))
    return found


@router.post("/dead-letters/{entry_id}/retry")
def retry_dead_letter(entry_id: Id, svc: Svc, who: Operator) -> dict[str, Any]:
    _entry(svc, who, entry_id)
    f = DeadLetterFilter(ids=(entry_id,), tenant=who.tenant, status=None)
    outcome = svc.dead_letters.retry(f, who.actor)
    return jsonable_encoder(dataclasses.asdict(outcome))  # type: ignore[no-any-return]


@router.post("/dead-letters/purge")
def purge_dead_letters(body: Purge, svc: Svc, who: Operator) -> dict[str, Any]:
    """Mark open entries purged; ``dry_run`` (the default) counts and changes nothing."""
    if not (body.ids or body.route or body.dl_class or body.all):
        raise InvalidRequest(("ids", "route", "dl_class", "all"), "name what to purge, or all")
    f = DeadLetterFilter(
        ids=tuple(body.ids), tenant=who.tenant, route=body.route, dl_class=body.dl_class
    )
    outcome = svc.dead_letters.purge(f, who.actor, dry_run=body.dry_run, limit=body.limit)
    return jsonable_encoder(dataclasses.asdict(outcome))  # type: ignore[no-any-return]


# --- queues ----------------------------------------------------------------------------


@router.get("/queues")
def queues(
    svc: Svc, who: Reader, limit: Annotated[int, Query(ge=0, le=1000)] = 20
) -> dict[str, Any]:
    """The scheduler as the dispatcher sees it (a tenant key: its own queues and leases)."""
    view = scheduler_view.read(svc.redis, svc.keys, svc.config, who.tenant, limit)
    return jsonable_encoder(dataclasses.asdict(view))  # type: ignore[no-any-return]
