"""How ``agentrt queues`` shows the scheduler: a JSON shape for scripts, Rich for people."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runtime.cli.render import FitTable, cell, line, number_column, text_column
from runtime.scheduling.scheduler import PRIORITIES
from runtime.scheduling.view import QueuesView, RateLimitState, TenantQueues

# --- JSON ------------------------------------------------------------------------------


def queues_json(view: QueuesView) -> dict[str, Any]:
    return {
        "namespace": view.namespace,
        "tenant": view.tenant,
        "nowMs": view.now_ms,
        "capacity": {
            "processes": view.capacity,
            "dispatchLimit": view.dispatch_limit,
            "inFlight": view.in_flight,
            "workers": [
                {"name": w.name, "processes": w.processes, "expiresInS": w.expires_in_s}
                for w in view.workers
            ],
        },
        "queued": view.queued,
        "delayed": view.delayed,
        "tenants": [_tenant_json(t) for t in view.tenants],
        "routes": [
            {
                "route": r.route,
                "inFlight": r.in_flight,
                "limit": r.limit,
                "full": r.full,
                "queued": r.queued,
                "maxQueued": r.max_queued,
                "onQueueFull": r.on_queue_full,
                "parkedTenants": r.parked_tenants,
            }
            for r in view.routes
        ],
        "parked": [{"tenant": t.tenant, "waitingFor": t.parked} for t in view.parked],
        "leases": {
            "total": view.leases_total,
            "items": [
                {
                    "runId": lease.item.run_id,
                    "step": lease.item.step_no,
                    "tenant": lease.item.tenant,
                    "route": lease.item.route,
                    "priority": lease.item.priority,
                    "expiresInS": lease.expires_in_s,
                }
                for lease in view.leases
            ],
        },
        "bulkheads": [
            {
                "tool": b.tool,
                "holders": len(b.holders),
                "maxConcurrency": b.max_concurrency,
                "calls": b.holders,
            }
            for b in view.bulkheads
        ],
        "rateLimits": [_rate_json(r) for r in view.rate_limits],
    }


def _tenant_json(t: TenantQueues) -> dict[str, Any]:
    return {
        "tenant": t.tenant,
        "weight": t.weight,
        "queued": t.queued,
        "byPriority": t.by_priority,
        "ready": t.ready,
        "delayed": t.delayed,
        "inFlight": t.in_flight,
        "maxConcurrency": t.max_concurrency,
        "maxQueued": t.max_queued,
        "parked": t.parked,
    }


def _rate_json(r: RateLimitState) -> dict[str, Any]:
    return {
        "name": r.name,
        "kind": r.kind,
        "subject": r.subject,
        "limit": r.limit.limit,
        "periodS": r.limit.period_s,
        "burst": r.limit.burst,
        "aheadMs": round(r.ahead_ms, 1),
        "toleranceMs": round(r.tolerance_ms, 1),
        "available": r.available,
        "throttling": r.throttling,
        "retryAfterMs": round(r.retry_after_ms, 1),
    }


# --- people ----------------------------------------------------------------------------


def queues_view(view: QueuesView) -> RenderableType:
    parts: list[RenderableType] = [_summary(view)]
    parts.append(_tenants_table(view) if view.tenants else Text("no queued steps", style="dim"))
    parts.append(_routes_table(view))
    if view.leases:
        parts.append(_leases_table(view))
    if view.bulkheads:
        parts.append(_bulkheads_table(view))
    if view.rate_limits:
        parts.append(_rates_table(view))
    return Group(*parts)


def _summary(view: QueuesView) -> Text:
    workers = line(", ".join(f"{w.name} ({w.processes})" for w in view.workers) or "none")
    scope = f" · tenant {line(view.tenant)}" if view.tenant else ""
    capacity_style = "bold" if view.capacity else "bold red"
    return Text.assemble(
        ("namespace ", "bold"),
        f"{line(view.namespace)}{scope}\n",
        ("capacity ", "bold"),
        (f"{view.capacity} processes", capacity_style),
        f" · {len(view.workers)} worker{'' if len(view.workers) == 1 else 's'}: {workers}\n",
        ("in flight ", "bold"),
        f"{view.in_flight} / dispatch limit {view.dispatch_limit} · ",
        ("queued ", "bold"),
        f"{view.queued} ({view.delayed} delayed)",
    )


def _cap(used: int, limit: int | None) -> Text:
    if limit is None:
        return Text(f"{used} / -")
    return Text(f"{used} / {limit}", style="bold yellow" if used >= limit else "")


def _parked_text(where: str | None) -> Text:
    if where is None:
        return Text("-", style="dim")
    if where == "tenant_cap":
        return Text("tenant cap", style="yellow")
    return Text(f"route {line(where.removeprefix('route:'))}", style="yellow")


#: column headers of the priority classes, short enough for an 80-column terminal
_PRIORITY_HEADERS = {"critical": "crit", "high": "high", "normal": "norm", "low": "low"}


def _tenants_table(view: QueuesView) -> Table:
    """Queued steps (ready + delayed) per tenant and priority; the ready count is in the
    JSON (queued - delayed)."""
    table = FitTable(title="queued per tenant x priority", title_justify="left", show_edge=False)
    text_column(table, "tenant")
    for name in (*(_PRIORITY_HEADERS[p] for p in PRIORITIES), "delayed", "in flight"):
        number_column(table, name)
    text_column(table, "parked")
    for t in view.tenants:
        table.add_row(
            cell(t.tenant),
            *(_count(t.by_priority[p]) for p in PRIORITIES),
            _count(t.delayed),
            _cap(t.in_flight, t.max_concurrency),
            _parked_text(t.parked),
        )
    return table


def _count(n: int) -> Text:
    return Text(str(n), style="" if n else "dim")


def _routes_table(view: QueuesView) -> Table:
    table = FitTable(title="routes", title_justify="left", show_edge=False)
    text_column(table, "route")
    number_column(table, "in flight")
    number_column(table, "queued")
    text_column(table, "parked tenants")
    for r in view.routes:
        queued = f"{r.queued}" + (f" / {r.max_queued}" if r.max_queued else "")
        table.add_row(
            cell(r.route),
            _cap(r.in_flight, r.limit),
            Text(queued, style="" if r.queued else "dim"),
            cell(", ".join(r.parked_tenants)) if r.parked_tenants else Text("-", style="dim"),
        )
    return table


def _leases_table(view: QueuesView) -> Table:
    title = f"leases ({len(view.leases)} of {view.leases_total}, soonest expiry first)"
    table = FitTable(title=title, title_justify="left", show_edge=False)
    table.add_column("run id", no_wrap=True)  # ids are never cut
    number_column(table, "step")
    text_column(table, "tenant")
    text_column(table, "route")
    number_column(table, "expires")
    for lease in view.leases:
        expires = (
            Text(f"{lease.expires_in_s:.1f}s")
            if lease.expires_in_s >= 0
            else Text("lapsed", style="red")
        )
        table.add_row(
            cell(lease.item.run_id),
            str(lease.item.step_no),
            cell(lease.item.tenant),
            cell(lease.item.route),
            expires,
        )
    return table


def _bulkheads_table(view: QueuesView) -> Table:
    table = FitTable(title="tool bulkheads", title_justify="left", show_edge=False)
    text_column(table, "tool")
    number_column(table, "holders")
    for b in view.bulkheads:
        table.add_row(cell(b.tool), _cap(len(b.holders), b.max_concurrency))
    return table


def _rates_table(view: QueuesView) -> Table:
    """Each limiter: how far its schedule runs ahead of now, the units (requests or tokens)
    one take may have now, and, when even one unit would be refused, the wait."""
    table = FitTable(title="rate limits", title_justify="left", show_edge=False)
    text_column(table, "limiter")
    for name in ("rate", "burst", "ahead", "free"):
        number_column(table, name)
    table.add_column("state", no_wrap=True)
    for r in view.rate_limits:
        if r.throttling:
            state = Text(f"wait {r.retry_after_ms / 1000:.1f}s", style="bold yellow")
        elif r.ahead_ms > 0:
            state = Text("ok", style="green")
        else:
            state = Text("idle", style="dim")
        table.add_row(
            cell(r.name),
            f"{r.limit.limit}/{r.limit.period_s:g}s",
            str(r.limit.burst),
            f"{r.ahead_ms / 1000:.1f}s",
            str(r.available),
            state,
        )
    return table
