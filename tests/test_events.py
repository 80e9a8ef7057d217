"""Event-triggered runs (issue 12): webhook sources with real Redis, real prefork workers
and real SQL (SQLite and PostgreSQL).

A webhook replayed (sequentially and from threads) starts exactly one run; a bad
signature stores nothing; Standard Webhooks and HMAC-SHA256 are both verified; ``per_key``
sources run the events of one key one at a time in arrival order (the start order the
``probe.gate`` tool numbers in Redis), events of different keys at once; a missing secret
fails closed; the FastAPI router answers over a real uvicorn server."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from runtime.api.app import create_app
from runtime.api.webhooks import router
from runtime.config import load_config
from runtime.errors import ConfigError, EventRejected
from runtime.event_signatures import sign_hmac
from runtime.events import EventIntake
from runtime.store.events import EventStore
from runtime.store.tables import event_records_t, runs_t
from runtime.wiring import build_reconciler
from tests.conftest import TEST_CONFIG, _database_url
from tests.support import Deployment, Gate, wait_for

WH_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_SECRET = "hmac-test-secret-not-logged"
ENV = {"AGENTRT_TEST_WH_SECRET": WH_SECRET, "AGENTRT_TEST_HMAC_SECRET": HMAC_SECRET}
REPLY = {"type": "reply", "text": "ok"}
SOURCES: dict[str, Any] = {
    "std": {
        "tenant": "t1",
        "route": "r.basic",
        "signature": {"scheme": "standard_webhooks", "secret_env": "AGENTRT_TEST_WH_SECRET"},
        "input": "body",
        "goal": "Handle {source} event {event_id}",
    },
    "hm": {
        "tenant": "t1",
        "route": "r.basic",
        "signature": {
            "scheme": "hmac_sha256",
            "secret_env": "AGENTRT_TEST_HMAC_SECRET",
            "header": "X-Signature",
            "prefix": "sha256=",
        },
        "event_id": {"field": "id"},
        "input": "body",
        "max_body_bytes": 2048,
    },
    "ordered": {
        "tenant": "t1",
        "route": "r.open",
        "signature": {"scheme": "standard_webhooks", "secret_env": "AGENTRT_TEST_WH_SECRET"},
        "ordering": {"policy": "per_key", "key_field": "customer"},
        "input": "body",
        "goal": "Order event {event_id} of {key}",
    },
}


def events_config(tmp: Path, sources: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["event_sources"] = SOURCES if sources is None else sources
    path = tmp / "runtime-events.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def dep(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # the worker subprocesses inherit them too (they never need them)
    tmp = tmp_path_factory.mktemp(f"events-{backend}")
    deployment = Deployment.create(
        name=f"ev{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=events_config(tmp),
        home=tmp,
    )
    deployment.start_worker(concurrency=2)
    try:
        yield deployment
    finally:
        deployment.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- senders --------------------------------------------------------------------------
def std_headers(msg_id: str, body: bytes, *, secret: str = WH_SECRET, at: float | None = None
                ) -> dict[str, str]:  # fmt: skip
    when = datetime.fromtimestamp(int(time.time() if at is None else at), tz=UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def hmac_headers(body: bytes, secret: str = HMAC_SECRET) -> dict[str, str]:
    return {"X-Signature": "sha256=" + sign_hmac(secret.encode(), body)}


def body_of(script: list[Any], **fields: Any) -> bytes:
    return json.dumps({"script": script, **fields}).encode()


def counts(dep: Deployment) -> tuple[int, int]:
    """(runs, event records) in the deployment's database."""
    with dep.svc.store.engine.connect() as conn:
        runs = conn.execute(select(func.count()).select_from(runs_t)).scalar_one()
        records = conn.execute(select(func.count()).select_from(event_records_t)).scalar_one()
    return int(runs), int(records)


def runs_with_request_id(dep: Deployment, request_id: str) -> int:
    with dep.svc.store.engine.connect() as conn:
        query = select(func.count()).select_from(runs_t).where(runs_t.c.request_id == request_id)
        return int(conn.execute(query).scalar_one())


