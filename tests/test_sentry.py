"""Sentry error reporting against a local HTTP endpoint standing in for Sentry.

The real SDK sends its envelopes to ``SentryStub`` (stdlib ``http.server`` in a thread):
a real worker dead-letters a run whose tool logs and echoes its secret argument, and the
HTTP API answers 500 to a request carrying an API key and a secret body. The expected
events arrive with their tags, and no secret appears in any byte that was sent.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
import yaml
from fastapi import Depends

from runtime import report_context
from runtime.api.app import create_app, init_error_reporting
from runtime.api.auth import authorized
from runtime.error_reporting import REMOVED, init_sentry, scrub_breadcrumb, scrub_event
from runtime.settings import Settings
from runtime.store.dead_letters import DeadLetterFilter
from runtime.tracing import REDACTED
from tests.api_support import ALL_SCOPES, serve_app
from tests.conftest import TEST_CONFIG
from tests.support import Deployment, wait_for

PIN = "80412977"
#: a credential of a shape the runtime knows (an OpenAI key)
OPENAI_KEY = "sk-test" + "Q" * 24


class SentryStub:
    """Accepts ``POST /api/<project>/envelope/`` and keeps every raw envelope, decompressed."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                ok = self.path.startswith("/api/") and self.path.endswith("/envelope/")
                if ok:
                    with stub.lock:
                        stub.envelopes.append(body)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def raw(self) -> list[bytes]:
        with self.lock:
            return list(self.envelopes)

    def events(self) -> list[dict[str, Any]]:
        """Every ``event`` item of every envelope (header line, then item header and
        payload lines)."""
        found = []
        for envelope in self.raw():
            lines = envelope.split(b"\n")[1:]
            for header, payload in zip(lines[::2], lines[1::2], strict=False):
                if header and json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sentry_config(tmp: Path) -> Path:
    """The test deployment plus the careless tool and a route that retries it."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["tool_modules"] = [*config["tool_modules"], "tests.sentry_tools"]
    config["tools"]["sentry.unlock"] = {"version": "1"}
    config["routes"]["r.sentry"] = {
        "task_class": "test",
        "risk_class": "low",
        "autonomy_level": "bounded_autonomous",
        "proposer": "scripted",
        "allowed_tools": ["sentry.unlock"],
        "budget_policy": "standard",
        "retry_policy": "quick",
        "max_steps": 4,
        "step_timeout_s": 10,
    }
    path = tmp / "runtime.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stub() -> Iterator[SentryStub]:
    server = SentryStub()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def sentry_deployment(
    stub: SentryStub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("sentry")
    dep = Deployment.create(
        name=f"y{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp / 'agentrt.db'}",
        config=sentry_config(tmp),
        home=tmp,
        extra_env={
            "AGENTRT_SENTRY_DSN": stub.dsn,
            "AGENTRT_SENTRY_ENVIRONMENT": "test-sentry",
        },
    )
    try:
        yield dep
    finally:
        dep.close()


def nowhere(stub: SentryStub, *secrets: str) -> None:
    for n, envelope in enumerate(stub.raw()):
        for secret in secrets:
            assert secret.encode() not in envelope, f"envelope {n} holds a secret: {envelope!r}"


# --- a real worker ----------------------------------------------------------------------
def test_a_dead_lettered_step_is_reported_with_its_class_and_ids_and_no_secret(
    stub: SentryStub, sentry_deployment: Deployment
) -> None:
    dep = sentry_deployment
    dep.start_worker(concurrency=1)
    vault = f"v{uuid.uuid4().hex[:8]}"
    call = {"type": "tool_call", "tool": "sentry.unlock", "args": {"vault_id": vault, "pin": PIN}}
    run = dep.submit_script([call, {"type": "reply", "text": "done"}], route="r.sentry")

    done = dep.svc.wait(run.run_id, timeout=90)
    assert done.status == "failed" and done.stop_reason == "dead_lettered:exhausted"
    # the secret did reach the tool, three times (the quick retry policy's attempts)
    pins = dep.svc.tool_redis.lrange(dep.svc.keys.demo(f"sentry:{vault}:pins"), 0, -1)
    assert [p.decode() for p in pins] == [PIN] * 3

    def of_run(kind: str) -> list[dict[str, Any]]:
        """The run's events whose message (or log line) says ``kind``."""
        return [
            e
            for e in stub.events()
            if e.get("tags", {}).get("run_id") == run.run_id
            and kind in (e.get("message") or e.get("logentry", {}).get("formatted") or "")
        ]

    (dead,) = wait_for(lambda: of_run("dead letter:"), timeout=60, message="the dead letter")
    tags = dead["tags"]
    assert dead["level"] == "error" and dead["environment"] == "test-sentry"
    assert dead["fingerprint"] == ["agentrt.steps", "exhausted"]
    assert tags["dead_letter_class"] == "exhausted" and tags["queue"] == "agentrt.steps"
    assert tags["error_type"] == "backend_unavailable"
    assert tags["tenant"] == "t1" and tags["route"] == "r.sentry"
    (entry,) = dep.svc.dead_letters.find(DeadLetterFilter(run_id=run.run_id), limit=None)
    assert tags["trace_id"] == run.trace_id and tags["step"] == str(entry["step_no"])
    assert dead["contexts"]["dead_letter"]["entry_id"] == entry["id"]
    # the tool's error log of each attempt was reported too, the pin cut out of it
    logged = wait_for(
        lambda: found if len(found := of_run("refused pin")) >= 3 else None,
        timeout=60,
        message="the tool's three error logs",
    )
    for event in logged:
        assert event["tags"]["trace_id"] == run.trace_id and event["tags"]["route"] == "r.sentry"
        assert f"refused pin {REDACTED}" in event["logentry"]["formatted"]
        assert event["logentry"]["params"] == REMOVED
    nowhere(stub, PIN)


