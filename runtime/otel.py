"""The OpenTelemetry SDK behind ``runtime.telemetry``: imported only when an OTLP endpoint
is configured (``configure``), so a process without one never loads the SDK.

Spans go out over OTLP/HTTP (protobuf) through a batch processor (the SDK restarts its
thread in each forked pool process). A span's exception is recorded by its type only: an
exception's message may quote a tool's argument or a model's reply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime import telemetry
from runtime.settings import Settings
from runtime.telemetry import AttrValue, Span

log = logging.getLogger("agentrt.telemetry")

#: (trace id, span id) the next span must get: a run's admission span
_FORCED: ContextVar[tuple[int, int] | None] = ContextVar("agentrt_otel_forced", default=None)

_PROPAGATOR = TraceContextTextMapPropagator()


class RunIds(RandomIdGenerator):
    """Random ids, except for a run's admission span: the run's trace id (used only when
    there is no parent span) and its derived span id."""

    def generate_trace_id(self) -> int:
        forced = _FORCED.get()
        return forced[0] if forced else super().generate_trace_id()

    def generate_span_id(self) -> int:
        forced = _FORCED.get()
        return forced[1] if forced else super().generate_span_id()


class _SdkSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: AttrValue | None) -> None:
        if key in telemetry.ATTRIBUTES and value is not None:
            self._span.set_attribute(key, value)


class OtelTracer:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("agentrt")

    @contextmanager
    def _span(
        self,
        name: str,
        attrs: Mapping[str, AttrValue],
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        forced: tuple[int, int] | None = None,
    ) -> Iterator[Span]:
        token = _FORCED.set(forced)
        try:
            otel_span = self.tracer.start_span(name, context=context, kind=kind, attributes=attrs)
        finally:
            _FORCED.reset(token)
        with trace.use_span(
            otel_span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                yield _SdkSpan(otel_span)
            except BaseException as exc:
                otel_span.set_attribute("agentrt.error_type", type(exc).__name__)
                otel_span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def child(self, name: str, attrs: Mapping[str, AttrValue]) -> AbstractContextManager[Span]:
        return self._span(name, attrs)

    def of_run(
        self, name: str, trace_id: str, span_id: int | None, attrs: Mapping[str, AttrValue]
    ) -> AbstractContextManager[Span]:
        tid = int(trace_id, 16)
        if name == "agentrt.run":
            # admission: under the caller's span if it has one (same trace id: the run
            # adopted it), else the root of the run's trace
            return self._span(name, attrs, forced=(tid, span_id or 0))
        parent = SpanContext(
            trace_id=tid,
            span_id=span_id or telemetry.run_span_id(str(attrs.get("agentrt.run_id"))),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent), Context())
        return self._span(name, attrs, context=ctx)

    def server(
        self, name: str, headers: Mapping[str, str], attrs: Mapping[str, AttrValue]
    ) -> AbstractContextManager[Span]:
        if trace.get_current_span().get_span_context().is_valid:
            # the web framework's own request span (FastAPI's built-in telemetry uses the
            # global provider) already continued the caller's traceparent: nest under it
            return self._span(name, attrs)
        ctx = _PROPAGATOR.extract(carrier={k.lower(): v for k, v in headers.items()})
        return self._span(name, attrs, context=ctx, kind=SpanKind.SERVER)

    def current_trace_id(self) -> str | None:
        ctx = trace.get_current_span().get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def current(self) -> Span:
        return _SdkSpan(trace.get_current_span())

    def flush(self) -> None:
        self.provider.force_flush(timeout_millis=10_000)


def build(url: str, service: str, processor: SpanProcessor | None = None) -> OtelTracer:
    """A tracer exporting to ``url`` (or to ``processor``'s exporter, for tests)."""
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({"service.name": name}), id_generator=RunIds()
    )
    provider.add_span_processor(processor or BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return OtelTracer(provider)


_configured: str | None = None


def configure(settings: Settings, service: str = "agentrt") -> bool:
    """Install a tracer for this process if an endpoint is configured (once per endpoint);
    whether spans are on."""
    global _configured
    url = telemetry.endpoint(settings)
    if url is None:
        return False
    if _configured == url and telemetry.installed() is not None:
        return True
    tracer = build(url, service)
    telemetry.install(tracer)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # nobody in this process set one: instrumentations (FastAPI, httpx) use ours
        trace.set_tracer_provider(tracer.provider)
    _configured = url
    log.info("OpenTelemetry spans go to %s", url)
    return True
