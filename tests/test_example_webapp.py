"""The web-app example (examples/webapp) end to end with a real worker: submit through its
endpoint, read its live stream (SSE) until the run is terminal, resume a stream with
``Last-Event-ID``, and decide an approval on a route that requires one (``r.approve``:
every write waits for a human; high risk, so the submitter may not approve it)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from examples.webapp.app import WebappSettings, create_app
from runtime import Runtime
from tests.api_support import is_problem, serve_app
from tests.support import Deployment

REPLY = {"type": "reply", "text": "done"}


def inc(key: str, by: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "by": by}}


@pytest.fixture(scope="module")
def webapp(deployment: Deployment) -> Iterator[httpx.Client]:
    assert isinstance(deployment.svc, Runtime)
    app = create_app(deployment.svc, WebappSettings(tenant="t1", poll_s=0.05))
    with serve_app(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


Frame = dict[str, Any]


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The SSE frames of a response: ``{"id", "event", "data"}`` (data parsed)."""
    frame: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if "event" in frame:
                yield {"id": frame.get("id"), "event": frame["event"], "data": frame["data"]}
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = json.loads(value) if name == "data" else value


@contextmanager
def stream(client: httpx.Client, run_id: str, last: int | None = None) -> Iterator[Iterator[Frame]]:
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield frames(response)


def until(events: Iterator[Frame], stop: Any) -> list[Frame]:
    """Frames up to and including the first that ``stop`` accepts."""
    seen = []
    for frame in events:
        seen.append(frame)
        if stop(frame):
            return seen
    raise AssertionError(f"the stream ended before the frame we waited for: {seen}")


def submit(client: httpx.Client, route: str, script: list[Any], user: str = "alice") -> str:
    made = client.post(
        "/runs",
        json={"user": user, "route": route, "goal": "g", "input": {"script": script},
              "request_id": f"web-{uuid.uuid4().hex}"},
    )  # fmt: skip
    assert made.status_code == 202, made.text
    run_id: str = made.json()["runId"]
    return run_id


def test_the_page_and_its_config(webapp: httpx.Client) -> None:
    page = webapp.get("/")
    assert page.status_code == 200 and "new EventSource(" in page.text
    cfg = webapp.get("/config").json()
    assert cfg["tenant"] == "t1" and {"r.basic", "r.approve"} <= set(cfg["routes"])


def test_submit_and_follow_a_run_live_until_it_ends(webapp: httpx.Client) -> None:
    run_id = submit(webapp, "r.basic", [{"type": "tool_call", "tool": "kb.search",
                                         "args": {"query": "x"}}, REPLY])  # fmt: skip
    with stream(webapp, run_id) as events:
        seen = until(events, lambda f: f["event"] == "end")
    trace = [f for f in seen if f["event"] == "trace"]
    # every trace event once, in order, numbered by its position in the trace
    assert [f["id"] for f in trace] == [str(i) for i in range(1, len(trace) + 1)]
    assert trace[0]["data"]["kind"] == "admission"
    assert {f["data"]["runId"] for f in seen} == {run_id}
    statuses = [f["data"]["status"] for f in seen if f["event"] == "status"]
    assert statuses[-1] == "succeeded"
    assert seen[-1]["data"] == {"runId": run_id, "status": "succeeded", "stopReason": "completed"}
    assert webapp.get(f"/runs/{run_id}").json()["status"] == "succeeded"

    # a browser that reconnects with Last-Event-ID gets only what came after
    with stream(webapp, run_id, last=len(trace) - 1) as events:
        again = until(events, lambda f: f["event"] == "end")
    assert [f["id"] for f in again if f["event"] == "trace"] == [str(len(trace))]
    assert again[-1]["event"] == "end"