# --- the HTTP API -----------------------------------------------------------------------
@pytest.fixture
def sentry_in_this_process(sentry_deployment: Deployment) -> Iterator[None]:
    """Sentry on in the test process (as ``agentrt api`` turns it on), off again after."""
    assert init_error_reporting(sentry_deployment.settings)
    try:
        yield
    finally:
        client = sentry_sdk.get_client()
        client.flush(timeout=10)
        client.close()
        sentry_sdk.get_global_scope().set_client(None)


def test_an_api_500_is_reported_with_its_ids_without_the_key_or_the_body(
    stub: SentryStub, sentry_deployment: Deployment, sentry_in_this_process: None
) -> None:
    dep = sentry_deployment
    run_id = uuid.uuid4().hex
    body_secret = "hunter2-" + uuid.uuid4().hex[:8]

    def boom(run_id: str, payload: dict[str, Any]) -> None:
        # a bug that quotes a credential it was handed
        raise RuntimeError(f"upstream refused run {run_id} with {OPENAI_KEY}")

    def add_boom(app: Any) -> None:
        app.add_api_route(
            "/v1/boom/{run_id}",
            boom,
            methods=["POST"],
            dependencies=[Depends(authorized("runs:read"))],
        )

    key = dep.svc.api_keys.create("t1", ALL_SCOPES, actor="test").secret
    with serve_app(_with(create_app(dep.svc), add_boom)) as base:
        response = httpx.post(
            f"{base}/v1/boom/{run_id}?note=x",
            headers={"Authorization": f"Bearer {key}", "Cookie": f"session={body_secret}"},
            json={"password": body_secret, "note": OPENAI_KEY},
            timeout=30,
        )
    assert response.status_code == 500

    def reported() -> list[dict[str, Any]]:
        return [
            e
            for e in stub.events()
            if e.get("tags", {}).get("run_id") == run_id
            and any(
                v.get("type") == "RuntimeError" for v in e.get("exception", {}).get("values", [])
            )
        ]

    events = wait_for(reported, timeout=60, message="the API's error event")
    for event in events:
        assert event["tags"]["tenant"] == "t1"
        (error,) = [v for v in event["exception"]["values"] if v["type"] == "RuntimeError"]
        assert error["value"] == f"upstream refused run {run_id} with {REDACTED}"
        for frame in error.get("stacktrace", {}).get("frames", []):
            assert "vars" not in frame
        request = event.get("request", {})
        assert set(request) <= {"method", "url", "headers"}
        assert not {"authorization", "cookie"} & {h.lower() for h in request.get("headers", {})}
    assert any(e.get("request", {}).get("method") == "POST" for e in events)
    nowhere(stub, PIN, key, body_secret, OPENAI_KEY, "agrt_")


def _with(app: Any, change: Any) -> Any:
    change(app)
    return app


