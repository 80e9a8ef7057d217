"""OpenTelemetry spans, exported over OTLP/HTTP to a local receiver (``tests.otlp_stub``).

The HTTP API runs in the test process and a real prefork Celery worker in another one,
both pointed at the receiver by ``AGENTRT_OTEL_ENDPOINT``: a web app's submit (with its
W3C ``traceparent``) and the run's steps on the worker share one trace id, the run's
stored ``trace_id`` is that id, the spans carry their attributes, and no secret argument
or model payload appears in any byte exported. Without an endpoint the SDK is never
imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import otel, telemetry
from runtime.settings import Settings
from tests.api_support import serve
from tests.conftest import TEST_CONFIG
from tests.otlp_stub import OtlpStub, ReceivedSpan
from tests.support import ROOT, Deployment, wait_for

#: a web app's own trace and span, sent to the API as a W3C traceparent
WEB_TRACE = uuid.uuid4().hex
WEB_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def stub() -> Iterator[OtlpStub]:
    server = OtlpStub()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def otel_deployment(
    stub: OtlpStub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("otel")
    dep = Deployment.create(
        name=f"o{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp,
        extra_env={"AGENTRT_OTEL_ENDPOINT": stub.url},
    )
    try:
        # this process (the API's) has spans on now, as `agentrt api` would
        assert telemetry.installed() is not None
        yield dep
    finally:
        dep.close()
        tracer = telemetry.installed()
        telemetry.install(None)
        otel._configured = None
        if isinstance(tracer, otel.OtelTracer):
            tracer.provider.shutdown()


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


def _ancestors(spans: list[ReceivedSpan], span: ReceivedSpan) -> list[str]:
    """The parent ids above ``span``, nearest first, up to one outside ``spans``."""
    by_id = {s.span_id: s for s in spans}
    chain = [span.parent_id]
    while chain[-1] in by_id and len(chain) < 20:
        chain.append(by_id[chain[-1]].parent_id)
    return chain


def test_an_api_submit_and_its_steps_on_a_worker_share_one_trace(
    stub: OtlpStub, otel_deployment: Deployment
) -> None:
    dep = otel_deployment
    # the worker's spans name their service apart from the API's
    dep.env["OTEL_SERVICE_NAME"] = "agentrt-worker"
    dep.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    dep.start_worker(concurrency=1)
    pin = str(uuid.uuid4().int)[:12]
    reply = f"reply-{uuid.uuid4().hex}"
    script = [
        {"type": "tool_call", "tool": "vault.unlock", "args": {"vault_id": "v-otel", "pin": pin}},
        {"type": "reply", "text": reply},
    ]
    with serve(dep) as api, api.client(api.key()) as client:
        answer = client.post(
            "/v1/runs",
            json={"route": "r.boundary", "goal": "trace me", "input": {"script": script}},
            headers={"traceparent": f"00-{WEB_TRACE}-{WEB_SPAN}-01"},
        )
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["runId"]
    # a run submitted from Python with no span current: its own trace, the one it stores
    plain = dep.submit_script([{"type": "reply", "text": reply}], route="r.boundary")
    for rid in (run_id, plain.run_id):
        done = dep.svc.wait(rid, timeout=90)
        assert done.status == "succeeded" and done.stop_reason == "completed", done
    run = dep.svc.get(run_id)
    # the run adopted the web app's trace: what `agentrt trace` shows is the backend's id
    assert run.trace_id == WEB_TRACE
    assert plain.trace_id != WEB_TRACE
    telemetry.flush()  # the API's spans (the worker's go out every 100 ms)

    names = {"agentrt.submit", "agentrt.run", "agentrt.step", "agentrt.model_call",
             "agentrt.policy", "agentrt.tool_call"}  # fmt: skip

    def whole_trace() -> list[ReceivedSpan] | None:
        spans = stub.spans(WEB_TRACE)
        steps = [s for s in spans if s.name == "agentrt.step"]
        return spans if names <= {s.name for s in spans} and len(steps) == 2 else None

    spans = wait_for(whole_trace, timeout=60, message="the run's spans from API and worker")
    submit = _one(spans, "agentrt.submit")
    admission = _one(spans, "agentrt.run")
    policy = _one(spans, "agentrt.policy")
    tool = _one(spans, "agentrt.tool_call")
    steps = sorted(
        (s for s in spans if s.name == "agentrt.step"), key=lambda s: s.attrs["agentrt.step"]
    )
    # one trace across two processes: the caller -> the API -> admission -> each step
    # FastAPI's own request spans (its built-in telemetry, when there) continued the
    # caller's traceparent and the submit span nests under them, else it continues it itself
    assert submit.service == "agentrt" and _ancestors(spans, submit)[-1] == WEB_SPAN
    assert admission.service == "agentrt" and admission.parent_id == submit.span_id
    assert admission.span_id == f"{telemetry.run_span_id(run_id):016x}"
    for step in steps:
        assert step.service == "agentrt-worker" and step.parent_id == admission.span_id
    assert [s.attrs["agentrt.step"] for s in steps] == [0, 1]
    assert policy.parent_id == steps[0].span_id and tool.parent_id == steps[0].span_id
    assert {s.service for s in (policy, tool)} == {"agentrt-worker"}
    # attributes: ids, tenant, route, outcomes, stop reason
    assert submit.attrs["agentrt.run_id"] == run_id and submit.attrs["agentrt.tenant"] == "t1"
    for span in (admission, *steps):
        assert span.attrs["agentrt.run_id"] == run_id
        assert span.attrs["agentrt.tenant"] == "t1" and span.attrs["agentrt.route"] == "r.boundary"
    assert admission.attrs["agentrt.status"] == "queued"
    assert steps[0].attrs["agentrt.status"] == "running"
    assert "agentrt.stop_reason" not in steps[0].attrs
    assert steps[1].attrs["agentrt.stop_reason"] == "completed"
    assert steps[1].attrs["agentrt.status"] == "succeeded"
    assert policy.attrs["agentrt.policy_effect"] == "allow"
    assert policy.attrs["agentrt.tool"] == "vault.unlock" and policy.attrs["agentrt.policy_rule"]
    assert tool.attrs["agentrt.tool"] == "vault.unlock" and tool.attrs["agentrt.tool_ok"] is True

    # the Python submit: its own trace, the stored trace id, rooted at its admission span
    def plain_trace() -> list[ReceivedSpan] | None:
        found = stub.spans(plain.trace_id)
        return found if {"agentrt.run", "agentrt.step"} <= {s.name for s in found} else None

    own = wait_for(plain_trace, timeout=60, message="the Python-submitted run's spans")
    root = _one(own, "agentrt.run")
    assert root.parent_id == "" and root.attrs["agentrt.run_id"] == plain.run_id
    assert all(s.parent_id == root.span_id for s in own if s.name == "agentrt.step")

    # the tool's secret argument and the model's payload reach no exported byte
    raw = stub.raw()
    assert raw
    for body in raw:
        assert pin.encode() not in body and reply.encode() not in body
        assert b"trace me" not in body


def test_spans_carry_only_the_allowed_attributes() -> None:
    exporter = InMemorySpanExporter()
    tracer = otel.build("http://127.0.0.1:9/v1/traces", "agentrt", SimpleSpanProcessor(exporter))
    before = telemetry.installed()
    telemetry.install(tracer)
    try:
        row = {"run_id": "a" * 32, "trace_id": "b" * 32, "tenant_id": "t1", "route": "r.x",
               "status": "queued"}  # fmt: skip
        with telemetry.run_span(row):
            pass
        with telemetry.step_span(row, 3, 1) as step:
            step.set("agentrt.stop_reason", "completed")
            step.set("agentrt.tool_args", json.dumps({"pin": "1234"}))
            with telemetry.span("agentrt.tool_call", tool="vault.unlock", args={"pin": "1234"}):
                pass
            with pytest.raises(ValueError), telemetry.span("agentrt.model_call", model="m"):
                raise ValueError("the model said: secret 1234")
    finally:
        telemetry.install(before)
        tracer.provider.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"agentrt.run", "agentrt.step", "agentrt.tool_call", "agentrt.model_call"}
    for s in spans.values():
        assert s.context.trace_id == int("b" * 32, 16)
        assert set(s.attributes or {}) <= telemetry.ATTRIBUTES
        assert "1234" not in json.dumps(dict(s.attributes or {}))
        assert not s.events  # no exception event: its message may quote a secret
    assert spans["agentrt.step"].parent.span_id == telemetry.run_span_id("a" * 32)
    assert spans["agentrt.step"].attributes["agentrt.step"] == 3
    assert spans["agentrt.model_call"].attributes["agentrt.error_type"] == "ValueError"
    assert spans["agentrt.model_call"].status.description == "ValueError"


def test_without_an_endpoint_the_tracing_sdk_is_never_imported(tmp_path: Path) -> None:
    code = """
