"""OpenTelemetry spans for runs and steps, through a thin context-manager API.

The runtime marks its stages with ``run_span`` (admission), ``step_span`` (one step) and
``span`` (a model call, a policy decision, a tool call inside the step). With no OTLP
endpoint configured nothing is installed: each call returns one shared no-op context
manager and the OpenTelemetry SDK is never imported. ``runtime.otel`` installs a real
tracer when ``AGENTRT_OTEL_ENDPOINT`` (or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``) is
set (``runtime.wiring``).

One trace per run, whichever process runs which step: the run's ``trace_id`` (stored in its
row, shown by ``agentrt trace``) IS the OpenTelemetry trace id. Admission adopts the trace
of the span current at submit (a web app's request, the HTTP API's submit span), else makes
a new one; its ``agentrt.run`` span gets a span id derived from the run id, so every step
span, on any worker, in any chain, is that span's child without any header: a step is
dispatched by whichever process frees a slot (``runtime.scheduling``), and a chained step
runs inside another run's task (``runtime.step.chain``), so the context current at publish
time is not the run's.

Only the attribute keys in ``ATTRIBUTES`` are ever set: ids, names, outcomes and stop
reasons, never tool arguments, model payloads or secrets.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from runtime.settings import Settings

#: what a span may say (everything else is dropped before it reaches the SDK)
ATTRIBUTES = frozenset(
    {
        "agentrt.run_id",
        "agentrt.tenant",
        "agentrt.route",
        "agentrt.release",
        "agentrt.step",
        "agentrt.attempt",
        "agentrt.status",
        "agentrt.stop_reason",
        "agentrt.outcome",
        "agentrt.risk_class",
        "agentrt.model",
        "agentrt.tool",
        "agentrt.tool_ok",
        "agentrt.policy_effect",
        "agentrt.policy_rule",
        "agentrt.policy_version",
        "agentrt.error_type",
        "http.route",
        "http.method",
    }
)

AttrValue = str | int | float | bool


class Span(Protocol):
    def set(self, key: str, value: AttrValue | None) -> None: ...


class _NoSpan:
    def set(self, key: str, value: AttrValue | None) -> None:
        pass


NO_SPAN: Span = _NoSpan()
_NOOP: AbstractContextManager[Span] = nullcontext(NO_SPAN)


class Tracer(Protocol):
    """What ``runtime.otel`` provides: spans whose parent is the current span, a run's
    admission span, or the remote context of a run or of a request's headers."""

    def child(self, name: str, attrs: Mapping[str, AttrValue]) -> AbstractContextManager[Span]: ...

    def of_run(
        self, name: str, trace_id: str, span_id: int | None, attrs: Mapping[str, AttrValue]
    ) -> AbstractContextManager[Span]: ...

    def server(
        self, name: str, headers: Mapping[str, str], attrs: Mapping[str, AttrValue]
    ) -> AbstractContextManager[Span]: ...

    def current_trace_id(self) -> str | None: ...

    def current(self) -> Span: ...

    def flush(self) -> None: ...


_tracer: Tracer | None = None


def install(tracer: Tracer | None) -> None:
    """Make ``tracer`` this process's (None: back to no spans)."""
    global _tracer
    _tracer = tracer


def installed() -> Tracer | None:
    return _tracer


def endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP traces URL spans go to, or None (no tracing). ``AGENTRT_OTEL_ENDPOINT``
    is a base URL like the standard variable (``/v1/traces`` is added unless given)."""
    base = settings.otel_endpoint
    if base:
        base = base.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    general = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if general:
        return f"{general.rstrip('/')}/v1/traces"
    return None


def run_span_id(run_id: str) -> int:
    """The span id of a run's ``agentrt.run`` span: derived, so a step finds its parent
    from the run id alone (64 bits, never 0, which OpenTelemetry reads as invalid)."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big") or 1


def new_trace_id() -> str:
    """A new run's trace id: the current span's trace (the caller's request), else new."""
    if _tracer is not None:
        current = _tracer.current_trace_id()
        if current is not None:
            return current
    return uuid.uuid4().hex


def _attrs(values: Mapping[str, Any]) -> dict[str, AttrValue]:
    return {
        k: v
        for k, v in values.items()
        if k in ATTRIBUTES and v is not None and isinstance(v, str | int | float | bool)
    }


def _is_trace_id(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 32:
        return False
    try:
        return int(value, 16) != 0
    except ValueError:
        return False


def run_attrs(run: Mapping[str, Any]) -> dict[str, AttrValue]:
    return _attrs(
        {
            "agentrt.run_id": run.get("run_id"),
            "agentrt.tenant": run.get("tenant_id"),
            "agentrt.route": run.get("route"),
            "agentrt.release": run.get("release"),
            "agentrt.risk_class": run.get("risk_class"),
            "agentrt.status": run.get("status"),
            "agentrt.stop_reason": run.get("stop_reason"),
        }
    )


def run_span(row: Mapping[str, Any]) -> AbstractContextManager[Span]:
    """Admission of the run ``row``: the ``agentrt.run`` span, with the run's trace id and
    its derived span id, a child of the current span if there is one."""
    if _tracer is None or not _is_trace_id(row.get("trace_id")):
        return _NOOP
    return _tracer.of_run(
        "agentrt.run", row["trace_id"], run_span_id(row["run_id"]), run_attrs(row)
    )


def step_span(run: Mapping[str, Any], step_no: int, attempt: int) -> AbstractContextManager[Span]:
    """One step of ``run``: an ``agentrt.step`` span, child of the run's admission span
    (whatever span is current: a chained step runs inside another run's task)."""
    if _tracer is None or not _is_trace_id(run.get("trace_id")):
        return _NOOP
    attrs = run_attrs(run)
    attrs.pop("agentrt.status", None)
    attrs.pop("agentrt.stop_reason", None)
    attrs.update({"agentrt.step": step_no, "agentrt.attempt": attempt})
    return _tracer.of_run(
        "agentrt.step", run["trace_id"], run_span_id(str(run.get("run_id"))), attrs
    )


def span(name: str, **attrs: Any) -> AbstractContextManager[Span]:
    """A stage inside the current span (``agentrt.model_call``, ``agentrt.policy``,
    ``agentrt.tool_call``); keyword names are attribute keys without ``agentrt.``."""
    if _tracer is None:
        return _NOOP
    return _tracer.child(name, _attrs({f"agentrt.{k}": v for k, v in attrs.items()}))


def server_span(
    name: str, headers: Mapping[str, str], attrs: Mapping[str, Any] | None = None
) -> AbstractContextManager[Span]:
    """An HTTP request's handling: a child of the framework's request span if there is one,
    else a server span continuing the caller's W3C ``traceparent`` (if it sent one)."""
    if _tracer is None:
        return _NOOP
    return _tracer.server(name, headers, _attrs(attrs or {}))


def current_span() -> Span:
    """The span the caller runs in (a no-op one when there are no spans)."""
    return NO_SPAN if _tracer is None else _tracer.current()


def flush() -> None:
    """Export what is buffered (a worker process about to exit)."""
    if _tracer is not None:
        _tracer.flush()