def test_a_person_approves_the_exact_action(webapp: httpx.Client, deployment: Deployment) -> None:
    key = f"w{uuid.uuid4().hex[:10]}"
    run_id = submit(webapp, "r.approve", [inc(key, 5), REPLY], user="alice")
    with stream(webapp, run_id) as events:
        seen = until(events, lambda f: f["event"] == "status" and f["data"]["approvalId"])
        waiting = seen[-1]["data"]
        assert waiting["status"] == "waiting"
        assert waiting["stopReason"] == "needs_approval:writes_need_approval"
        approval_id = waiting["approvalId"]

        shown = webapp.get(f"/approvals/{approval_id}").json()
        assert (shown["run_id"], shown["tool"], shown["status"]) == (
            run_id,
            "counter.increment",
            "pending",
        )
        # the exact action: its canonical JSON is what the digest covers, byte for byte
        action = json.loads(shown["canonical_action"])
        assert action["args"] == {"key": key, "by": 5, "delay_ms": 0, "after_ms": 0}
        assert (action["run_id"], action["tenant"], action["step_no"]) == (run_id, "t1", 0)
        digest = hashlib.sha256(shown["canonical_action"].encode()).hexdigest()
        assert digest == shown["digest"] and shown["digest_verified"] is True
        assert approval_id in {a["approval_id"] for a in webapp.get("/approvals").json()["items"]}
        assert deployment.counter(key) == 0  # nothing ran while it waited

        # a high-risk run's submitter may not approve it; someone else may
        own = webapp.post(f"/approvals/{approval_id}/approve", json={"user": "alice"})
        is_problem(own, 403, "approval_forbidden")
        decided = webapp.post(
            f"/approvals/{approval_id}/approve", json={"user": "bob", "reason": "fine"}
        )
        assert decided.status_code == 200, decided.text
        assert (decided.json()["status"], decided.json()["decided_by"]) == ("approved", "user:bob")

        # the same stream goes on to the end
        rest = until(events, lambda f: f["event"] == "end")
    assert rest[-1]["data"]["status"] == "succeeded"
    kinds = [f["data"]["kind"] for f in [*seen, *rest] if f["event"] == "trace"]
    assert kinds.index("approval_requested") < kinds.index("approval_verified")
    assert deployment.counter(key) == 5
    again = webapp.post(f"/approvals/{approval_id}/approve", json={"user": "bob"})
    is_problem(again, 409, "approval_closed")


def test_a_person_denies_and_the_run_stops(webapp: httpx.Client, deployment: Deployment) -> None:
    key = f"w{uuid.uuid4().hex[:10]}"
    run_id = submit(webapp, "r.approve", [inc(key, 7), REPLY], user="alice")
    with stream(webapp, run_id) as events:
        seen = until(events, lambda f: f["event"] == "status" and f["data"]["approvalId"])
        approval_id = seen[-1]["data"]["approvalId"]
        no_reason = webapp.post(f"/approvals/{approval_id}/deny", json={"user": "bob"})
        assert is_problem(no_reason, 422, "invalid_request")["fields"] == ["reason"]
        denied = webapp.post(
            f"/approvals/{approval_id}/deny", json={"user": "bob", "reason": "not today"}
        )
        assert denied.status_code == 200 and denied.json()["status"] == "denied"
        end = until(events, lambda f: f["event"] == "end")[-1]["data"]
    assert (end["status"], end["stopReason"]) == ("refused", "approval_denied:user:bob")
    assert deployment.counter(key) == 0


def test_bad_input_is_a_problem_naming_it(webapp: httpx.Client) -> None:
    body = {"user": "alice", "route": "r.basic", "goal": "g", "input": {"script": [REPLY]}}
    bad_user = webapp.post("/runs", json={**body, "user": "<script>"})
    assert "user" in is_problem(bad_user, 422, "invalid_request")["detail"]
    is_problem(webapp.post("/runs", json={**body, "actor": "admin"}), 422, "invalid_request")
    unknown = is_problem(webapp.post("/runs", json={**body, "route": "nope"}), 404)
    assert unknown["reason"] == "refused:unknown_route" and unknown["run_id"]
    is_problem(webapp.get("/runs/nope"), 404, "not_found")
    is_problem(webapp.get("/runs/bad id!"), 422, "invalid_request")
    is_problem(webapp.get("/approvals/nope"), 404, "not_found")
    missing = webapp.get("/runs/x/events", headers={"Last-Event-ID": "abc"})
    is_problem(missing, 422, "invalid_request")
