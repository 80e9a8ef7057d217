"""Approvals: the human side of a gated call - list, show, approve, deny, stats, expiry.

``rt.approvals`` (wired in ``runtime.wiring``). A policy rule that requires approval or
escalates makes the run wait (``runtime.step.approval``) with one pending approval bound to
the exact action. Deciding it:

* **approve**: the approval becomes ``approved`` and the run ``running`` in one
  transaction, then the step after the one that asked is queued through the scheduler; it
  runs the kept call only if the digest it recomputes is the approved one, and spends the
  approval with the call's claim (single use).
* **deny** (a reason is required): the run stops ``approval_denied:<actor>`` (refused), or
  - on a route with ``on_approval_denied: tell_model`` - the denial goes back to the model
  as the call's error and the run goes on.

Checked before anything is written: an unknown id, or one of another tenant's runs, is
``ApprovalNotFound`` (a ``RunNotFound``); a decided, expired or spent approval, or one
whose run no longer waits for it, is ``ApprovalClosed``; the run's own submitter may not
decide it on a route of risk class ``high`` (``ApprovalForbidden``). A decision is written
with a conditional update on the approval's status, so of two deciders one wins.

The reconciler calls ``expire_due`` each round: a pending approval past its expiry is
``expired`` and its run stops ``approval_expired`` (failed).
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import redis
from pydantic import BaseModel

from runtime import admission, stop_reasons
from runtime.budgets import extension
from runtime.config import RuntimeConfig
from runtime.errors import (
    AgentRuntimeError,
    ApprovalClosed,
    ApprovalForbidden,
    ApprovalNotFound,
    InvalidRequest,
    RunNotFound,
)
from runtime.scheduling.scheduler import Ops, Outcome, item_of
from runtime.step.approval import BUDGET_EXTENSION, canonical_action
from runtime.step.pending import DENIED as DENIED_CALL
from runtime.step_record import WorkflowStep, workflow_step
from runtime.store.approvals import (
    APPROVED,
    CONSUMED,
    DENIED,
    EXPIRED,
    PENDING,
    STATUSES,
    ApprovalStore,
    RunMove,
)
from runtime.store.db import utcnow
from runtime.store.runs import RunStore
from runtime.tracing import TraceBuffer

log = logging.getLogger("agentrt.approvals")

#: most approvals one ``list`` returns
MAX_LIST_LIMIT = 1000
#: a decider goes into the stop reason (``approval_denied:<actor>``, 200 characters)
MAX_ACTOR_CHARS = 180
MAX_REASON_CHARS = 2000
#: decided approvals ``stats`` reads (newest first)
STATS_WINDOW = 10_000
_APPROVAL_ID = re.compile(r"[A-Za-z0-9_\-]{1,40}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: control characters a reason may not carry (tab and newlines are fine)
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


#: a run's trace events, as the store inserts them
Events = list[dict[str, Any]]


class Scheduling(Protocol):
    def schedule(self, ops: Ops) -> Outcome: ...


class ApprovalView(BaseModel):
    """One approval as the API and ``agentrt approvals --json`` show it."""

    approval_id: str
    tenant: str
    run_id: str
    #: the step that asked
    step: int
    route: str
    tool: str
    tool_version: str
    policy_version: str
    #: SHA-256 of the exact action (RFC 8785 canonical JSON)
    digest: str
    #: what the approver is shown: the canonical arguments, secrets redacted
    args: Any
    rule: str
    effect: str
    owner: str | None
    approvers: Any
    submitted_by: str
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    latency_ms: int | None
    consumed_by: str | None
    consumed_at: datetime | None

    def canonical_action(self) -> str:
        """The RFC 8785 canonical JSON of the exact action this approval covers: its SHA-256
        is ``digest`` (what an approver is shown, and can check, before deciding)."""
        return canonical_action(
            tool=self.tool,
            tool_version=self.tool_version,
            args=self.args,
            policy_version=self.policy_version,
            tenant=self.tenant,
            run_id=self.run_id,
            step_no=self.step,
        ).decode()


def view(row: dict[str, Any]) -> ApprovalView:
    return ApprovalView(
        approval_id=row["approval_id"],
        tenant=row["tenant_id"],
        run_id=row["run_id"],
        step=int(row["step_no"]),
        route=row["route"],
        tool=row["tool"],
        tool_version=row["tool_version"],
        policy_version=row["policy_version"],
        digest=row["digest"],
        args=row["args"],
        rule=row["rule_id"],
        effect=row["effect"],
        owner=row["owner"],
        approvers=row["approvers"],
        submitted_by=row["submitted_by"],
        status=row["status"],
        requested_at=row["requested_at"],
        expires_at=row["expires_at"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        reason=row["reason"],
        latency_ms=row["latency_ms"],
        consumed_by=row["consumed_by"],
        consumed_at=row["consumed_at"],
    )


class ApprovalReads:
    """The reads (``list``, ``get``, ``stats``): SQL only, for read-only commands too."""

    def __init__(self, *, store: ApprovalStore) -> None:
        self.store = store

    def list(
        self,
        tenant: str | None = None,
        status: str | None = PENDING,
        owner: str | None = None,
        route: str | None = None,
        limit: int = 50,
    ) -> list[ApprovalView]:
        """Oldest request first; ``status=None``: every status."""
        for name, value in (("tenant", tenant), ("owner", owner), ("route", route)):
            _check_name(name, value)
        if status is not None and status not in STATUSES:
            raise InvalidRequest(("status",), f"status must be one of {', '.join(STATUSES)}")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidRequest(("limit",), f"limit must be an integer 1..{MAX_LIST_LIMIT}")
        rows = self.store.find(
            tenant_id=tenant, status=status, owner=owner, route=route, limit=limit
        )
        return [view(r) for r in rows]

    def get(self, approval_id: str, tenant: str | None = None) -> ApprovalView:
        return view(self._row(approval_id, tenant))

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """Latency p50/p95 per route (of the newest ``STATS_WINDOW`` decisions), pending
        count and the oldest pending request's age."""
        _check_name("tenant", tenant)
        now = utcnow()
        per_route: dict[str, list[int]] = {}
        for route, ms in self.store.latencies(tenant, STATS_WINDOW):
            per_route.setdefault(route, []).append(ms)
        pending = {r: (n, oldest) for r, n, oldest in self.store.pending_by_route(tenant)}
        routes: builtins.list[dict[str, Any]] = []
        for route in sorted(set(per_route) | set(pending)):
            latencies = sorted(per_route.get(route, []))
            n, oldest = pending.get(route, (0, None))
            routes.append(
                {
                    "route": route,
                    "decided": len(latencies),
                    "p50_ms": _percentile(latencies, 50),
                    "p95_ms": _percentile(latencies, 95),
                    "pending": n,
                    "oldest_pending_age_s": _age_s(now, oldest),
                }
            )
        ages: builtins.list[float] = [
            r["oldest_pending_age_s"] for r in routes if r["oldest_pending_age_s"] is not None
        ]
        return {
            "routes": routes,
            "pending": sum(r["pending"] for r in routes),
            "oldest_pending_age_s": max(ages, default=None),
        }

    def _row(self, approval_id: str, tenant: str | None) -> dict[str, Any]:
        if not isinstance(approval_id, str) or not _APPROVAL_ID.fullmatch(approval_id):
            raise InvalidRequest(
                ("approval_id",), "approval_id must be 1-40 letters, digits, '_' or '-'"
            )
        _check_name("tenant", tenant)
        row = self.store.get(approval_id, tenant)
        if row is None:
            raise ApprovalNotFound(approval_id)
        return row


