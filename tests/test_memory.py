"""Memory writes the runtime governs (issue 15), with real workers on both SQL backends.

A ``memory_write`` proposal is checked against its route's ``memory`` rules (namespace,
retention class, size, required evidence, the secret/PII screen) and the policy (rules
match ``memory:<namespace>``), spent from the ``tool_calls`` budget, and stored with the
step's checkpoint; the ``memory`` retriever reads it back for the same tenant only;
``agentrt memory forget`` hides it from every later retrieval (audited); the reconciler
deletes expired memories and ``run``-retention memories of ended runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.config import parse_config
from runtime.contract import RunView
from runtime.errors import ConfigError
from runtime.memory import screen
from runtime.memory.retriever import memory_retriever
from runtime.memory.store import FORGET_ACTION, MemoryStore
from runtime.memory_config import parse_retention
from runtime.reconciler import Reconciler
from runtime.retrieval.base import SearchRequest
from runtime.scheduling.scheduler import item_of
from runtime.store.db import utcnow
from runtime.store.tables import memories_t
from runtime.wiring import build_reconciler
from tests.conftest import _database_url
from tests.support import ROOT, Deployment, wait_for

TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
REPLY = {"type": "reply", "text": "done"}
MEMORY = {
    "namespaces": ["notes", "blocked"],
    "retention_classes": ["run", "1h", "30d", "permanent"],
    "max_bytes": 200,
}


def memory_config(tmp: Path) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    base = dict(data["routes"]["r.basic"])
    data["routes"]["r.mem"] = {**base, "memory": MEMORY, "compensate_on_failure": True}
    data["routes"]["r.mem.evidence"] = {**base, "memory": {**MEMORY, "require_evidence": True}}
    data["routes"]["r.mem.one"] = {**base, "memory": MEMORY, "budget_policy": "one_call"}
    data["policy"]["rules"].append(
        {"id": "memory_blocked", "effect": "deny", "match": {"tool": ["memory:blocked"]}}
    )
    path = tmp / "memory.yaml"
    # a JSON round trip: no shared objects, so no YAML anchors (the loader refuses them)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    return path


def write(key: str, content: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": "memory_write",
        "namespace": kw.pop("namespace", "notes"),
        "key": key,
        "content": content,
        "retention": kw.pop("retention", "30d"),
        **kw,
    }


def uniq() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def mem(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"mem-{backend}")
    dep = Deployment.create(
        name=f"m{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=memory_config(tmp),
        home=tmp,
    )
    try:
        dep.start_worker(concurrency=2)
        yield dep
    finally:
        dep.close()


def finished(dep: Deployment, run: RunView) -> RunView:
    return dep.wait_all([run.run_id], timeout=90)[run.run_id]


def rows_of(dep: Deployment, run_id: str) -> list[dict[str, Any]]:
    with dep.svc.store.engine.connect() as conn:
        query = sa.select(memories_t).where(memories_t.c.run_id == run_id)
        return [dict(r) for r in conn.execute(query).mappings()]


def search(dep: Deployment, tenant: str, query: str, **kw: Any) -> list[Any]:
    retriever = memory_retriever(dep.svc.store.engine)
    return retriever.search(
        SearchRequest(tenant_id=tenant, source="memory", query=query, top_k=5, **kw)
    )


# --- refusals: nothing is written -----------------------------------------------------


def test_a_write_without_required_evidence_is_refused(mem: Deployment) -> None:
    run = mem.submit_script([write(f"k{uniq()}", "the sky is blue"), REPLY], route="r.mem.evidence")
    done = finished(mem, run)
    assert (done.status.value, done.stop_reason) == (
        "refused",
        "invalid_proposal:evidence_required",
    )
    assert rows_of(mem, run.run_id) == []


def test_evidence_not_retrieved_in_the_run_is_refused(mem: Deployment) -> None:
    # no retrieval in this deployment: no evidence id is known (fail closed)
    script = [write(f"k{uniq()}", "the sky is blue", evidence=["ev_1"]), REPLY]
    done = finished(mem, mem.submit_script(script, route="r.mem.evidence"))
    assert done.stop_reason == "invalid_proposal:unknown_evidence"


@pytest.mark.parametrize(
    ("proposal", "route", "reason"),
    [
        (
            write("k", "hello", namespace="elsewhere"),
            "r.mem",
            "invalid_proposal:namespace_not_allowed",
        ),
        (write("k", "hello", retention="2d"), "r.mem", "invalid_proposal:retention_not_allowed"),
        (write("k", "x" * 201), "r.mem", "invalid_proposal:memory_too_large"),
        (write("k", "mail ann@example.com"), "r.mem", "invalid_proposal:memory_screened"),
        (write("k", "call +49 30 1234 5678"), "r.mem", "invalid_proposal:memory_screened"),
        (write("k", "card 4111 1111 1111 1111"), "r.mem", "invalid_proposal:memory_screened"),
        (write("k", "key sk-abcdefghijklmnopqrstuv"), "r.mem", "invalid_proposal:memory_screened"),
        (write("k", "hello"), "r.basic", "invalid_proposal:memory_not_enabled"),
        (write("k", "hello", namespace="blocked"), "r.mem", "policy_denied:memory_blocked"),
    ],
    ids=["namespace", "retention", "size", "email", "phone", "card", "secret", "off", "policy"],
)
def test_writes_the_rules_refuse_write_nothing(
    mem: Deployment, proposal: dict[str, Any], route: str, reason: str
) -> None:
    done = finished(mem, mem.submit_script([proposal, REPLY], route=route))
    assert (done.status.value, done.stop_reason) == ("refused", reason)
    assert rows_of(mem, done.run_id) == []
    if "screened" in reason:  # the refusal names the kind, never the matched text
        (event,) = [
            e for e in mem.svc.trace(done.run_id) if e.data.get("code") == "memory_screened"
        ]
        (error,) = event.data["errors"]
        assert error["msg"].startswith("content looks like: ") and "@" not in error["msg"]
        # nor does the step's record of the proposal keep the content
        (step,) = mem.svc.store.steps(done.run_id)
        assert step["proposal"]["content"] == "[screened]"


# --- an accepted write ----------------------------------------------------------------


def test_an_accepted_write_is_stored_with_provenance_and_read_back_by_its_tenant_only(
    mem: Deployment,
) -> None:
    key, word = f"k{uniq()}", f"zebra{uniq()}"
    run = mem.svc.submit(
        "t1",
        "r.mem",
        "remember",
        {"script": [write(key, f"prefers {word} deliveries"), REPLY]},
        actor="user:ann",
    )
    done = finished(mem, run)
    assert done.status.value == "succeeded", done.stop_reason
    (row,) = rows_of(mem, run.run_id)
    assert (row["tenant_id"], row["namespace"], row["key"], row["version"]) == (
        "t1",
        "notes",
        key,
        1,
    )
    assert (row["step_no"], row["actor"], row["route"], row["retention"]) == (
        0,
        "user:ann",
        "r.mem",
        "30d",
    )
    assert row["expires_at"] is not None and row["forgotten_at"] is None
    # spent from the tool_calls budget, like a tool call
    assert mem.svc.store.spend(run_id=run.run_id)["tool_calls"] == 1
    kinds = [e.kind for e in mem.svc.trace(run.run_id)]
    assert "memory_write" in kinds and "policy_decision" in kinds
    # the memory retriever: the same tenant finds it, another tenant never does
    (hit,) = search(mem, "t1", f"{word} deliveries")
    assert (hit.doc_id, hit.source, hit.tenant_id, hit.title) == (
        row["memory_id"],
        "memory",
        "t1",
        f"notes/{key}",
    )
    assert hit.score == 1.0 and word in hit.content
    assert search(mem, "t2", f"{word} deliveries") == []
    # freshness: a memory older than not_before is not shown
    assert search(mem, "t1", word, not_before=utcnow() + timedelta(seconds=1)) == []
    # a later run of the tenant writes the key again: a new version, shown in its place
    again = finished(
        mem,
        mem.svc.submit(
            "t1", "r.mem", "remember", {"script": [write(key, f"now {word} pickups"), REPLY]}
        ),
    )
    assert again.status.value == "succeeded"
    (newer,) = search(mem, "t1", word)
    assert newer.version == 2 and "pickups" in newer.content


def test_the_tool_call_budget_limits_memory_writes(mem: Deployment) -> None:
    script = [write(f"k{uniq()}", "first"), write(f"k{uniq()}", "second"), REPLY]
    done = finished(mem, mem.svc.submit("t1", "r.mem.one", "two", {"script": script}))
    assert (done.status.value, done.stop_reason) == ("failed", "budget_exhausted:tool_calls")
    (row,) = rows_of(mem, done.run_id)  # the first, not the second
    assert row["content"] == "first"
    assert mem.svc.store.spend(run_id=done.run_id)["tool_calls"] == 1


def test_forget_hides_every_version_from_retrieval_and_writes_an_audit_row(
    mem: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, word = f"k{uniq()}", f"okapi{uniq()}"
    for text in (f"{word} one", f"{word} two"):
        done = finished(
            mem, mem.svc.submit("t1", "r.mem", "r", {"script": [write(key, text), REPLY]})
        )
        assert done.status.value == "succeeded"
    (hit,) = search(mem, "t1", word)
    for name, value in mem.env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    # another tenant's id is not found: nothing forgotten
    other = runner.invoke(app, ["memory", "forget", hit.doc_id, "--tenant", "t2", "--yes"])
    assert other.exit_code != 0 and search(mem, "t1", word)
    shown = runner.invoke(app, ["memory", "show", hit.doc_id, "--tenant", "t1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["key"] == key
    result = runner.invoke(
        app,
        [
            "memory",
            "forget",
            hit.doc_id,
            "--tenant",
            "t1",
            "--yes",
            "--actor",
            "ops:ann",
            "--reason",
            "asked",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["forgotten"]) == 2  # both versions of the key
    assert search(mem, "t1", word) == []  # the older version does not come back
    listed = runner.invoke(app, ["memory", "list", "--tenant", "t1", "--json"])
    assert hit.doc_id not in listed.stdout
    (audit,) = [
        a
        for a in MemoryStore(mem.svc.store.engine).audit("t1")
        if a["detail"]["memory_id"] == hit.doc_id
    ]
    assert (audit["action"], audit["actor"], audit["count"]) == (FORGET_ACTION, "ops:ann", 2)
    assert audit["detail"]["reason"] == "asked"


def test_compensation_forgets_the_runs_memories(mem: Deployment) -> None:
    word = f"tapir{uniq()}"
    run = mem.svc.submit("t1", "r.mem", "r", {"script": [write(f"k{uniq()}", word), REPLY]})
    assert finished(mem, run).status.value == "succeeded"
    assert search(mem, "t1", word)
    report = mem.svc.compensations.compensate(run.run_id)
    assert len(report.compensated) == 1
    assert search(mem, "t1", word) == []
    assert mem.svc.compensations.compensate(run.run_id).compensated == []  # idempotent


def test_the_reconciler_deletes_expired_and_ended_run_memories(mem: Deployment) -> None:
    word = f"lemur{uniq()}"
    hour = mem.svc.submit(
        "t1", "r.mem", "r", {"script": [write(f"k{uniq()}", f"{word} h", retention="1h"), REPLY]}
    )
    for_run = mem.svc.submit(
        "t1", "r.mem", "r", {"script": [write(f"k{uniq()}", f"{word} r", retention="run"), REPLY]}
    )
    kept = mem.svc.submit(
        "t1",
        "r.mem",
        "r",
        {"script": [write(f"k{uniq()}", f"{word} p", retention="permanent"), REPLY]},
    )
    for run in (hour, for_run, kept):
        assert finished(mem, run).status.value == "succeeded"
    # a run memory of an ended run is no longer shown (whether or not the workers'
    # reconciler, on the real clock, has deleted it yet)
    assert sorted(h.content for h in search(mem, "t1", word)) == [f"{word} h", f"{word} p"]
    reconciler: Reconciler = build_reconciler(mem.svc, interval_s=0.001)
    # an hour later (the clock the reconciler is given): the 1h memory has expired
    later = utcnow() + timedelta(hours=1, seconds=5)
    report = wait_for(
        lambda: (r := reconciler.reconcile(later)).held_lock and r, timeout=30, message="a round"
    )
    # (at least the 1h one: only this clock has passed its expiry)
    assert report.memories_expired >= 1
    assert rows_of(mem, hour.run_id) == [] and rows_of(mem, for_run.run_id) == []
    assert len(rows_of(mem, kept.run_id)) == 1
    assert [h.content for h in search(mem, "t1", word)] == [f"{word} p"]


def test_a_step_delivered_again_writes_its_memory_once(
    fresh_deployment: Deployment, tmp_path: Path
) -> None:
    dep = Deployment.create(
        name=f"md{uniq()[:4]}",
        redis_url=fresh_deployment.env["AGENTRT_REDIS_URL"],
        database_url=f"sqlite:///{tmp_path / 'mem.db'}",
        config=memory_config(tmp_path),
        home=tmp_path,
    )
    svc = dep.svc
    try:
        # no worker: this process runs the step, then gets it delivered again
        run = svc.submit("t1", "r.mem", "r", {"script": [write(f"k{uniq()}", "once"), REPLY]})
        first = svc.steps.run(item_of(svc.store.get_run(run.run_id), 0))
        again = svc.steps.run(item_of(svc.store.get_run(run.run_id), 0), attempt=1)
        assert first.outcome == "memory_written:notes"
        assert again.outcome.startswith("duplicate")
        assert len(rows_of(dep, run.run_id)) == 1
        # a copy whose checkpoint never committed (its process died there) wrote nothing;
        # the copy delivered after it writes the memory once, with its own checkpoint
        run2 = svc.submit("t1", "r.mem", "r", {"script": [write(f"k{uniq()}", "twice?"), REPLY]})
        real_checkpoint = svc.store.checkpoint

        def dies(cp: Any) -> None:
            raise ConnectionError("the process died at its commit")

        svc.store.checkpoint = dies  # type: ignore[method-assign]
        try:
            with pytest.raises(ConnectionError):
                svc.steps.run(item_of(svc.store.get_run(run2.run_id), 0))
        finally:
            svc.store.checkpoint = real_checkpoint  # type: ignore[method-assign]
        assert rows_of(dep, run2.run_id) == []
        redelivered = wait_for(
            lambda: (
                (r := svc.steps.run(item_of(svc.store.get_run(run2.run_id), 0), attempt=1)).outcome
                != "duplicate_dropped"
                and r
            ),
            timeout=60,
            message="the run lease of the copy that died",
        )
        assert redelivered.outcome == "memory_written:notes"
        assert [r["content"] for r in rows_of(dep, run2.run_id)] == ["twice?"]
        assert svc.store.spend(run_id=run2.run_id)["tool_calls"] == 1
        # the (run, step) key is unique besides: a second row for the step cannot exist
        row = rows_of(dep, run.run_id)[0]
        with pytest.raises(sa.exc.IntegrityError), svc.store.engine.begin() as conn:
            conn.execute(sa.insert(memories_t), [{**row, "memory_id": "mem_dup"}])
    finally:
        svc.leases.liveness.stop()
        dep.close()


# --- config and the screen (no workers) -------------------------------------------------


def _config_with(memory: Any, rules: list[dict[str, Any]] | None = None) -> Any:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["routes"]["r.basic"]["memory"] = memory
    data["policy"]["rules"] += rules or []
    return parse_config(data)


def test_memory_rules_are_validated_naming_the_key() -> None:
    assert _config_with(MEMORY).routes["r.basic"].memory is not None
    assert parse_config(yaml.safe_load(TEST_CONFIG.read_text())).routes["r.basic"].memory is None
    for bad, words in (
        ({**MEMORY, "retention_classes": ["forever"]}, "retention class 'forever'"),
        ({**MEMORY, "retention_classes": ["99999d"]}, "longer than"),
        ({**MEMORY, "max_bytes": 10**9}, "max_bytes"),
        ({**MEMORY, "namespaces": []}, "namespaces"),
        ({**MEMORY, "screen": "yes"}, "screen"),
        ({**MEMORY, "extra": 1}, "unknown key"),
    ):
        with pytest.raises(ConfigError) as exc:
            _config_with(bad)
        assert any(words in p and "routes.r.basic.memory" in p for p in exc.value.problems), (
            exc.value.problems
        )
    # a rule may name a memory namespace a route allows, and none that no route allows
    ok = {"id": "m", "effect": "deny", "match": {"tool": ["memory:notes"]}}
    _config_with(MEMORY, [ok])
    with pytest.raises(ConfigError) as exc:
        _config_with(MEMORY, [{**ok, "match": {"tool": ["memory:nowhere"]}}])
    assert any("memory:nowhere" in p for p in exc.value.problems)


def test_retention_classes() -> None:
    assert parse_retention("run").ttl is None and parse_retention("permanent").kind == "permanent"
    assert parse_retention("12h").ttl == timedelta(hours=12)
    assert parse_retention("30d").ttl == timedelta(days=30)
    for bad in ("0d", "1w", "h", "-1d", "permanently"):
        with pytest.raises(ValueError):
            parse_retention(bad)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("the customer prefers morning deliveries", []),
        ("order 12345 shipped on 2024-01-15", []),
        ("write to ann.lee@example.co.uk", ["email"]),
        ("card 4111-1111-1111-1111", ["card_number"]),
        ("token AKIAIOSFODNN7EXAMPLE here", ["secret"]),
        ("Bearer abcdefghijklmnop", ["secret"]),
        ("xoxb-1234567890-abcdefghij", ["secret"]),
        ("k=Zx9qW3rT7yU1iO5pA8sD2fG6hJ4kL0mN", ["secret"]),
        ("phone (555) 123-4567", ["phone_number"]),
    ],
)
def test_the_screen(text: str, found: list[str]) -> None:
    assert screen.findings(text) == found


def test_a_card_number_needs_a_valid_checksum() -> None:
    assert "card_number" not in screen.findings("ref 4111 1111 1111 1112")