# --- dedupe ---------------------------------------------------------------------------
def test_a_webhook_replayed_10_times_starts_one_run(dep: Deployment) -> None:
    # Given a signed Standard Webhooks event
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = body_of([REPLY], kind="order.created")
    first, created = dep.svc.receive_event("std", std_headers(msg_id, body), body)
    assert created and first.actor_id == "event:std"
    assert first.request_id == f"event:std:{msg_id}"
    assert first.goal == f"Handle std event {msg_id}"
    # When it is delivered 9 more times (freshly signed, as a sender retries)
    replays = [dep.svc.receive_event("std", std_headers(msg_id, body), body) for _ in range(9)]
    # Then every delivery names the first run, and only one run exists
    assert {(r.run_id, c) for r, c in replays} == {(first.run_id, False)}
    assert runs_with_request_id(dep, first.request_id) == 1
    done = dep.wait_all([first.run_id])[first.run_id]
    assert done.status.value == "succeeded"


def test_concurrent_deliveries_of_one_event_start_one_run(dep: Deployment) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = body_of([REPLY])
    headers = std_headers(msg_id, body)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(10)

    def deliver() -> None:
        barrier.wait()
        try:
            run, created = dep.svc.receive_event("std", headers, body)
            results.append((run.run_id, created))
        except BaseException as exc:  # reported below
            errors.append(exc)

    # When 10 threads deliver the same event at once
    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one created a run, and all ten name it
    assert not errors, errors
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert runs_with_request_id(dep, f"event:std:{msg_id}") == 1
    assert dep.svc.events.store.count("std") >= 1
    run_id = results[0][0]
    assert dep.wait_all([run_id])[run_id].status.value == "succeeded"


def test_a_replay_with_another_body_is_a_conflict(dep: Deployment) -> None:
    body = body_of([REPLY], id=f"ev-{uuid.uuid4().hex[:8]}")
    first, created = dep.svc.receive_event("hm", hmac_headers(body), body)
    assert created
    other = body.replace(b'"ok"', b'"not ok"')
    before = counts(dep)
    with pytest.raises(EventRejected) as exc:
        dep.svc.receive_event("hm", hmac_headers(other), other)
    assert exc.value.code == "event:conflict" and exc.value.run_id == first.run_id
    assert counts(dep) == before


# --- signatures ----------------------------------------------------------------------
def test_hmac_sha256_events_are_verified_and_identified_by_a_json_field(dep: Deployment) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    body = body_of([REPLY], id=event_id)
    run, created = dep.svc.receive_event("hm", hmac_headers(body), body)
    assert created and run.request_id == f"event:hm:{event_id}"
    assert dep.wait_all([run.run_id])[run.run_id].status.value == "succeeded"


