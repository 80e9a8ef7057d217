"""How the CLI shows runs and traces: JSON shapes for scripts, Rich renderables for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runtime.contract import RunView, TraceEvent

STATUS_STYLE = {
    "queued": "blue",
    "running": "cyan",
    "waiting": "yellow",
    "succeeded": "green",
    "failed": "red",
    "refused": "magenta",
    "cancelled": "dim",
}

_KIND_STYLE = {
    "admission": "bold",
    "stop": "bold",
    "policy_decision": "yellow",
    "validation": "cyan",
    "tool_start": "green",
    "tool_end": "green",
    "budget_exhausted": "red",
    "lock_busy": "magenta",
}


# --- JSON shapes -----------------------------------------------------------------------


def run_json(view: RunView) -> dict[str, Any]:
    """The RuntimeRun contract (camelCase, as the seed writes it) plus operator fields."""
    return view.model_dump(mode="json", by_alias=True)


def step_json(step: dict[str, Any]) -> dict[str, Any]:
    proposal = step.get("proposal") or {}
    return {
        "step": step["step_no"],
        "kind": step["kind"],
        "tool": proposal.get("tool"),
        "outcome": step["outcome"],
        "inputTokens": step["input_tokens"],
        "outputTokens": step["output_tokens"],
        "durationMs": step["duration_ms"],
        "startedAt": _iso(step["started_at"]),
    }


def spend_json(spend: dict[str, int]) -> dict[str, Any]:
    camel: dict[str, Any] = {_camel(k): v for k, v in spend.items()}
    camel["costUsd"] = spend.get("cost_micro_usd", 0) / 1_000_000
    return camel


def effect_json(effect: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": effect["step_no"],
        "tool": effect["tool"],
        "sideEffectClass": effect["side_effect_class"],
        "status": effect["status"],
        "idempotencyKey": effect["idempotency_key"],
        "fencingToken": effect["fencing_token"],
        "attempts": effect["attempts"],
        "error": effect["error"],
    }


def decision_json(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": decision["step_no"],
        "tool": decision["tool"],
        "decision": decision["decision"],
        "ruleId": decision["rule_id"],
        "reasonCodes": decision["reason_codes"],
        "policyVersion": decision["policy_version"],
    }


def trace_json(events: list[TraceEvent]) -> list[dict[str, Any]]:
    start = events[0].at if events else None
    out = []
    for event in events:
        item = event.model_dump(mode="json", by_alias=True)
        item["offsetS"] = round(_offset(start, event.at), 6)
        out.append(item)
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _iso(value: Any) -> Any:
    return _aware(value).isoformat() if isinstance(value, datetime) else value


# --- people ----------------------------------------------------------------------------


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def age(value: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - _aware(value)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def runs_view(views: list[RunView], width: int) -> RenderableType:
    """A table when it fits the terminal, else two lines per run: ids are never cut."""
    if _table_width(views) <= width:
        return runs_table(views)
    lines = []
    for v in views:
        lines.append(
            Text.assemble(
                (v.run_id, "bold"),
                "  ",
                status_text(v.status.value),
                "  ",
                v.stop_reason or "-",
            )
        )
        lines.append(
            Text(
                f"    {v.tenant_id} / {v.route} · {v.steps} steps · {age(v.created_at)} ago",
                style="dim",
            )
        )
    return Group(*lines)


def _row_cells(v: RunView) -> tuple[str, ...]:
    reason = v.stop_reason or "-"
    return (v.run_id, v.tenant_id, v.route, v.status.value, reason, str(v.steps), age(v.created_at))


def _table_width(views: list[RunView]) -> int:
    cells = [_row_cells(v) for v in views]
    widest = [max(len(row[i]) for row in cells) for i in range(7)] if cells else [0] * 7
    # a separator and padding around each of the 7 columns; headers are at least 6 wide
    return sum(max(w, 6) for w in widest) + 3 * 7


def runs_table(views: list[RunView]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for name in ("run id", "tenant", "route", "status", "stop reason", "steps", "age"):
        table.add_column(name, no_wrap=True, justify="right" if name == "steps" else "left")
    for v in views:
        table.add_row(
            v.run_id,
            escape(v.tenant_id),
            escape(v.route),
            status_text(v.status.value),
            escape(v.stop_reason or "-"),
            str(v.steps),
            age(v.created_at),
        )
    return table


def run_details(
    view: RunView,
    steps: list[dict[str, Any]],
    spend: dict[str, int],
    effects: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
) -> RenderableType:
    parts: list[RenderableType] = [_contract_grid(view)]
    if steps:
        parts.append(_steps_table(steps))
    if decisions:
        parts.append(_decisions_table(decisions))
    if effects:
        parts.append(_effects_table(effects))
    parts.append(
        Text.assemble(
            ("spend ", "bold"),
            f"{spend.get('tokens', 0):,} tokens · {spend.get('model_calls', 0)} model calls · "
            f"{spend.get('tool_calls', 0)} tool calls · "
            f"${spend.get('cost_micro_usd', 0) / 1_000_000:.6f} · "
            f"{spend.get('wall_clock_ms', 0)} ms",
        )
    )
    if view.output is not None:
        parts.append(Text.assemble(("output ", "bold"), compact(view.output, 500)))
    return Group(*parts)


def _contract_grid(v: RunView) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    vs = v.version_set
    rows: list[tuple[str, str | Text]] = [
        ("run", v.run_id),
        ("status", status_text(v.status.value)),
        ("stop reason", v.stop_reason or "-"),
        ("tenant / route", f"{v.tenant_id} / {v.route}"),
        ("goal", v.goal),
        ("actor", v.actor_id),
        ("trace / request", f"{v.trace_id} / {v.request_id}"),
        ("idempotency key", v.idempotency_key or "-"),
        ("autonomy / risk", f"{v.autonomy_level} / {v.risk_class}"),
        ("mode / priority", f"{v.execution_mode} / {v.priority}"),
        ("workflow step", v.workflow_step or "-"),
        ("allowed tools", ", ".join(v.allowed_tools) or "-"),
        ("versions", f"model {vs.model} · prompt {vs.prompt} · policy {vs.policy}"),
        ("", f"tools {vs.tool_schema} · retriever {vs.retriever or '-'} · {vs.harness}"),
        ("budget policy", v.budget_policy_version),
        ("approval", v.approval_id or "-"),
        ("checkpoint", v.checkpoint_ref or "-"),
        ("created", _iso(v.created_at)),
        ("started", _iso(v.started_at) if v.started_at else "-"),
        ("finished", _iso(v.finished_at) if v.finished_at else "-"),
    ]
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    table = Table(title="steps", title_justify="left", show_edge=False)
    for name in ("#", "kind", "tool", "outcome", "tokens", "ms"):
        table.add_column(name, justify="right" if name in ("#", "tokens", "ms") else "left")
    for s in steps:
        tool = (s.get("proposal") or {}).get("tool") or "-"
        tokens = s["input_tokens"] + s["output_tokens"]
        table.add_row(
            str(s["step_no"]),
            s["kind"],
            escape(str(tool)),
            escape(s["outcome"]),
            str(tokens),
            str(s["duration_ms"]),
        )
    return table


def _decisions_table(decisions: list[dict[str, Any]]) -> Table:
    table = Table(title="policy decisions", title_justify="left", show_edge=False)
    for name in ("#", "tool", "decision", "rule", "policy"):
        table.add_column(name)
    for d in decisions:
        table.add_row(
            str(d["step_no"]),
            escape(d["tool"]),
            d["decision"],
            escape(d["rule_id"] or "default"),
            d["policy_version"],
        )
    return table


def _effects_table(effects: list[dict[str, Any]]) -> Table:
    table = Table(title="side effects", title_justify="left", show_edge=False)
    for name in ("#", "tool", "class", "status", "idempotency key", "fence", "attempts"):
        table.add_column(name)
    for e in effects:
        table.add_row(
            str(e["step_no"]),
            escape(e["tool"]),
            e["side_effect_class"],
            e["status"],
            e["idempotency_key"],
            str(e["fencing_token"] if e["fencing_token"] is not None else "-"),
            str(e["attempts"]),
        )
    return table


# --- the trace timeline ----------------------------------------------------------------


def trace_lines(events: list[TraceEvent]) -> list[Text]:
    """One line per event: ``+0.012s  step 1  policy_decision  allow kb.search (default_allow)``."""
    start = events[0].at if events else None
    lines = []
    for e in events:
        step = "admit " if e.step is None else f"step {e.step}"
        lines.append(
            Text.assemble(
                (f"+{_offset(start, e.at):.3f}s ", "dim"),
                f"{step:<7} ",
                (f"{e.kind:<16}", _KIND_STYLE.get(e.kind, "")),
                " ",
                describe(e.kind, e.data),
            )
        )
    return lines


def describe(kind: str, d: dict[str, Any]) -> str:
    """The key data of one trace event, in words."""
    describer = _DESCRIBERS.get(kind)
    if describer is not None:
        try:
            return describer(d)
        except (KeyError, TypeError, AttributeError):
            pass  # an older or newer event shape: fall back to its raw fields
    return " ".join(f"{k}={compact(v, 80)}" for k, v in d.items())


def _admission(d: dict[str, Any]) -> str:
    if d.get("decision") == "admitted":
        return f"admitted {d.get('route')} priority={d.get('priority')}"
    return f"refused {d.get('code')}: {d.get('detail')}"


def _proposal(d: dict[str, Any]) -> str:
    p = d.get("proposal") or {}
    usage = d.get("usage") or {}
    tokens = f" ({usage.get('input_tokens', 0)}+{usage.get('output_tokens', 0)} tokens)"
    kind = p.get("type", "?")
    if kind == "tool_call":
        return f"tool_call {p.get('tool')} {compact(p.get('args', {}), 80)}{tokens}"
    if kind == "reply":
        return f"reply {compact(p.get('text', ''), 60)}{tokens}"
    if kind == "stop":
        return f"stop {p.get('reason') or ''}{tokens}".replace("  ", " ")
    return f"{compact(p, 80)}{tokens}"


def _validation(d: dict[str, Any]) -> str:
    if d.get("ok"):
        return f"ok {d.get('type')} {d.get('tool') or ''}".rstrip()
    errors = d.get("errors") or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    where = f" {first.get('loc')}: {first.get('msg')}" if first else ""
    return f"invalid {d.get('code')} {d.get('tool') or ''}{where}".replace("  ", " ")


def _amounts(amounts: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in amounts.items() if v) or "nothing"


def _tool_end(d: dict[str, Any]) -> str:
    if d.get("ok"):
        return f"{d['tool']} ok {d.get('duration_ms', 0)}ms"
    return f"{d['tool']} error {d.get('error_code')}: {d.get('error')}"


_DESCRIBERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "admission": _admission,
    "step_started": lambda d: f"attempt {d['attempt']}",
    "budget_reserve": lambda d: f"reserve {_amounts(d['amounts'])}",
    "budget_settle": lambda d: f"settle {_amounts(d['actual'])}",
    "budget_exhausted": lambda d: f"{d['dimension']} in {d['scope']}",
    "proposal": _proposal,
    "proposal_resumed": lambda d: f"resumed {d['tool']}",
    "validation": _validation,
    "policy_decision": lambda d: f"{d['effect']} {d['tool']} ({d['rule']})",
    "lock_acquired": lambda d: f"{d['lock']} fence={d['fence']}",
    "lock_busy": lambda d: (
        f"{d['lock']} busy: wait {d['waits']}, held {d['retry_after_ms']}ms more"
    ),
    "tool_start": lambda d: f"{d['tool']} key={d['idempotency_key']} timeout={d['timeout_s']}s",
    "tool_end": _tool_end,
    "checkpoint": lambda d: f"{d['outcome']} -> {d['status']}",
    "stop": lambda d: f"{d['reason']} ({d['status']})",
}


def compact(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _offset(start: datetime | None, at: datetime) -> float:
    return 0.0 if start is None else (_aware(at) - _aware(start)).total_seconds()
