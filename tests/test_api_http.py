"""The HTTP API against a real uvicorn server, over a deployment with a real worker
(``deployment``: SQLite and PostgreSQL) or without one (``fresh_deployment``: runs stay
queued). Contract per endpoint, tenant isolation, idempotency under concurrency, keys,
limits, problems, and the SSE stream."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from runtime.store.api_keys import api_keys_t
from runtime.store.dead_letters import DeadLetterFilter
from runtime.store.tables import runs_t
from tests.api_support import Api, is_problem, serve
from tests.support import Deployment, wait_for

REPLY = {"type": "reply", "text": "done"}


def search(q: str = "x") -> dict[str, Any]:
    return {"type": "tool_call", "tool": "kb.search", "args": {"query": q}}


def inc(key: str, by: int = 1) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "counter.increment", "args": {"key": key, "by": by}}


def flaky(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "probe.flaky", "args": {"key": key, "by": 1}}


def boom(app: FastAPI) -> None:
    @app.get("/v1/_boom")
    def _boom() -> None:
        raise RuntimeError("secret-ish internal detail")


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> Iterator[Api]:
    with serve(deployment, boom) as served:
        yield served


@pytest.fixture
def idle(fresh_deployment: Deployment) -> Iterator[Api]:
    with serve(fresh_deployment) as served:
        yield served


def body(route: str = "r.basic", script: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"route": route, "goal": "g", "input": {"script": script or [REPLY]}, **kw}


def finished(api: Api, c: httpx.Client, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = c.get(f"/v1/runs/{run_id}").json()
        terminal = ("succeeded", "failed", "refused", "cancelled", "waiting")
        return run if run["status"] in terminal else None

    found: dict[str, Any] = wait_for(done, timeout=90, message=f"run {run_id}")
    return found


# --- health, auth, problems ------------------------------------------------------------


def test_health_ready_and_openapi(api: Api) -> None:
    with api.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": "ok", "sql": "ok", "config": "ok"}
        spec = c.get("/openapi.json").json()
    for path in ("/v1/runs", "/v1/runs/{run_id}/events", "/v1/approvals/{approval_id}/deny",
                 "/v1/dead-letters/purge", "/v1/queues"):  # fmt: skip
        assert path in spec["paths"]


def test_keys_missing_bad_revoked_expired_and_scopes(api: Api) -> None:
    stored = api.dep.svc.store.count_by("status")
    with api.client() as c:
        is_problem(c.get("/v1/runs"), 401, "unauthorized")
        # a submit without a usable key is 401 before its body is validated, and stores
        # nothing, whatever it holds
        for bad in ({"route": "\x00"}, body()):
            is_problem(c.post("/v1/runs", json=bad), 401, "unauthorized")
    with api.client("not-a-key") as c:
        is_problem(c.post("/v1/runs", json={"route": "\x00"}), 401, "unauthorized")
    with api.client("agrt_0123456789ab_" + "x" * 43) as c:
        unknown = is_problem(c.get("/v1/runs"), 401, "unauthorized")
        assert is_problem(c.post("/v1/runs", json=body()), 401) == unknown
        # a well-formed key nobody holds learns nothing of the body either
        assert is_problem(c.post("/v1/runs", json={"route": "\x00"}), 401) == unknown
    assert api.dep.svc.store.count_by("status") == stored
    reader = api.key("t1", ["runs:read"])
    with api.client(reader) as c:
        assert c.get("/v1/runs").status_code == 200
        missing = is_problem(c.post("/v1/runs", json=body()), 403, "scope_missing")
        assert missing["scope"] == "runs:submit"
        assert is_problem(c.post("/v1/runs", json={"route": "\x00"}), 403) == missing
        # revoked: its very next request fails, with the same answer as an unknown key
        key_id = api.dep.svc.api_keys.authenticate(reader).key_id
        api.dep.svc.api_keys.revoke(key_id, "test")
        assert is_problem(c.get("/v1/runs"), 401) == unknown
        assert is_problem(c.post("/v1/runs", json={"route": "\x00"}), 401) == unknown
    expiring = api.key("t1", ["runs:read"], expires_in=timedelta(hours=1))
    with api.client(expiring) as c:
        assert c.get("/v1/runs").status_code == 200
        key_id = api.dep.svc.api_keys.authenticate(expiring).key_id
        with api.dep.svc.store.engine.begin() as conn:  # its hour is over
            past = datetime.now(UTC) - timedelta(seconds=1)
            conn.execute(
                sa.update(api_keys_t).where(api_keys_t.c.key_id == key_id).values(expires_at=past)
            )
        assert is_problem(c.get("/v1/runs"), 401) == unknown


def test_problems_for_validation_unknown_paths_size_and_internal_errors(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with api.client(api.key()) as c:
        # the body may not name the actor: only the key does
        forged = is_problem(c.post("/v1/runs", json=body(actor="admin")), 422, "invalid_request")
        assert "admin" not in json.dumps(forged)
        is_problem(c.get("/v1/nothing-here"), 404, "not_found")
        is_problem(c.get("/v1/runs", params={"limit": 0}), 422, "invalid_request")
        is_problem(c.get("/v1/runs", params={"cursor": "garbage!"}), 422, "invalid_request")
        big = {"route": "r.basic", "goal": "g", "input": {"blob": "x" * (300 * 1024)}}
        is_problem(c.post("/v1/runs", json=big), 413, "body_too_large")
        # the same body streamed without a Content-Length
        chunks = iter([json.dumps(big).encode()[i : i + 65536] for i in range(0, 310_000, 65536)])
        is_problem(c.post("/v1/runs", content=chunks), 413, "body_too_large")
        with caplog.at_level(logging.ERROR, logger="agentrt.api"):
            crashed = is_problem(c.get("/v1/_boom"), 500, "internal_error")
        assert crashed["error_id"] and "Traceback" not in json.dumps(crashed)
        assert "secret-ish" not in json.dumps(crashed)
        logged = [r for r in caplog.records if crashed["error_id"] in r.getMessage()]
        assert logged and logged[0].exc_info is not None


def test_values_sql_cannot_hold_are_refused_where_they_enter(api: Api) -> None:
    """Found by tests/test_api_fuzz.py on PostgreSQL (its text cannot hold a NUL byte): a
    name or id outside its alphabet is a 422 naming the field, never a 500 from SQL."""
    nul = "r\x00x"
    with api.client(api.key()) as c, api.client(api.key("*", ["ops:admin"])) as ops:
        purges = [{"route": nul}, {"ids": [nul]}, {"ids": ["ok", "a b"]}]
        for purge in purges:
            refused = is_problem(c.post("/v1/dead-letters/purge", json=purge), 422)
            assert (
                refused["reason"] == "invalid_request" and refused["errors"][0]["loc"][0] == "body"
            )
        for path, params in (
            ("/v1/dead-letters", {"run_id": nul}),
            ("/v1/runs", {"route": nul}),
            ("/v1/approvals", {"route": nul}),
        ):
            is_problem(c.get(path, params=params), 422, "invalid_request")
        # a cross-tenant key names the tenant, looked up with the request id before admission
        named = body(tenant=nul, request_id="req-nul")
        is_problem(ops.post("/v1/runs", json=named), 422, "invalid_request")
        is_problem(c.post("/v1/runs", json=body(route=nul)), 422, "invalid_request")
        # in the run's input a NUL is data: admitted and read back as sent
        data = {"route": "r.basic", "goal": "g", "input": {"script": [REPLY], "note": "a\x00b"}}
        made = c.post("/v1/runs", json=data)
        assert made.status_code == 202, made.text
        assert c.get(made.headers["Location"]).json()["input"]["note"] == "a\x00b"


# --- runs --------------------------------------------------------------------------------


def test_submit_get_trace_and_idempotency(api: Api) -> None:
    key = api.key()
    with api.client(key) as c:
        idem = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
        made = c.post("/v1/runs", json=body(end_user="u-42"), headers=idem)
        assert made.status_code == 202, made.text
        run = made.json()
        assert made.headers["Location"] == f"/v1/runs/{run['runId']}"
        key_id = api.dep.svc.api_keys.authenticate(key).key_id
        assert run["actorId"] == f"key:{key_id}:user:u-42" and run["tenantId"] == "t1"
        again = c.post("/v1/runs", json=body(end_user="u-42"), headers=idem)
        assert again.status_code == 200 and again.json()["runId"] == run["runId"]
        conflict = c.post("/v1/runs", json=body(script=[search()], end_user="u-42"), headers=idem)
        is_problem(conflict, 409, "refused:idempotency_conflict")
        # an app's own request id works the same way
        rid = {"request_id": f"r-{uuid.uuid4().hex}"}
        first = c.post("/v1/runs", json=body(**rid))
        assert first.status_code == 202 and first.json()["requestId"] == rid["request_id"]
        repeat = c.post("/v1/runs", json=body(**rid))
        assert repeat.status_code == 200 and repeat.json()["runId"] == first.json()["runId"]
        done = finished(api, c, run["runId"])
        assert done["status"] == "succeeded"
        trace = c.get(f"/v1/runs/{run['runId']}/trace").json()["events"]
        assert trace and all(e["runId"] == run["runId"] for e in trace)


def test_twenty_concurrent_identical_submits_make_one_run(api: Api) -> None:
    key, idem = api.key(), f"c-{uuid.uuid4().hex}"

    def submit(_: int) -> tuple[int, str]:
        with api.client(key) as c:
            r = c.post("/v1/runs", json=body(), headers={"Idempotency-Key": idem})
            return r.status_code, r.json()["runId"]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert len({run_id for _, run_id in answers}) == 1
    assert sorted(code for code, _ in answers) == [200] * 19 + [202]
    with api.dep.svc.store.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).where(runs_t.c.idempotency_key == idem)
        ).scalar()
    assert count == 1


def test_refusals_are_problems_naming_what_is_known(api: Api) -> None:
    with api.client(api.key("t3")) as c:
        unknown = is_problem(c.post("/v1/runs", json=body("r.nope")), 404, "refused:unknown_route")
        assert "r.basic" in unknown["known_routes"] and unknown["run_id"]
        # r.refunds serves t1 and t2 only: a rule of the route table
        scoped = is_problem(c.post("/v1/runs", json=body("r.refunds")), 403)
        assert scoped["reason"] == "refused:tenant_not_in_scope" and scoped["rule"]
        is_problem(c.post("/v1/runs", json=body(priority="urgent")), 422, "invalid_request")


def test_list_filters_and_cursor_pages(api: Api) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    with api.client(api.key("t2")) as c:
        made = [c.post("/v1/runs", json=body("r.lenient")).json()["runId"] for _ in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"route": "r.lenient", "created_after": since.isoformat(),
                                      "limit": 2}  # fmt: skip
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/runs", params=params).json()
            seen += [r["runId"] for r in page["items"]]
            assert all(r["tenantId"] == "t2" for r in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(made))  # newest first, each once
        before = c.get("/v1/runs", params={"created_before": since.isoformat(), "limit": 200})
        assert not set(made) & {r["runId"] for r in before.json()["items"]}


def test_cancel_pause_resume(idle: Api) -> None:
    with idle.client(idle.key()) as c:
        run = c.post("/v1/runs", json=body()).json()  # no worker: it stays queued
        paused = c.post(f"/v1/runs/{run['runId']}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["stopReason"].startswith("paused:key:")
        resumed = c.post(f"/v1/runs/{run['runId']}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] in ("queued", "running")
        cancelled = c.post(f"/v1/runs/{run['runId']}/cancel", json={"mode": "drain"})
        assert cancelled.json()["status"] == "cancelled", cancelled.text
        is_problem(c.post(f"/v1/runs/{run['runId']}/resume"), 409, "invalid_transition")
        is_problem(c.post(f"/v1/runs/{run['runId']}/cancel", json={"mode": "x"}), 422)


def test_queue_full_is_429_with_retry_after(idle: Api) -> None:
    with idle.client(idle.key("tq")) as c:
        for _ in range(3):  # tenant tq: max_queued 3, nothing drains it
            assert c.post("/v1/runs", json=body()).status_code == 202
        full = c.post("/v1/runs", json=body())
        is_problem(full, 429, "refused:queue_full")
        assert int(full.headers["Retry-After"]) >= 1
        assert c.get("/v1/queues").status_code == 200


# --- approvals and dead letters --------------------------------------------------------


def test_approvals_list_show_deny_approve(api: Api) -> None:
    submitter, approver = api.key(), api.key("t1", ["approvals:decide", "runs:read"])
    with api.client(submitter) as c, api.client(approver) as a:
        k = f"a{uuid.uuid4().hex[:10]}"
        ids = [c.post("/v1/runs", json=body("r.approve", [inc(k), REPLY])).json()["runId"]
               for _ in range(2)]  # fmt: skip
        waiting = [finished(api, c, i) for i in ids]
        assert {w["status"] for w in waiting} == {"waiting"}
        pending = {x["approval_id"] for x in a.get("/v1/approvals").json()["items"]}
        first, second = (w["approvalId"] for w in waiting)
        assert {first, second} <= pending
        shown = a.get(f"/v1/approvals/{first}").json()
        assert shown["run_id"] == ids[0] and shown["tool"] == "counter.increment"
        # the exact action the digest covers, as bytes a client can hash
        action = shown["canonical_action"]
        assert hashlib.sha256(action.encode()).hexdigest() == shown["digest"]
        assert json.loads(action)["args"]["key"] == k
        is_problem(a.post(f"/v1/approvals/{first}/deny", json={}), 422, "invalid_request")
        # r.approve is high risk: its submitter (the same key) may not decide it
        is_problem(c.post(f"/v1/approvals/{first}/approve"), 403, "approval_forbidden")
        approved = a.post(f"/v1/approvals/{first}/approve", json={"reason": "ok"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
        is_problem(a.post(f"/v1/approvals/{first}/approve"), 409, "approval_closed")
        denied = a.post(f"/v1/approvals/{second}/deny", json={"reason": "no"})
        assert denied.json()["status"] == "denied"
        assert finished(api, c, ids[0])["status"] == "succeeded"


def test_dead_letters_list_show_retry_purge(api: Api) -> None:
    svc = api.dep.svc
    key = f"f{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")
    with api.client(api.key()) as c:
        run_id = c.post("/v1/runs", json=body("r.retry", [flaky(key), REPLY])).json()["runId"]
        assert finished(api, c, run_id)["stopReason"] == "dead_lettered:exhausted"
        listed = c.get("/v1/dead-letters", params={"run_id": run_id}).json()["items"]
        (entry,) = listed
        shown = c.get(f"/v1/dead-letters/{entry['id']}").json()
        assert shown["run_id"] == run_id and shown["dl_class"] == "exhausted"
        is_problem(c.post("/v1/dead-letters/purge", json={}), 422, "invalid_request")
        dry = c.post("/v1/dead-letters/purge", json={"ids": [entry["id"]]}).json()
        assert dry == {"matched": 1, "purged": [entry["id"]], "dry_run": True}
        svc.tool_redis.delete(svc.keys.demo(f"fail:{key}"))
        retried = c.post(f"/v1/dead-letters/{entry['id']}/retry").json()
        assert retried["retried"] == [entry["id"]]
        assert finished(api, c, run_id)["status"] == "succeeded"
    assert not svc.dead_letters.find(DeadLetterFilter(run_id=run_id), limit=None)


# --- tenant isolation ------------------------------------------------------------------


def test_another_tenants_resources_are_not_found(api: Api) -> None:
    svc = api.dep.svc
    with api.client(api.key("t1")) as mine:
        run_id = mine.post("/v1/runs", json=body("r.approve", [inc("iso"), REPLY])).json()["runId"]
        approval_id = finished(api, mine, run_id)["approvalId"]
    entry_id = svc.dead_letters.poison(queue="q", error_type="x", error="y", message={})
    with svc.store.engine.begin() as conn:  # an entry of t1's
        from runtime.store.dead_letters import dl_t

        conn.execute(sa.update(dl_t).where(dl_t.c.id == entry_id).values(tenant_id="t1"))
    with api.client(api.key("t2")) as theirs:
        for path, missing in (
            (f"/v1/runs/{run_id}", "/v1/runs/nosuchrun"),
            (f"/v1/runs/{run_id}/trace", "/v1/runs/nosuchrun/trace"),
            (f"/v1/runs/{run_id}/events", "/v1/runs/nosuchrun/events"),
            (f"/v1/approvals/{approval_id}", "/v1/approvals/nosuchrun"),
            (f"/v1/dead-letters/{entry_id}", "/v1/dead-letters/nosuchrun"),
        ):
            got, none = theirs.get(path), theirs.get(missing)
            body_of = is_problem(got, 404, "not_found")
            assert json.dumps(body_of).replace(path.split("/")[3], "ID") == json.dumps(
                is_problem(none, 404, "not_found")
            ).replace("nosuchrun", "ID")
        for path in (
            f"/v1/runs/{run_id}/cancel",
            f"/v1/runs/{run_id}/pause",
            f"/v1/approvals/{approval_id}/approve",
            f"/v1/dead-letters/{entry_id}/retry",
        ):
            is_problem(theirs.post(path), 404, "not_found")
        assert run_id not in {r["runId"] for r in theirs.get("/v1/runs").json()["items"]}
        assert approval_id not in {
            a["approval_id"] for a in theirs.get("/v1/approvals").json()["items"]
        }
        assert entry_id not in {e["id"] for e in theirs.get("/v1/dead-letters").json()["items"]}
        dry = theirs.post("/v1/dead-letters/purge", json={"ids": [entry_id]}).json()
        assert dry["matched"] == 0
    assert svc.get(run_id).status == "waiting"  # nothing they did touched it


# --- the event stream ------------------------------------------------------------------


def read_events(c: httpx.Client, run_id: str, last: int | None = None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    events: list[dict[str, Any]] = []
    with c.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in r.iter_lines():
            if line == "":
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return events


def test_events_stream_in_order_end_at_terminal_and_resume(api: Api) -> None:
    with api.client(api.key()) as c:
        run_id = c.post("/v1/runs", json=body(script=[search("a"), search("b"), REPLY])).json()[
            "runId"
        ]
        events = read_events(c, run_id)  # from admission, while it runs, to its end
        assert events[-1]["event"] == "end" and "id" not in events[-1]
        assert json.loads(events[-1]["data"])["status"] == "succeeded"
        trace = c.get(f"/v1/runs/{run_id}/trace").json()["events"]
        streamed = events[:-1]
        assert [e["event"] for e in streamed] == [t["kind"] for t in trace]
        ids = [int(e["id"]) for e in streamed]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(json.loads(e["data"])["id"] == int(e["id"]) for e in streamed)
        # resumed after the third event: exactly the rest
        rest = read_events(c, run_id, last=ids[2])
        assert [int(e["id"]) for e in rest[:-1]] == ids[3:] and rest[-1]["event"] == "end"
        is_problem(c.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x"}), 422)


def test_times_at_the_edges_of_the_calendar(api: Api) -> None:
    """A time zone can push a time out of the calendar (year 0 or 10000 in UTC): a 422
    naming the field, like any bad time, never a 500 from converting it (it was one)."""
    edges = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
    with api.client(api.key()) as c:
        for edge in edges:
            for name in ("created_after", "created_before"):
                refused = is_problem(c.get("/v1/runs", params={name: edge}), 422)
                assert (refused["reason"], refused["fields"]) == ("invalid_request", [name])
            raw = json.dumps({"t": edge, "r": "x"}).encode()
            cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            refused = is_problem(c.get("/v1/runs", params={"cursor": cursor}), 422)
            assert refused["fields"] == ["cursor"]
        # the edges themselves, in UTC, are times like any other
        for edge in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
            assert c.get("/v1/runs", params={"created_after": edge}).status_code == 200