@pytest.mark.parametrize(
    "case",
    ["wrong_secret", "tampered_body", "no_signature", "too_old", "garbage_signature"],
)
def test_a_bad_standard_webhooks_signature_stores_nothing(dep: Deployment, case: str) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = body_of([REPLY])
    headers = std_headers(msg_id, body)
    if case == "wrong_secret":
        headers = std_headers(msg_id, body, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUA==")
    elif case == "tampered_body":
        body = body_of([REPLY, REPLY])
    elif case == "no_signature":
        del headers["webhook-signature"]
    elif case == "too_old":
        headers = std_headers(msg_id, body, at=time.time() - 3600)
    else:
        headers["webhook-signature"] = "v1,!!notbase64 v2,abc ,"
    before = counts(dep)
    with pytest.raises(EventRejected) as exc:
        dep.svc.receive_event("std", headers, body)
    assert exc.value.code == "event:bad_signature"
    assert WH_SECRET not in str(exc.value)
    assert counts(dep) == before
    assert dep.svc.events.store.find("std", msg_id) is None


@pytest.mark.parametrize("case", ["wrong_secret", "no_header", "no_prefix", "non_ascii"])
def test_a_bad_hmac_signature_stores_nothing(dep: Deployment, case: str) -> None:
    body = body_of([REPLY], id=f"ev-{uuid.uuid4().hex[:8]}")
    headers = {
        "wrong_secret": hmac_headers(body, secret="another"),
        "no_header": {},
        "no_prefix": {"X-Signature": sign_hmac(HMAC_SECRET.encode(), body)},
        "non_ascii": {"X-Signature": "sha256=é" * 3},
    }[case]
    before = counts(dep)
    with pytest.raises(EventRejected) as exc:
        dep.svc.receive_event("hm", headers, body)
    assert exc.value.code == "event:bad_signature"
    assert counts(dep) == before


def test_bad_events_are_refused_by_reason_before_anything_is_stored(dep: Deployment) -> None:
    before = counts(dep)
    cases = {
        "event:unknown_source": ("nope", {}, b"{}"),
        "event:too_large": ("hm", {}, b"x" * 4096),
        "event:invalid_body": ("hm", hmac_headers(b"[1, 2]"), b"[1, 2]"),
        "event:no_event_id": ("hm", hmac_headers(b'{"id": "a b"}'), b'{"id": "a b"}'),
    }
    for code, (source, headers, body) in cases.items():
        with pytest.raises(EventRejected) as exc:
            dep.svc.receive_event(source, headers, body)
        assert exc.value.code == code, (code, exc.value)
    no_key = body_of([REPLY])
    with pytest.raises(EventRejected) as exc:
        dep.svc.receive_event("ordered", std_headers("msg_nokey", no_key), no_key)
    assert exc.value.code == "event:no_key"
    assert counts(dep) == before


# --- per_key ordering -------------------------------------------------------------------
def test_per_key_events_run_one_at_a_time_in_arrival_order(dep: Deployment) -> None:
    gate = Gate(dep)
    gate.close_after(0)  # every call waits inside the tool until the gate opens
    script = [gate.step(), REPLY]
    a, b = f"cust-a-{uuid.uuid4().hex[:6]}", f"cust-b-{uuid.uuid4().hex[:6]}"

    def send(customer: str) -> str:
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = body_of(script, customer=customer)
        run, created = dep.svc.receive_event("ordered", std_headers(msg_id, body), body)
        assert created
        return run.run_id

    # Given three events of key a and then one of key b
    a_runs = [send(a) for _ in range(3)]
    b_run = send(b)
    # Then a's first and b's run are inside the gate together (different keys at once)
    wait_for(lambda: gate.held() == 2, message="a1 and b1 inside the gate")
    views = {r: dep.svc.get(r) for r in a_runs[1:]}
    # while a's later runs wait for their turn, holding nothing
    assert {v.status.value for v in views.values()} == {"waiting"}
    assert {v.stop_reason for v in views.values()} == {"ordered:ordered"}
    assert set(gate.order()) == {a_runs[0], b_run}
    # When the gate opens
    gate.open()
    done = dep.wait_all([*a_runs, b_run], timeout=120)
    # Each waited in turn: wait_all also returns waiting runs, so wait for the end
    wait_for(lambda: all(dep.svc.get(r).status.value == "succeeded" for r in a_runs),
             timeout=120, message="a's runs to succeed")  # fmt: skip
    assert done[b_run].status.value == "succeeded"
    order = gate.order()
    # Then a's runs started in arrival order, one after the other ended
    assert order[a_runs[0]] < order[a_runs[1]] < order[a_runs[2]]
    for before, after in itertools.pairwise(a_runs):
        ended = dep.svc.get(before).finished_at
        released = [e for e in dep.svc.trace(after) if e.kind == "released"]
        assert len(released) == 1 and ended is not None and released[0].at >= ended
    assert dep.svc.get(a_runs[1]).goal.startswith("Order event msg_")


def test_concurrent_events_of_one_key_still_run_one_at_a_time(dep: Deployment) -> None:
    gate = Gate(dep)
    gate.close_after(0)
    script = [gate.step(), REPLY]
    key = f"cust-d-{uuid.uuid4().hex[:6]}"
    barrier = threading.Barrier(5)
    run_ids: list[str] = []
    errors: list[BaseException] = []

    def send() -> None:
        body = body_of(script, customer=key)
        headers = std_headers(f"msg_{uuid.uuid4().hex}", body)
        barrier.wait()
        try:
            run_ids.append(dep.svc.receive_event("ordered", headers, body)[0].run_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    # When five events of one key arrive at once, from five threads
    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(run_ids)) == 5
    # Then one of them runs (inside the gate) and the four others wait for their turn
    wait_for(lambda: gate.held() == 1, message="one run inside the gate")
    statuses = [dep.svc.get(r).status.value for r in run_ids]
    assert statuses.count("waiting") == 4, statuses
    gate.open()
    wait_for(lambda: all(dep.svc.get(r).status.value == "succeeded" for r in run_ids),
             timeout=120, message="all five to succeed")  # fmt: skip
    # and each started after the one before it ended; after the first, in arrival order
    order = gate.order()
    started = sorted(run_ids, key=lambda r: order[r])
    for before, after in itertools.pairwise(started):
        ended = dep.svc.get(before).finished_at
        released = [e.at for e in dep.svc.trace(after) if e.kind == "released"]
        assert ended is not None and len(released) == 1 and released[0] >= ended
    seq = {r: dep.svc.events.store.of_run(r)["seq"] for r in run_ids}  # type: ignore[index]
    assert [seq[r] for r in started[1:]] == sorted(seq[r] for r in started[1:])


def test_the_reconciler_releases_a_key_whose_run_ended_elsewhere(
    redis_url: str, tmp_path: Path
) -> None:
    """A run cancelled while queued ends in the cancel (no step ends it): the next run of
    its key is started by the reconciler's round."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    quiet = Deployment.create(  # no worker: the released run stays queued
        name=f"evq{uuid.uuid4().hex[:4]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=events_config(tmp_path),
        home=tmp_path,
    )
    try:
        key = f"cust-{uuid.uuid4().hex[:6]}"
        ids = []
        for _ in range(3):
            body = body_of([REPLY], customer=key)
            run, _ = quiet.svc.receive_event("ordered", std_headers(f"msg_{uuid.uuid4().hex}",
                                                                    body), body)  # fmt: skip
            ids.append(run.run_id)
        assert [quiet.svc.get(r).status.value for r in ids] == ["queued", "waiting", "waiting"]
        # When the queued first run is cancelled (its step never ran: the cancel ends it)
        assert quiet.svc.cancel(ids[0], actor="ops").status.value == "cancelled"
        assert quiet.svc.get(ids[1]).status.value == "waiting"
        kinds = [e.kind for e in quiet.svc.trace(ids[1])]
        assert kinds == ["admission", "waiting_for_turn"]
        deadline = quiet.svc.store.get_run(ids[1])["deadline_at"]
        # Then a reconciler round starts the second, and only the second
        report = build_reconciler(quiet.svc).reconcile()
        assert report.released == [ids[1]] and not report.errors
        assert [quiet.svc.get(r).status.value for r in ids] == ["cancelled", "queued", "waiting"]
        assert quiet.svc.trace(ids[1])[-1].kind == "released"
        # its run timeout counts from its start, not from its arrival
        assert quiet.svc.store.get_run(ids[1])["deadline_at"] > deadline
        # and a round with nothing to release starts nothing
        assert quiet.svc.ordering.reconcile() == []
    finally:
        quiet.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- configuration and secrets -----------------------------------------------------------
def test_a_missing_secret_fails_closed(tmp_path: Path) -> None:
    config = load_config(events_config(tmp_path))
    intake = EventIntake(sources=config.event_sources, store=EventStore(None), environ={})  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        intake.require_secrets()
    text = str(exc.value)
    assert "event_sources.std.signature.secret_env" in text
    assert "AGENTRT_TEST_WH_SECRET is not set" in text and "AGENTRT_TEST_HMAC_SECRET" in text
    # and a request is refused the same way, before anything is read or stored
    with pytest.raises(ConfigError):
        intake.accept("std", {}, b"{}")
    bad = EventIntake(sources=config.event_sources, store=EventStore(None),  # type: ignore[arg-type]
                      environ={**ENV, "AGENTRT_TEST_WH_SECRET": "whsec_***"})  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        bad.require_secrets()
    assert "not a standard webhooks secret" in str(exc.value) and "***" not in str(exc.value)


def test_a_missing_secret_fails_the_routers_start_up(dep: Deployment) -> None:
    saved = os.environ.pop("AGENTRT_TEST_HMAC_SECRET")
    try:
        fresh = EventIntake(sources=dep.svc.config.event_sources, store=dep.svc.events.store)

        class NoSecret:
            events = fresh

            def receive_event(self, *a: Any) -> Any:
                raise AssertionError("never reached")

        with pytest.raises(ConfigError, match="AGENTRT_TEST_HMAC_SECRET"):
            router(NoSecret())
    finally:
        os.environ["AGENTRT_TEST_HMAC_SECRET"] = saved


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"tenant": "nobody"}, "event_sources.x.tenant: unknown tenant 'nobody'"),
        ({"route": "r.none"}, "event_sources.x.route: unknown route 'r.none'"),
        ({"ordering": {"policy": "per_key"}}, "per_key needs 'key_field'"),
        ({"goal": "{body}"}, "unknown placeholder {body}"),
        ({"signature": {"scheme": "hmac_sha256", "secret_env": "X"}}, "needs 'header'"),
        ({"signature": {"scheme": "standard_webhooks", "secret_env": "1X"}}, "secret_env"),
        ({"max_body_bytes": 10**9}, "max_body_bytes"),
        ({"secret": "inline"}, "event_sources.x.secret: unknown key"),
    ],
)
def test_event_source_config_errors_name_the_key(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    source = {**SOURCES["std"], **change}
    with pytest.raises(ConfigError) as exc:
        load_config(events_config(tmp_path, {"x": source}))
    assert problem in str(exc.value)


# --- HTTP ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(dep: Deployment) -> Iterator[str]:
    app = create_app(dep.svc)  # the whole API: its body limit and problem documents too
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, message="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def test_the_events_endpoint_over_http(dep: Deployment, server: str) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = body_of([REPLY])
    url = f"{server}/v1/events/std"
    with httpx.Client(timeout=30) as client:
        # 202 with the run on creation, 200 with the same run for a replay
        first = client.post(url, content=body, headers=std_headers(msg_id, body))
        assert first.status_code == 202, first.text
        again = client.post(url, content=body, headers=std_headers(msg_id, body))
        assert again.status_code == 200 and again.json()["runId"] == first.json()["runId"]
        before = counts(dep)
        # 401 problem for a bad signature, nothing stored
        bad = client.post(url, content=body, headers=std_headers("msg_x", body, secret=
                          "whsec_QUJDREVGR0hJSktMTU5PUA=="))  # fmt: skip
        assert bad.status_code == 401
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["reason"] == "event:bad_signature" and WH_SECRET not in bad.text
        # 404 unknown source, 413 oversize (before the body is read whole)
        assert client.post(f"{server}/v1/events/nope", content=b"{}").status_code == 404
        big = client.post(f"{server}/v1/events/hm", content=b"x" * 5000)
        assert big.status_code == 413 and big.json()["reason"] == "event:too_large"
        # 409 for an event id replayed with another body
        hm_body = body_of([REPLY], id=f"ev-{uuid.uuid4().hex[:8]}")
        assert client.post(f"{server}/v1/events/hm", content=hm_body,
                           headers=hmac_headers(hm_body)).status_code == 202  # fmt: skip
        other = hm_body.replace(b'"ok"', b'"no"')
        clash = client.post(f"{server}/v1/events/hm", content=other, headers=hmac_headers(other))
        assert clash.status_code == 409 and clash.json()["reason"] == "event:conflict"
        assert counts(dep)[0] == before[0] + 1