class Approvals(ApprovalReads):
    """``rt.approvals``: the reads, and the decisions and expiry that move runs."""

    def __init__(
        self,
        *,
        config: RuntimeConfig,
        store: ApprovalStore,
        runs: RunStore,
        dispatch: Scheduling,
        after_failure: Callable[[dict[str, Any]], None],
    ) -> None:
        super().__init__(store=store)
        self.config = config
        self.runs = runs
        self.dispatch = dispatch
        #: what follows a run that failed (compensation, if its route asks)
        self.after_failure = after_failure

    # --- decisions -------------------------------------------------------------------
    def approve(
        self,
        approval_id: str,
        actor: str,
        reason: str | None = None,
        tenant: str | None = None,
    ) -> ApprovalView:
        """Approve: the run resumes at the step after the one that asked and runs exactly
        the approved call, once."""
        reason = _check_reason(reason, required=False)
        row, run = self._decidable(approval_id, actor, tenant)
        now = utcnow()
        if row["tool"] == BUDGET_EXTENSION:
            return self._grant_extension(row, run, actor, reason, now)
        events = self._decided_events(row, run, APPROVED, actor, reason, now)
        move = RunMove(
            "running",
            {
                "stop_reason": None,
                "updated_at": now,
                "workflow_step": workflow_step(WorkflowStep.APPROVED, row["tool"]),
            },
            events,
        )
        self._decide(row, self._decision(row, APPROVED, actor, reason, now), move)
        self._resume(run, int(row["step_no"]) + 1)
        return self.get(approval_id, row["tenant_id"])

    def _grant_extension(
        self,
        row: dict[str, Any],
        run: dict[str, Any],
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ApprovalView:
        """A budget extension approved: the run's per-run limits grow by exactly the
        amounts the approval showed (``runs.budget_extension``, applied by the ledger at
        every reservation), in the transaction that records the decision and moves the
        run; then the step its budget refused runs again."""
        amount = extension.checked_amount(row["args"])
        granted = extension.granting(run["budget_extension"], amount)
        events = self._decided_events(row, run, CONSUMED, actor, reason, now)
        events.append(
            _event(
                run,
                "budget_extended",
                actor=actor,
                amount=amount,
                requested=extension.requested_of(run["budget_extension"]),
                granted=granted["granted"],
            )
        )
        move = RunMove(
            "running",
            {
                "stop_reason": None,
                "updated_at": now,
                "budget_extension": granted,
                "workflow_step": workflow_step(WorkflowStep.QUEUED),
            },
            events,
        )
        self._decide(row, self._decision(row, CONSUMED, actor, reason, now), move)
        self._resume(run, int(row["step_no"]) + 1)
        return self.get(str(row["approval_id"]), str(row["tenant_id"]))

    def deny(
        self, approval_id: str, actor: str, reason: str, tenant: str | None = None
    ) -> ApprovalView:
        """Deny (a reason is required): the run stops ``approval_denied:<actor>``, or the
        denial goes back to the model (route ``on_approval_denied: tell_model``)."""
        checked = _check_reason(reason, required=True)
        assert checked is not None
        row, run = self._decidable(approval_id, actor, tenant)
        now = utcnow()
        events = self._decided_events(row, run, DENIED, actor, checked, now)
        route = self.config.routes.get(run["route"])
        tell = route is not None and route.on_approval_denied == "tell_model"
        if tell:
            marker = {
                "type": DENIED_CALL,
                "tool": row["tool"],
                "args": row["args"],
                "approval_id": row["approval_id"],
                "denied_by": actor,
                "reason": checked,
            }
            values = {
                "stop_reason": None,
                "updated_at": now,
                "pending_proposal": marker,
                "workflow_step": workflow_step(WorkflowStep.DENIED, row["tool"]),
            }
            move = RunMove("running", values, events, drop_secrets=True)
        else:
            stop = stop_reasons.make("approval_denied", actor)
            events.append(_event(run, "stop", reason=stop, status="refused", actor=actor))
            values = {
                "stop_reason": stop,
                "updated_at": now,
                "finished_at": now,
                "pending_proposal": None,
                "workflow_step": workflow_step(WorkflowStep.FINISHED),
            }
            move = RunMove("refused", values, events, drop_secrets=True)
        self._decide(row, self._decision(row, DENIED, actor, checked, now), move)
        if tell:
            self._resume(run, int(row["step_no"]) + 1)
        return self.get(approval_id, row["tenant_id"])

    # --- expiry (the reconciler) -----------------------------------------------------
    def expire_due(self, now: datetime | None = None, limit: int = 100) -> builtins.list[str]:
        """Expire pending approvals past their expiry; their runs stop ``approval_expired``
        (failed). Returns the expired approvals' ids."""
        clock = now or utcnow()
        return [
            row["approval_id"] for row in self.store.due(clock, limit) if self._expire(row, clock)
        ]

    def _expire(self, row: dict[str, Any], now: datetime) -> bool:
        try:
            run = self.runs.get_run(row["run_id"], row["tenant_id"])
        except RunNotFound:
            return self.store.close(row, EXPIRED, now)
        stop = stop_reasons.make("approval_expired")
        events = [
            _event(run, "approval_expired", approval_id=row["approval_id"], rule=row["rule_id"]),
            _event(run, "stop", reason=stop, status="failed"),
        ]
        move = RunMove(
            "failed",
            {
                "stop_reason": stop,
                "updated_at": now,
                "finished_at": now,
                "pending_proposal": None,
                "workflow_step": workflow_step(WorkflowStep.FINISHED),
            },
            events,
            drop_secrets=True,
        )
        why = self.store.decide(row, {"status": EXPIRED, "decided_at": now}, move)
        if why == "run_moved":  # cancelled meanwhile, say: the approval is closed all the same
            return self.store.close(row, EXPIRED, now)
        if why is not None:
            return False
        log.info("approval %s of run %s expired", row["approval_id"], row["run_id"])
        try:
            self.after_failure(self.runs.get_run(row["run_id"], row["tenant_id"]))
        except AgentRuntimeError:
            log.exception("run %s: after its approval expired", row["run_id"])
        return True

    # --- helpers ---------------------------------------------------------------------
    def _decidable(
        self, approval_id: str, actor: str, tenant: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The approval and its run, checked before anything is written."""
        problem = admission.identity_problem("actor", actor)
        if problem is None and len(actor) > MAX_ACTOR_CHARS:
            problem = f"actor is {len(actor)} characters; at most {MAX_ACTOR_CHARS}"
        if problem is not None:
            raise InvalidRequest(("actor",), problem)
        row = self._row(approval_id, tenant)
        if row["status"] != PENDING:
            raise ApprovalClosed(approval_id, row["status"], _closed_detail(row))
        run = self.runs.get_run(row["run_id"], row["tenant_id"])
        waiting = (
            run["status"] == "waiting"
            and run["approval_id"] == approval_id
            and int(run["next_step"]) == int(row["step_no"]) + 1
        )
        if not waiting:
            raise ApprovalClosed(
                approval_id, row["status"], f"its run is {run['status']} and waits for it no more"
            )
        excluded = (row["approvers"] or {}).get("not") or []
        if actor in excluded or (run["risk_class"] == "high" and actor == run["actor_id"]):
            raise ApprovalForbidden(
                approval_id, actor, "the run's own submitter may not decide it on a high-risk route"
            )
        if row["expires_at"] <= utcnow():
            self._expire(row, utcnow())
            raise ApprovalClosed(approval_id, EXPIRED, f"it expired at {row['expires_at']}")
        return row, run

    def _decide(self, row: dict[str, Any], decision: dict[str, Any], move: RunMove) -> None:
        why = self.store.decide(row, decision, move)
        if why is None:
            return
        now = self.store.get(row["approval_id"], row["tenant_id"]) or row
        if why == "run_moved":
            raise ApprovalClosed(row["approval_id"], now["status"], "its run waits for it no more")
        raise ApprovalClosed(row["approval_id"], now["status"], _closed_detail(now))

    @staticmethod
    def _decision(
        row: dict[str, Any], status: str, actor: str, reason: str | None, now: datetime
    ) -> dict[str, Any]:
        latency = int((now - row["requested_at"]).total_seconds() * 1000)
        return {
            "status": status,
            "decided_by": actor,
            "decided_at": now,
            "reason": reason,
            "latency_ms": max(latency, 0),
        }

    @staticmethod
    def _decided_events(
        row: dict[str, Any],
        run: dict[str, Any],
        status: str,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> Events:
        return [
            _event(
                run,
                "approval_decided",
                approval_id=row["approval_id"],
                decision=status,
                actor=actor,
                reason=reason,
                latency_ms=int((now - row["requested_at"]).total_seconds() * 1000),
            )
        ]

    def _resume(self, run: dict[str, Any], step_no: int) -> None:
        """Queue the run's next step (SQL says it runs; if Redis fails here, the
        reconciler finds the step in no queue and queues it)."""
        try:
            self.dispatch.schedule(Ops().enqueue(item_of(run, step_no)).dispatch(1))
        except redis.RedisError:
            log.warning(
                "run %s resumed; its step %s could not be queued now (the reconciler will)",
                run["run_id"],
                step_no,
                exc_info=True,
            )


def _event(run: dict[str, Any], kind: str, **data: Any) -> dict[str, Any]:
    trace = TraceBuffer(run["run_id"], run["tenant_id"], run["trace_id"], None)
    trace.add(kind, **data)
    return trace.drain()[0]


def _closed_detail(row: dict[str, Any]) -> str:
    if row["status"] == EXPIRED:
        return "it expired; the run stopped (approval_expired)"
    if row["decided_by"]:
        return f"{row['decided_by']} decided it at {row['decided_at']}; a decision is final"
    return "it can no longer be decided"


def _check_name(field: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
        raise InvalidRequest((field,), f"{field} must be 1-100 letters, digits, '_', '.' or '-'")


def _check_reason(reason: str | None, *, required: bool) -> str | None:
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        if required:
            raise InvalidRequest(("reason",), "a denial needs a reason (the model or run gets it)")
        return None
    if not isinstance(reason, str):
        raise InvalidRequest(("reason",), "reason must be a string")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidRequest(
            ("reason",), f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS}"
        )
    if _BAD_TEXT.search(reason):
        raise InvalidRequest(("reason",), "reason may not contain control characters")
    return reason.strip()


def _percentile(sorted_ms: list[int], pct: int) -> int | None:
    """Nearest-rank percentile of sorted values; None for none."""
    if not sorted_ms:
        return None
    rank = max(1, -(-pct * len(sorted_ms) // 100))
    return sorted_ms[rank - 1]


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 3)
