"""How the CLI shows runs and traces: JSON shapes for scripts, Rich renderables for people.

Every value the CLI shows a person comes from someone else (a goal, a tool's error, a
poison message) and may carry terminal escape sequences. ``clean`` is the one sanitizer;
``line`` (one-line fields: table cells, trace lines, errors) and ``block`` (multi-line
fields) apply it where values are rendered, and ``SafeConsole``, the console every command
prints with, applies it again to everything it writes, so nothing a value carries reaches
the terminal whatever renders it. ``--json`` output is left exact (``json.dumps`` escapes
control characters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from runtime.statuses import RunStatus

if TYPE_CHECKING:
    from runtime.contract import RunView, TraceEvent

# --- what is rendered ----------------------------------------------------------------------


class VersionsLike(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def tool_schema(self) -> str: ...
    @property
    def retriever(self) -> str | None: ...
    @property
    def harness(self) -> str: ...


class RunLike(Protocol):
    """A run as the views for people read it: a ``RunView`` (the contract) or a
    ``run_rows.PlainRun`` (the same fields, read without pydantic)."""

    @property
    def run_id(self) -> str: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def actor_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def goal(self) -> str: ...
    @property
    def autonomy_level(self) -> str: ...
    @property
    def risk_class(self) -> str: ...
    @property
    def execution_mode(self) -> str: ...
    @property
    def status(self) -> RunStatus: ...
    @property
    def version_set(self) -> VersionsLike: ...
    @property
    def budget_policy_version(self) -> str: ...
    @property
    def workflow_step(self) -> str | None: ...
    @property
    def allowed_tools(self) -> list[str]: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def approval_id(self) -> str | None: ...
    @property
    def checkpoint_ref(self) -> str | None: ...
    @property
    def stop_reason(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def priority(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def output(self) -> Any: ...


class TraceLike(Protocol):
    """A trace event: a ``TraceEvent`` or a ``run_rows.TraceLine``."""

    @property
    def step(self) -> int | None: ...
    @property
    def at(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


# --- sanitizing --------------------------------------------------------------------------

#: escape sequences, removed whole: CSI (7- and 8-bit), OSC/DCS/SOS/PM/APC up to their
#: terminator (or the end), and the short ESC forms (ESC c, ESC ( B, ...)
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|\Z)"
    r"|\x1b[ -/]*[0-~]",
    re.DOTALL,
)
#: what is left after that: C0 controls (but newline and tab), DEL, C1 controls, and the
#: bidi embedding/override/isolate characters that reorder what a terminal shows
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NEWLINE_OR_TAB = re.compile(r"[\t\n]+")


def clean(value: object, *, multiline: bool = False) -> str:
    """``value`` as text that is safe on a terminal: escape sequences and control and bidi
    characters removed; newlines and tabs kept only if ``multiline`` (else each run of them
    becomes one space)."""
    text = value if isinstance(value, str) else str(value)
    if _UNSAFE.search(text):
        text = _CONTROL.sub("", _ESCAPE.sub("", text))
    if not multiline and ("\n" in text or "\t" in text):
        text = _NEWLINE_OR_TAB.sub(" ", text)
    return text


def line(value: object) -> str:
    """A one-line field (a table cell, a trace line, an error): sanitized, on one line."""
    return clean(value)


def block(value: object) -> str:
    """A multi-line field (a goal, a traceback): sanitized, newlines and tabs kept."""
    return clean(value, multiline=True)


def markup(value: object) -> str:
    """A one-line value to put inside Rich markup: sanitized and markup-escaped."""
    return escape(line(value))


class SafeConsole(Console):
    """A Console that never writes a control character or escape sequence from a value.

    Strings are sanitized before Rich parses them, and every segment again before it is
    written; Rich's own styles and cursor controls are not touched."""

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: Literal["default", "left", "center", "right", "full"] | None = None,
        overflow: Literal["fold", "crop", "ellipsis", "ignore"] | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: Callable[[str | Text], Text] | None = None,
    ) -> Text:
        return super().render_str(
            block(text),
            style=style,
            justify=justify,
            overflow=overflow,
            emoji=emoji,
            markup=markup,
            highlight=highlight,
            highlighter=highlighter,
        )

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and _UNSAFE.search(segment.text):
                yield Segment(block(segment.text), segment.style)
            else:
                yield segment


