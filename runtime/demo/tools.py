"""The demo tool pack: one tool per side-effect class, each showing what the runtime adds.

* ``kb.search``         read: a small in-memory knowledge base
* ``tickets.update``    write, locked per ticket (``ticket:{ticket_id}``) and fenced: the
                        ticket store refuses a write carrying an older fencing token;
                        compensation restores the previous status
* ``payments.refund``   irreversible, external: policy gates it; never repeated when an
                        earlier attempt's outcome is unknown
* ``counter.increment`` write: a bare, non-idempotent INCR that the runtime's journal keeps
                        exactly-once (``ctx.redis_effect``)
* ``reports.generate``  read: fails when asked (``fail: true``) or sleeps (``delay_ms``)
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from runtime.errors import ToolExecutionError
from runtime.tools.context import ToolContext
from runtime.tools.registry import tool

_ARTICLES = [
    {"id": "kb-1", "title": "How refunds work", "body": "Refunds up to 100 EUR are automatic."},
    {"id": "kb-2", "title": "Resetting a password", "body": "Use the account page."},
    {"id": "kb-3", "title": "Shipping delays", "body": "Carriers may take 5 working days."},
    {"id": "kb-4", "title": "Escalating a ticket", "body": "Tag it 'urgent' and assign tier 2."},
]


class SearchArgs(BaseModel):
    query: str = Field(min_length=1, max_length=200)
    top_k: int = Field(default=3, ge=1, le=10)


class SearchResult(BaseModel):
    hits: list[dict[str, str]]


@tool("kb.search", side_effect="read", timeout_s=5)
def kb_search(args: SearchArgs, ctx: ToolContext) -> SearchResult:
    """Search the knowledge base."""
    words = {w.lower() for w in args.query.split()}
    scored = sorted(
        _ARTICLES,
        key=lambda a: -sum(w in (a["title"] + " " + a["body"]).lower() for w in words),
    )
    return SearchResult(hits=[{"id": a["id"], "title": a["title"]} for a in scored[: args.top_k]])


class TicketUpdate(BaseModel):
    ticket_id: str = Field(pattern=r"^[A-Za-z0-9\-]{1,40}$")
    status: Literal["open", "pending", "solved", "closed"]
    note: str = Field(default="", max_length=2000)
    #: simulated work while holding the lock (demo of lock contention)
    hold_ms: int = Field(default=0, ge=0, le=10_000)


class TicketResult(BaseModel):
    ticket_id: str
    previous_status: str | None
    status: str
    fence: int


# Only write when our token is newer than the last one the ticket saw (fencing).
_FENCED_WRITE = """
local last = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < last then return {0, last} end
local previous = redis.call('HGET', KEYS[1], 'status') or ''
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'note', ARGV[3], 'fence', ARGV[1])
return {1, previous}
"""


@tool("tickets.update", side_effect="write", timeout_s=15, lock="ticket:{ticket_id}")
def tickets_update(args: TicketUpdate, ctx: ToolContext) -> TicketResult:
    """Set a ticket's status (locked per ticket, fenced)."""
    if args.hold_ms:
        time.sleep(args.hold_ms / 1000)
    fence = ctx.fencing_token or 0
    key = ctx.keys.demo(f"ticket:{args.ticket_id}")
    ok, previous = ctx.redis.eval(_FENCED_WRITE, 1, key, fence, args.status, args.note)
    if not ok:
        raise ToolExecutionError(f"stale fencing token {fence} < {previous}", code="stale_fence")
    prev = previous.decode() if isinstance(previous, bytes) else previous
    return TicketResult(
        ticket_id=args.ticket_id, previous_status=prev or None, status=args.status, fence=fence
    )


@tickets_update.compensator
def _restore_ticket(args: TicketUpdate, result: dict[str, object], ctx: ToolContext) -> None:
    previous = result.get("previous_status") or "open"
    ctx.redis.hset(ctx.keys.demo(f"ticket:{args.ticket_id}"), "status", str(previous))


class RefundArgs(BaseModel):
    customer_id: str = Field(pattern=r"^cus_[A-Za-z0-9]{1,32}$")
    amount: float = Field(gt=0, le=10_000)
    currency: Literal["EUR", "USD", "GBP"] = "EUR"
    #: simulated provider latency before the refund is made
    delay_ms: int = Field(default=0, ge=0, le=30_000)


class RefundResult(BaseModel):
    refund_id: str
    amount: float
    currency: str


@tool("payments.refund", side_effect="irreversible", timeout_s=10)
def payments_refund(args: RefundArgs, ctx: ToolContext) -> RefundResult:
    """Refund a customer (irreversible; the idempotency key goes to the payment provider)."""
    if args.delay_ms:
        time.sleep(args.delay_ms / 1000)
    ctx.redis.rpush(
        ctx.keys.demo("refunds"), f"{ctx.idempotency_key}:{args.customer_id}:{args.amount}"
    )
    return RefundResult(
        refund_id=f"re_{ctx.idempotency_key.replace(':', '_')}",
        amount=args.amount,
        currency=args.currency,
    )


class IncrementArgs(BaseModel):
    key: str = Field(default="default", pattern=r"^[a-z0-9_\-]{1,40}$")
    by: int = Field(default=1, ge=1, le=1000)
    #: simulated slowness before the write (crash tests kill workers here)
    delay_ms: int = Field(default=0, ge=0, le=30_000)
    #: simulated slowness after the write, before the runtime records it (and here)
    after_ms: int = Field(default=0, ge=0, le=30_000)


class IncrementResult(BaseModel):
    value: int | None


@tool("counter.increment", side_effect="write", timeout_s=40)
def counter_increment(args: IncrementArgs, ctx: ToolContext) -> IncrementResult:
    """INCR a counter: not idempotent by itself; the runtime's journal makes it exactly-once."""
    if args.delay_ms:
        time.sleep(args.delay_ms / 1000)
    key = ctx.keys.demo(f"counter:{args.key}")
    results = ctx.redis_effect(lambda pipe: pipe.incrby(key, args.by))
    if args.after_ms:
        time.sleep(args.after_ms / 1000)
    return IncrementResult(value=int(results[0]) if results else None)


class ReportArgs(BaseModel):
    topic: str = Field(min_length=1, max_length=100)
    fail: bool = False
    delay_ms: int = Field(default=0, ge=0, le=30_000)


class ReportResult(BaseModel):
    title: str
    lines: int


@tool("reports.generate", side_effect="read", timeout_s=20)
def reports_generate(args: ReportArgs, ctx: ToolContext) -> ReportResult:
    """Generate a report (fails on request: the demo's failing tool)."""
    if args.delay_ms:
        time.sleep(args.delay_ms / 1000)
    if args.fail:
        raise ToolExecutionError("report backend returned 503", code="backend_unavailable")
    return ReportResult(title=f"Report on {args.topic}", lines=42)