import sys
from runtime import telemetry
from runtime.settings import Settings
from runtime.wiring import start_telemetry
import runtime.api.app, runtime.step.runner, runtime.submissions
assert telemetry.endpoint(Settings()) is None and not start_telemetry(Settings())
with telemetry.step_span({"run_id": "a" * 32, "trace_id": "b" * 32}, 0, 0) as span:
    span.set("agentrt.step", 0)
assert telemetry.new_trace_id() != telemetry.new_trace_id()
# (redis-py 8 loads the SDK's metrics package itself when it is installed: not ours)
ours = ("runtime.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
loaded = sorted(m for m in sys.modules if m.startswith(ours))
assert not loaded, loaded
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTRT_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry.endpoint(Settings()) is None
    assert telemetry.endpoint(Settings(otel_endpoint="")) is None
    base = Settings(otel_endpoint="http://collector:4318/")
    assert telemetry.endpoint(base) == "http://collector:4318/v1/traces"
    full = Settings(otel_endpoint="https://collector/v1/traces")
    assert telemetry.endpoint(full) == "https://collector/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://std:4318")
    assert telemetry.endpoint(Settings()) == "http://std:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://std:4318/custom")
    assert telemetry.endpoint(Settings()) == "http://std:4318/custom"
    # ours wins over the standard variables
    assert telemetry.endpoint(base) == "http://collector:4318/v1/traces"
    # credentials in the URL (they would be logged) and other schemes are refused
    for bad in ("ftp://collector", "http://user:pw@collector:4318", "collector:4318"):
        with pytest.raises(ValueError, match="otel_endpoint"):
            Settings(otel_endpoint=bad)