STATUS_STYLE = {
    "queued": "blue",
    "running": "cyan",
    "waiting": "yellow",
    "succeeded": "green",
    "failed": "red",
    "refused": "magenta",
    "cancelled": "dim",
    "cancel_requested": "yellow",
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


# --- tables that fit the terminal --------------------------------------------------------

#: a text column is never cut below this many cells (or its header)
MIN_TEXT_WIDTH = 6


class FitTable(Table):
    """A table that fits the width it is rendered at by cutting its text columns.

    Rich, when a table of ``no_wrap`` columns is too wide, shrinks every column evenly,
    numbers included, until a count column disappears. Here the text columns
    (``text_column``) give way first, widest first, each cut with an ellipsis down to
    ``MIN_TEXT_WIDTH``; number columns (``number_column``) keep their width."""

    def __init__(self, *headers: Any, **kw: Any) -> None:
        super().__init__(*headers, **kw)
        #: indexes of the columns that may be cut
        self.shrinkable: set[int] = set()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        _fit(self, console, options)
        yield from super().__rich_console__(console, options)


def number_column(table: Table, name: str, **kw: Any) -> None:
    """Numbers are never wrapped, cut or squeezed: at least as wide as the header."""
    table.add_column(name, justify="right", no_wrap=True, min_width=len(name), **kw)


def text_column(table: Table, name: str, **kw: Any) -> None:
    """Text that gives way in a narrow terminal (in a ``FitTable``): one line, cut with an
    ellipsis."""
    table.add_column(name, no_wrap=True, overflow="ellipsis", **kw)
    if isinstance(table, FitTable):
        table.shrinkable.add(len(table.columns) - 1)


def _fit(table: FitTable, console: Console, options: ConsoleOptions) -> None:
    wide = options.update_width(1 << 16)
    for i in table.shrinkable:  # a table rendered again starts from its natural widths
        table.columns[i].max_width = None
    excess = Measurement.get(console, wide, table).maximum - options.max_width
    if excess <= 0:
        return
    widths: dict[int, int] = {}
    floors: dict[int, int] = {}
    for i in sorted(table.shrinkable):
        column = table.columns[i]
        cells = [column.header, *column.cells]
        widths[i] = max(Measurement.get(console, wide, c).maximum for c in cells)
        floors[i] = min(widths[i], max(MIN_TEXT_WIDTH, cell_len(str(column.header))))
    while excess > 0:
        shrinkable = [i for i in widths if widths[i] > floors[i]]
        if not shrinkable:
            break  # only numbers and short text left: Rich does the rest
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    for i, width in widths.items():
        table.columns[i].max_width = width


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


def details_json(
    view: RunView,
    steps: list[dict[str, Any]],
    spend: dict[str, int],
    effects: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
) -> dict[str, Any]:
    """``runs show --json``: the contract, then what ``run_details`` shows people."""
    return {
        "run": run_json(view),
        "steps": [step_json(s) for s in steps],
        "policyDecisions": [decision_json(d) for d in decisions],
        "sideEffects": [effect_json(e) for e in effects],
        "spend": spend_json(spend),
    }


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


def runs_view(views: Sequence[RunLike], width: int, now: datetime | None = None) -> RenderableType:
    """A table when it fits the terminal, else two lines per run: ids are never cut."""
    now = now or datetime.now(UTC)
    if _table_width(views, now) <= width:
        return runs_table(views, now)
    lines = []
    for v in views:
        lines.append(
            Text.assemble(
                (line(v.run_id), "bold"),
                "  ",
                status_text(v.status.value),
                "  ",
                line(v.stop_reason or "-"),
            )
        )
        lines.append(
            Text(
                f"    {line(v.tenant_id)} / {line(v.route)} · {v.steps} steps · "
                f"{age(v.created_at, now)} ago",
                style="dim",
            )
        )
    return Group(*lines)


def _row_cells(v: RunLike, now: datetime | None = None) -> tuple[str, ...]:
    return (
        line(v.run_id),
        line(v.tenant_id),
        line(v.route),
        v.status.value,
        line(v.stop_reason or "-"),
        str(v.steps),
        age(v.created_at, now),
    )


def _table_width(views: Sequence[RunLike], now: datetime | None = None) -> int:
    cells = [_row_cells(v, now) for v in views]
    widest = [max(len(row[i]) for row in cells) for i in range(7)] if cells else [0] * 7
    # a separator and padding around each of the 7 columns; headers are at least 6 wide
    return sum(max(w, 6) for w in widest) + 3 * 7


def runs_table(views: Sequence[RunLike], now: datetime | None = None) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for name in ("run id", "tenant", "route", "status", "stop reason", "steps", "age"):
        table.add_column(name, no_wrap=True, justify="right" if name == "steps" else "left")
    for v in views:
        run_id, tenant, route, status, reason, steps, created = _row_cells(v, now)
        table.add_row(
            Text(run_id),
            Text(tenant),
            Text(route),
            status_text(status),
            Text(reason),
            steps,
            created,
        )
    return table


def run_details(
    view: RunLike,
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


# --- one-line reports on a run (Rich markup, every value escaped) ------------------------


def submitted_line(v: RunLike) -> str:
    """``submit``: the run, its status, where it runs and its trace."""
    return (
        f"run [bold]{v.run_id}[/] {status_text(v.status.value).markup} · "
        f"{markup(v.tenant_id)} / {markup(v.route)} · trace {v.trace_id}"
    )


def refused_line(v: RunLike) -> str:
    """``submit`` refused at admission: the reason code and its detail."""
    detail = v.output.get("detail", "") if isinstance(v.output, dict) else ""
    return (
        f"[magenta bold]admission refused the run:[/] {markup(v.stop_reason or '')} - "
        f"{markup(detail)} [dim](stored as run {v.run_id})[/]"
    )


def wait_timeout_line(problem: object) -> str:
    return f"[yellow bold]timeout:[/] {markup(problem)}; is a worker running? (agentrt worker)"


def outcome_lines(v: RunLike) -> list[str]:
    """``submit --wait``: how the run ended, its output and where its trace is."""
    duration = ""
    if v.started_at and v.finished_at:
        duration = f" · {(v.finished_at - v.started_at).total_seconds():.2f}s"
    lines = [
        f"{status_text(v.status.value).markup} · stop reason "
        f"[bold]{markup(v.stop_reason or '-')}[/] · {v.steps} steps{duration}"
    ]
    if v.output is not None:
        lines.append(f"output: {escape(compact(v.output, 400))}")
    lines.append(f"[dim]trace: agentrt trace {v.run_id}[/]")
    return lines


def cancelled_line(v: RunLike) -> str:
    return control_line(v)


def control_line(v: RunLike) -> str:
    """``runs cancel|pause|resume``: where the run is now (a cancel requested, or a pause
    asked for, lands when its step in flight ends: the workflow step says so)."""
    line = f"run {v.run_id} {status_text(v.status.value).markup} · {markup(v.stop_reason or '-')}"
    if v.workflow_step and v.status.value not in ("succeeded", "failed", "refused", "cancelled"):
        line += f" · {markup(v.workflow_step)}"
    return line


def trace_head(v: RunLike) -> str:
    """``trace``: the run above its timeline."""
    return (
        f"run [bold]{v.run_id}[/] · {markup(v.tenant_id)} / {markup(v.route)} · "
        f"{status_text(v.status.value).markup} · {markup(v.stop_reason or '-')} · "
        f"trace {v.trace_id}"
    )


def _contract_grid(v: RunLike) -> Table:
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
        if isinstance(value, Text):
            grid.add_row(key, value)
        else:  # the goal may have lines of its own; every other field is one line
            grid.add_row(key, Text(block(value) if key == "goal" else line(value)))
    return grid


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    table = FitTable(title="steps", title_justify="left", show_edge=False)
    for name in ("#", "kind", "tool", "outcome", "tokens", "ms"):
        if name in ("#", "tokens", "ms"):
            _number_column(table, name)
        else:
            _text_column(table, name)
    for s in steps:
        proposal = s.get("proposal")
        tool = (proposal.get("tool") if isinstance(proposal, dict) else None) or "-"
        tokens = s["input_tokens"] + s["output_tokens"]
        table.add_row(
            str(s["step_no"]),
            cell(s["kind"]),
            cell(tool),
            cell(s["outcome"]),
            str(tokens),
            str(s["duration_ms"]),
        )
    return table


def _decisions_table(decisions: list[dict[str, Any]]) -> Table:
    table = FitTable(title="policy decisions", title_justify="left", show_edge=False)
    _number_column(table, "#")
    for name in ("tool", "decision", "rule", "policy"):
        _text_column(table, name)
    for d in decisions:
        table.add_row(
            str(d["step_no"]),
            cell(d["tool"]),
            cell(d["decision"]),
            cell(d["rule_id"] or "default"),
            cell(d["policy_version"]),
        )
    return table


def _effects_table(effects: list[dict[str, Any]]) -> Table:
    table = FitTable(title="side effects", title_justify="left", show_edge=False)
    for name in ("#", "tool", "class", "status", "idempotency key", "fence", "attempts"):
        if name in ("#", "fence", "attempts"):
            _number_column(table, name)
        else:
            _text_column(table, name)
    for e in effects:
        table.add_row(
            str(e["step_no"]),
            cell(e["tool"]),
            cell(e["side_effect_class"]),
            cell(e["status"]),
            cell(e["idempotency_key"]),
            str(e["fencing_token"] if e["fencing_token"] is not None else "-"),
            str(e["attempts"]),
        )
    return table


def _number_column(table: Table, name: str) -> None:
    number_column(table, name)


def _text_column(table: Table, name: str) -> None:
    text_column(table, name)


def cell(value: object) -> Text:
    """A table cell from a value: one line, sanitized, not parsed as markup."""
    return Text(line(value))


# --- the trace timeline ----------------------------------------------------------------


def trace_lines(events: Sequence[TraceLike]) -> list[Text]:
    """One line per event: ``+0.012s  step 1  policy_decision  allow kb.search (default_allow)``."""
    start = events[0].at if events else None
    lines = []
    for e in events:
        step = "admit " if e.step is None else f"step {e.step}"
        lines.append(
            Text.assemble(
                (f"+{_offset(start, e.at):.3f}s ", "dim"),
                f"{step:<7} ",
                (f"{line(e.kind):<16}", _KIND_STYLE.get(e.kind, "")),
                " ",
                line(describe(e.kind, e.data)),
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
    """``value`` on one line, sanitized, cut to ``limit`` characters."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str, sort_keys=False)
        except (ValueError, RecursionError):  # a cycle, or nested deeper than JSON goes
            text = repr(value)
    text = line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _offset(start: datetime | None, at: datetime) -> float:
    return 0.0 if start is None else (_aware(at) - _aware(start)).total_seconds()