# --- the scrubber and the settings, alone ------------------------------------------------
def test_the_scrubber_keeps_the_shape_and_drops_every_secret_and_payload() -> None:
    secret_pin = "55120934"
    api_key = "agrt_0123456789ab_" + "s" * 30
    event: dict[str, Any] = {
        "level": "error",
        "message": f"call failed with pin {secret_pin} and {OPENAI_KEY}",
        "request": {
            "method": "POST",
            "url": "http://api/v1/runs",
            "query_string": f"token={secret_pin}",
            "data": {"input": {"pin": secret_pin}},
            "cookies": {"session": "c00kie-value"},
            "env": {"REMOTE_ADDR": "10.0.0.1"},
            "headers": {
                "Authorization": f"Bearer {api_key}",
                "Cookie": "session=c00kie-value",
                "X-Api-Key": api_key,
                "Content-Type": "application/json",
            },
        },
        "extra": {
            "celery-job": {"task_name": "agentrt.step", "args": [secret_pin], "kwargs": {}},
            "proposal": {"tool": "vault.unlock", "args": {"pin": secret_pin}},
            "prompt": "system: you hold sk-abc",
            "db_password": "pa55word-value",
            "note": f"key {api_key}",
        },
        "contexts": {"run": {"tool_result": {"balance": 10}, "messages": ["hi"]}},
        "exception": {
            "values": [
                {
                    "type": "ToolExecutionError",
                    "value": f"wrong pin {secret_pin}",
                    "stacktrace": {"frames": [{"function": "f", "vars": {"pin": secret_pin}}]},
                }
            ]
        },
        "logentry": {"message": "pin %s", "params": [secret_pin], "formatted": f"pin {secret_pin}"},
        "breadcrumbs": {"values": [{"message": f"retrying {secret_pin}", "data": {"pin": 1}}]},
    }
    run = {"tenant_id": "t9", "route": "r.x", "run_id": "a" * 32, "trace_id": "b" * 32}
    with report_context.step_context():
        report_context.note_run(run, 4)
        report_context.note_secrets([secret_pin])
        out = scrub_event(event, {})
        crumb = scrub_breadcrumb({"message": f"log {secret_pin}", "category": "x"}, {})
    text = json.dumps(out) + json.dumps(crumb)
    for secret in (secret_pin, OPENAI_KEY, api_key, "c00kie-value", "pa55word", "10.0.0.1"):
        assert secret not in text
    assert out["tags"] == {
        "tenant": "t9",
        "route": "r.x",
        "run_id": "a" * 32,
        "trace_id": "b" * 32,
        "step": "4",
    }
    assert out["request"] == {
        "method": "POST",
        "url": "http://api/v1/runs",
        "headers": {"Content-Type": "application/json"},
    }
    assert out["extra"]["celery-job"] == {"task_name": "agentrt.step", "args": REMOVED,
                                          "kwargs": REMOVED}  # fmt: skip
    assert out["extra"]["proposal"] == REMOVED and out["extra"]["prompt"] == REMOVED
    assert out["extra"]["db_password"] == REDACTED
    assert out["contexts"]["run"] == {"tool_result": REMOVED, "messages": REMOVED}
    (error,) = out["exception"]["values"]
    assert error["type"] == "ToolExecutionError" and error["value"] == f"wrong pin {REDACTED}"
    assert error["stacktrace"]["frames"] == [{"function": "f", "vars": REMOVED}]
    assert out["message"] == f"call failed with pin {REDACTED} and {REDACTED}"
    assert crumb == {"message": f"log {REDACTED}", "category": "x"}
    # outside the step, its notes are gone: no tags, no secrets from an earlier step
    assert report_context.tags() == {} and report_context.secrets() == ()
    # an event the scrubber cannot read is dropped, never sent unchecked
    assert scrub_event(None, {}) is None


def test_sentry_settings_are_bounded_and_the_dsn_is_never_shown() -> None:
    dsn = "https://f00dfeed1234@o1.ingest.example.com/42"
    settings = Settings(sentry_dsn=dsn, sentry_traces_sample_rate=0.5)
    assert settings.sentry_dsn is not None and settings.sentry_dsn.get_secret_value() == dsn
    assert "f00dfeed1234" not in repr(settings) and "f00dfeed1234" not in str(settings)
    for bad in ("f00dfeed1234", "ftp://f00dfeed1234@host/1", "https://host/1"):
        with pytest.raises(ValueError, match="AGENTRT_SENTRY_DSN") as caught:
            Settings(sentry_dsn=bad)
        assert "f00dfeed1234" not in str(caught.value)
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="sentry_traces_sample_rate"):
            Settings(sentry_traces_sample_rate=rate)
    with pytest.raises(ValueError, match="sentry_environment"):
        Settings(sentry_environment="has space")
    # no DSN: nothing is initialised
    assert Settings().sentry_dsn is None and Settings(sentry_dsn="").sentry_dsn is None
    assert not init_sentry(Settings())
    assert not sentry_sdk.get_client().is_active()
