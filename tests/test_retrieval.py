"""Retrieval and evidence (README "Retrieval and evidence"): a ``retrieval_query`` is checked
like a tool call (source declared, eligible for the route, open to the tenant, top-k under
its cap, allowed by policy) and what it finds is filtered (tenant, freshness, labels)
before the model sees it; every result shown is an evidence reference recorded once with
the step; a reply's citations are checked against them. Real Redis, real Celery workers,
SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.config import PolicyRule, RuleMatch, RuntimeConfig
from runtime.contract import RunView
from runtime.errors import DocumentNotFound
from runtime.policy import PolicyContext, rule_matches
from runtime.retrieval.registry import RetrieverRegistry
from runtime.store.db import make_engine, utcnow
from runtime.store.documents import DocumentStore
from runtime.store.evidence import EvidenceStore
from runtime.store.runs import RunStore
from runtime.store.tables import documents_t, evidence_t
from tests.retrieval_tools import LeakyRetriever
from tests.schedule_tools import base_config, schedule_deployment
from tests.support import Deployment, pg_schema_url, wait_for

REPLY = {"type": "reply", "text": "done"}


def query(*sources: str, q: str = "refund policy", top_k: int = 5) -> dict[str, Any]:
    return {"type": "retrieval_query", "query": q, "sources": list(sources), "topK": top_k}


def retrieval_config() -> dict[str, Any]:
    data = base_config()
    data["retriever_modules"] = ["tests.retrieval_tools"]
    data["sources"] = {
        "kb": {"retriever": "documents", "max_top_k": 5},
        "news": {"retriever": "documents", "max_age_s": 3600},
        "private": {"retriever": "documents", "labels_required": True},
        "t2only": {"retriever": "documents", "tenants": ["t2"]},
        "blocked": {"retriever": "documents"},
        "outside": {"retriever": "documents"},
        "slow": {"retriever": "test.held"},
        "leaky": {"retriever": "test.leaky", "max_age_s": 3600},
        # what the memory engine will register; here a stand-in retriever
        "memory": {"retriever": "test.leaky", "max_age_s": 3600},
    }
    data["actors"] = {"analyst": {"labels": ["finance"]}}
    data["policy"]["rules"].append(
        {"id": "no_blocked_source", "effect": "deny", "match": {"source": ["blocked"]}}
    )
    base = data["routes"]["r.basic"]
    warn = copy.deepcopy(base)
    warn.update(
        sources=["kb", "news", "private", "t2only", "blocked", "slow", "leaky"],
        citation_rule="warn",
        max_steps=12,
        max_invalid_proposals=10,
    )
    refuse = copy.deepcopy(warn)
    refuse.update(citation_rule="refuse", max_invalid_proposals=0)
    data["routes"]["r.ret"] = warn
    data["routes"]["r.cite"] = refuse
    data["routes"]["r.mem"] = {**copy.deepcopy(warn), "sources": ["kb", "memory"]}
    return data


@pytest.fixture
def dep(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    with schedule_deployment(request, backend, redis_url, tmp_path, retrieval_config()) as d:
        yield d


def docs(dep: Deployment) -> DocumentStore:
    return DocumentStore(dep.svc.store.engine)


def run(
    dep: Deployment, script: list[Any], route: str = "r.ret", **kw: Any
) -> tuple[RunView, list[dict[str, Any]]]:
    view = dep.svc.submit(
        kw.pop("tenant", "t1"),
        route,
        "answer from the docs",
        {"script": script},
        actor=kw.pop("actor", "tester"),
        request_id=uuid.uuid4().hex,
    )
    done = dep.wait_all([view.run_id])[view.run_id]
    return done, dep.svc.store.steps(view.run_id)


def shown(step: dict[str, Any]) -> list[str]:
    return [e["doc_id"] for e in (step["observation"] or {}).get("evidence", [])]


def refused(step: dict[str, Any]) -> str | None:
    return (step["observation"] or {}).get("refused")


def test_only_eligible_fresh_accessible_documents_of_the_tenant_are_shown(
    dep: Deployment,
) -> None:
    dep.start_worker(concurrency=1)
    store = docs(dep)
    mine = store.add(
        tenant_id="t1", source="kb", title="Refund policy", content="refunds in 30 days"
    )
    theirs = store.add(
        tenant_id="t2", source="kb", title="Refund policy", content="OTHER-TENANT refund text"
    )
    secret = store.add(
        tenant_id="t1", source="kb", title="Refund ledger", content="LABELLED refund figures",
        labels=["finance"],
    )  # fmt: skip
    stale = store.add(tenant_id="t1", source="news", title="Refund news", content="STALE refund")
    fresh = store.add(tenant_id="t1", source="news", title="Refund update", content="new refund")
    with dep.svc.store.engine.begin() as conn:
        conn.execute(
            update(documents_t)
            .where(documents_t.c.doc_id == stale["doc_id"])
            .values(updated_at=utcnow() - timedelta(hours=2))
        )

    # Given a run of t1 by an actor without labels that proposes good and bad searches
    view, steps = run(
        dep,
        [
            query("kb"),
            query("outside"),
            query("nowhere"),
            query("t2only"),
            query("kb", top_k=6),
            query("news"),
            query("private"),
            REPLY,
        ],
    )
    assert view.status == "succeeded", view.stop_reason
    # Then the kb search shows t1's unlabelled document only
    assert shown(steps[0]) == [mine["doc_id"]]
    # and the bad ones are refused with their codes, nothing searched
    assert [refused(s) for s in steps[1:5]] == [
        "source_not_eligible",
        "unknown_source",
        "source_access_denied",
        "top_k_over_cap",
    ]
    assert all("evidence" not in (s["observation"] or {}) for s in steps[1:5])
    # the stale news item is filtered (in SQL), the fresh one shown
    assert shown(steps[5]) == [fresh["doc_id"]]
    # a source that requires labels shows an actor without them nothing
    assert shown(steps[6]) == []
    # the reply cited nothing after evidence was retrieved: flagged (warn)
    assert view.output and view.output["citation_flags"] == {"uncited": True}

    # And nothing of the other tenant, the labelled or the stale document reached the model
    # or the trace; the trace's retrieval events carry references, never content
    trace = dep.svc.trace(view.run_id)
    everything = json.dumps([s["observation"] for s in steps]) + json.dumps(
        [e.data for e in trace], default=str
    )
    for doc in (theirs, secret, stale):
        assert doc["doc_id"] not in everything
    for marker in ("OTHER-TENANT", "LABELLED", "STALE"):
        assert marker not in everything
    retrievals = [e.data for e in trace if e.kind == "retrieval"]
    assert len(retrievals) == 3
    assert all("content" not in ref for r in retrievals for ref in r["evidence"])
    assert retrievals[0]["evidence"][0]["doc_id"] == mine["doc_id"]
    assert any(e.kind == "citation_flagged" for e in trace)

    # the evidence is recorded on the run, tenant-scoped
    evidence = EvidenceStore(dep.svc.store.engine)
    rows = evidence.of_run(view.run_id, "t1")
    assert [(r["doc_id"], r["step_no"]) for r in rows] == [
        (mine["doc_id"], 0),
        (fresh["doc_id"], 5),
    ]
    ids = {r["evidence_id"] for r in rows}
    assert evidence.retrieved(view.run_id, "t1", [*ids, "ev-never"]) == ids
    assert evidence.retrieved(view.run_id, "t2", ids) == set()
    # each search (not the refused ones) is spent from the tool_calls budget dimension
    with dep.svc.store.engine.connect() as conn:
        spent = conn.execute(
            text("SELECT SUM(tool_calls) FROM spend_records WHERE run_id = :r"),
            {"r": view.run_id},
        ).scalar()
    assert spent == 3


def test_an_actor_holding_a_label_sees_the_labelled_document(dep: Deployment) -> None:
    dep.start_worker(concurrency=1)
    store = docs(dep)
    secret = store.add(
        tenant_id="t1", source="private", title="Payroll refund", content="refund payroll",
        labels=["finance"],
    )  # fmt: skip
    store.add(tenant_id="t1", source="private", title="HR refund", content="refund", labels=["hr"])
    store.add(tenant_id="t1", source="private", title="Open refund", content="refund open")
    _view, steps = run(dep, [query("private"), REPLY], actor="analyst")
    # the finance document only: not the hr one, not the unlabelled one (labels required)
    assert shown(steps[0]) == [secret["doc_id"]], steps[0]["observation"]


def test_the_runtime_filters_what_a_retriever_returns(dep: Deployment) -> None:
    dep.start_worker(concurrency=1)
    view, steps = run(dep, [query("leaky"), REPLY])
    assert shown(steps[0]) == ["good"]
    trace = [e.data for e in dep.svc.trace(view.run_id) if e.kind == "retrieval"]
    assert trace[0]["filtered"] == 3


def test_a_policy_rule_on_a_source_denies_the_search(dep: Deployment) -> None:
    dep.start_worker(concurrency=1)
    docs(dep).add(tenant_id="t1", source="blocked", title="Refund", content="refund")
    view, steps = run(dep, [query("kb", "blocked"), REPLY])
    assert view.status == "refused"
    assert view.stop_reason == "policy_denied:no_blocked_source"
    assert "evidence" not in (steps[0]["observation"] or {})
    assert not [e for e in dep.svc.trace(view.run_id) if e.kind == "retrieval"]


def test_citations_of_evidence_never_retrieved_are_flagged_or_refused(dep: Deployment) -> None:
    dep.start_worker(concurrency=1)
    docs(dep).add(tenant_id="t1", source="kb", title="Refund policy", content="refund policy")
    bogus = {"type": "reply", "text": "see", "citations": ["ev-never-retrieved"]}
    # warn: the reply stands, flagged in its output and the trace
    view, _ = run(dep, [bogus])
    assert view.status == "succeeded"
    assert view.output["citation_flags"] == {"unknown": ["ev-never-retrieved"]}
    flagged = [e.data for e in dep.svc.trace(view.run_id) if e.kind == "citation_flagged"]
    assert flagged == [{"rule": "warn", "unknown": ["ev-never-retrieved"]}]
    # refuse: the reply is refused
    view, _ = run(dep, [query("kb"), bogus], route="r.cite")
    assert (view.status, view.stop_reason) == ("refused", "invalid_proposal:unknown_citation")
    # refuse, uncited after retrieving evidence
    view, _ = run(dep, [query("kb"), REPLY], route="r.cite")
    assert (view.status, view.stop_reason) == ("refused", "invalid_proposal:uncited_reply")
    # refuse, nothing retrieved and nothing cited: nothing to flag
    view, _ = run(dep, [REPLY], route="r.cite")
    assert view.status == "succeeded"


def test_evidence_of_a_redelivered_step_is_recorded_once(dep: Deployment) -> None:
    worker = dep.start_worker(concurrency=1)
    redis, keys = dep.svc.tool_redis, dep.svc.keys
    hold, searches = (keys.demo(f"retrieval:t1:{k}") for k in ("hold", "searches"))
    redis.set(hold, 1)
    view = dep.svc.submit(
        "t1", "r.ret", "slow search", {"script": [query("slow"), REPLY]}, actor="tester",
        request_id=uuid.uuid4().hex,
    )  # fmt: skip

    # When the worker's pool process is killed while it is inside the search
    wait_for(lambda: int(redis.get(searches) or 0) >= 1, message="the search to start")
    assert worker.kill_children()
    # and the step is delivered again and searched again
    wait_for(
        lambda: int(redis.get(searches) or 0) >= 2 and worker.children(),
        timeout=90,
        message="the redelivered search",
    )
    redis.delete(hold)
    done = dep.wait_all([view.run_id], timeout=90)[view.run_id]

    # Then the run completes with one retrieval step and its evidence recorded once
    assert done.status == "succeeded", done.stop_reason
    steps = dep.svc.store.steps(view.run_id)
    assert [s["kind"] for s in steps] == ["retrieval", "reply"]
    assert shown(steps[0]) == ["held-0", "held-1", "held-2"]
    with dep.svc.store.engine.connect() as conn:
        rows = conn.execute(
            select(evidence_t.c.evidence_id).where(evidence_t.c.run_id == view.run_id)
        ).all()
    assert len(rows) == 3
    assert sorted(r[0] for r in rows) == sorted(
        e["id"] for e in steps[0]["observation"]["evidence"]
    )


def test_the_working_set_records_what_the_model_was_shown(dep: Deployment) -> None:
    dep.start_worker(concurrency=1)
    store = docs(dep)
    first = store.add(tenant_id="t1", source="kb", title="Refund policy", content="refund a")
    view, _ = run(dep, [query("kb"), query("kb"), REPLY])
    sets = [e for e in dep.svc.trace(view.run_id) if e.kind == "working_set"]
    # one per model call, ids only: nothing before the first search, then the evidence
    assert [len(e.data["evidence"]) for e in sets] == [0, 1, 2]
    assert sets[0].data["tools"] and sets[0].data["constraints"]["citation_rule"] == "warn"
    assert first["doc_id"] not in json.dumps([e.data for e in sets])
    # the version set names the retrievers of the route's sources
    assert view.version_set.retriever == "documents@fts-1,test.held@held-1,test.leaky@leaky-1"
    # a route listing the memory source: the memories found for the goal, filtered alike
    view, _ = run(dep, [REPLY], route="r.mem")
    (mem,) = [e.data for e in dep.svc.trace(view.run_id) if e.kind == "working_set"]
    assert mem["memories"] == ["good"] and mem["evidence"] == []
    # a route without sources records none
    plain = dep.svc.submit(
        "t1", "r.basic", "no sources", {"script": [REPLY]}, actor="tester",
        request_id=uuid.uuid4().hex,
    )  # fmt: skip
    dep.wait_all([plain.run_id])
    assert not [e for e in dep.svc.trace(plain.run_id) if e.kind == "working_set"]


def test_a_tiny_context_budget_drops_the_oldest_evidence_first(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = retrieval_config()
    data["routes"]["r.ret"]["context_budget_tokens"] = 1500
    with schedule_deployment(request, backend, redis_url, tmp_path, data) as dep:
        dep.start_worker(concurrency=1)
        docs(dep).add(tenant_id="t1", source="kb", title="Refund", content="refund")
        view, steps = run(dep, [query("kb"), query("kb"), query("kb"), REPLY])
        sets = [e.data for e in dep.svc.trace(view.run_id) if e.kind == "working_set"]
        newest = steps[2]["observation"]["evidence"][0]["id"]
        assert sets[-1]["evidence"] == [newest]
        assert sets[-1]["dropped_evidence"] == 2
        assert sets[-1]["tokens"] <= 1500


# --- the documents table's full-text search, on each database -------------------------------


@pytest.fixture
def documents(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[DocumentStore]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'docs.db'}"
    else:
        url = pg_schema_url(
            request.getfixturevalue("pg_base_url"), f"agentrt_d_{uuid.uuid4().hex[:10]}"
        )
    engine = make_engine(url)
    RunStore(engine).create_schema()
    try:
        yield DocumentStore(engine)
    finally:
        engine.dispose()


def search(store: DocumentStore, q: str, tenant: str = "t1", **kw: Any) -> list[str]:
    found = store.search(
        tenant_id=tenant,
        source=kw.pop("source", "kb"),
        query=q,
        top_k=kw.pop("top_k", 10),
        not_before=kw.pop("not_before", None),
        labels=frozenset(kw.pop("labels", ())),
        labels_required=kw.pop("labels_required", False),
    )
    return [f.row["doc_id"] for f in found]


def test_full_text_search_ranks_tenant_scoped_and_follows_versions(
    documents: DocumentStore,
) -> None:
    add = documents.add
    add(doc_id="many", tenant_id="t1", source="kb", title="Refund refund",
        content="refund policy: refunds of a refund are refunded")  # fmt: skip
    add(doc_id="once", tenant_id="t1", source="kb", title="Shipping", content="one refund here")
    add(doc_id="none", tenant_id="t1", source="kb", title="Shipping", content="parcels and boxes")
    add(doc_id="other", tenant_id="t2", source="kb", title="Refund", content="refund refund")
    add(doc_id="elsewhere", tenant_id="t1", source="faq", title="Refund", content="refund")
    # the better match first (stemmed: refunds, refunded), nothing that does not match,
    # nothing of another tenant or source
    assert search(documents, "refund") == ["many", "once"]
    assert search(documents, "refunds", top_k=1) == ["many"]
    assert search(documents, "boxes") == ["none"]
    # query syntax is never passed through: quotes, operators and columns are words
    assert search(documents, 'title:"refund" OR NOT * (') == ["many", "once"]
    assert search(documents, "!!! ???") == []
    # re-adding an id replaces its text, bumps its version, and the index follows
    again = add(doc_id="none", tenant_id="t1", source="kb", title="Refunds", content="refund")
    assert again["version"] == 2
    assert "none" in search(documents, "refund") and search(documents, "boxes") == []
    # removed: never found again; another tenant's id is not found for this one
    documents.remove("none", "t1")
    assert "none" not in search(documents, "refund")
    with pytest.raises(DocumentNotFound):
        documents.remove("other", "t1")
    # labels and freshness are filtered in SQL
    add(doc_id="hr", tenant_id="t1", source="kb", title="Refund", content="refund", labels=["hr"])
    assert "hr" not in search(documents, "refund")
    assert "hr" in search(documents, "refund", labels={"hr"})
    assert search(documents, "refund", labels={"hr"}, labels_required=True) == ["hr"]
    assert search(documents, "refund", not_before=utcnow() + timedelta(seconds=60)) == []


# --- agentrt docs -------------------------------------------------------------------------


def test_docs_cli_adds_lists_and_removes(dep: Deployment, tmp_path: Path) -> None:
    env = {"AGENTRT_DATABASE_URL": dep.env["AGENTRT_DATABASE_URL"], "COLUMNS": "200"}
    cli = CliRunner()
    path = tmp_path / "doc.txt"
    path.write_text("refunds take 30 days")
    added = cli.invoke(
        app,
        ["docs", "add", "--tenant", "t1", "--source", "kb", "--title", "Refunds",
         "--file", str(path), "--labels", "finance,ops", "--id", "refunds", "--json"],
        env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    row = json.loads(added.output)
    assert (row["doc_id"], row["version"], row["labels"]) == ("refunds", 1, ["finance", "ops"])
    again = cli.invoke(
        app,
        ["docs", "add", "--tenant", "t1", "--source", "kb", "--title", "Refunds", "--id",
         "refunds"],
        input="refunds take 14 days now",
        env=env,
    )  # fmt: skip
    assert again.exit_code == 0 and "refunds version 2" in again.output, again.output
    cli.invoke(
        app,
        ["docs", "add", "--tenant", "t2", "--source", "kb", "--title", "T2", "--text", "x"],
        env=env,
    )  # fmt: skip
    listed = cli.invoke(app, ["docs", "list", "--tenant", "t1", "--json"], env=env)
    rows = json.loads(listed.output)
    assert [(r["doc_id"], r["version"]) for r in rows] == [("refunds", 2)]
    assert "content" not in rows[0]
    assert json.loads(cli.invoke(app, ["docs", "list", "--tenant", "t1", "--source", "faq",
                                       "--json"], env=env).output) == []  # fmt: skip
    # another tenant's remove of the id is refused; the tenant's own removes it
    wrong = cli.invoke(app, ["docs", "remove", "refunds", "--tenant", "t2"], env=env)
    assert wrong.exit_code == 2 and "no document 'refunds' for tenant 't2'" in wrong.output
    gone = cli.invoke(app, ["docs", "remove", "refunds", "--tenant", "t1"], env=env)
    assert gone.exit_code == 0 and "removed refunds" in gone.output
    empty = cli.invoke(app, ["docs", "list", "--tenant", "t1"], env=env)
    assert "no documents" in empty.output
    # the source system's time: a document last changed 2 hours ago is stale for a source
    # whose freshness rule is an hour, and is never found there
    old = cli.invoke(
        app,
        ["docs", "add", "--tenant", "t1", "--source", "news", "--title", "Old", "--text",
         "zebra crossing", "--updated-at", "2h", "--json"],
        env=env,
    )  # fmt: skip
    assert old.exit_code == 0, old.output
    old_row = json.loads(old.output)
    documents = DocumentStore(dep.svc.store.engine)

    def found(max_age: timedelta) -> list[str]:
        hits = documents.search(
            tenant_id="t1", source="news", query="zebra", top_k=5,
            not_before=utcnow() - max_age, labels=frozenset(),
        )  # fmt: skip
        return [h.row["doc_id"] for h in hits]

    assert found(timedelta(hours=3)) == [old_row["doc_id"]]
    assert found(timedelta(hours=1)) == []
    for when in ("2999-01-01T00:00:00Z", "soon"):
        refused = cli.invoke(
            app,
            ["docs", "add", "--tenant", "t1", "--source", "kb", "--title", "x", "--text", "y",
             "--updated-at", when],
            env=env,
        )  # fmt: skip
        assert refused.exit_code == 2 and "--updated-at" in refused.output, refused.output
    bad = cli.invoke(
        app,
        ["docs", "add", "--tenant", "t1", "--source", "kb", "--title", "x", "--text", "y",
         "--labels", "bad label"],
        env=env,
    )  # fmt: skip
    assert bad.exit_code == 2 and "--labels" in bad.output


# --- the config -------------------------------------------------------------------------------


def config_problems(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        RuntimeConfig.model_validate(data)
    return str(exc.value)


def test_the_config_names_broken_source_references() -> None:
    # every existing config still loads: sources, citation_rule and the budget default
    plain = RuntimeConfig.model_validate(base_config())
    route = plain.routes["r.basic"]
    assert (route.sources, route.citation_rule, plain.sources) == ([], "warn", {})
    assert RuntimeConfig.model_validate(retrieval_config()).routes["r.ret"].sources

    data = retrieval_config()
    data["routes"]["r.ret"]["sources"].append("nope")
    assert "routes.r.ret.sources: source 'nope' is not declared under 'sources'" in (
        config_problems(data)
    )
    data = retrieval_config()
    data["sources"]["kb"]["tenants"] = ["ghost"]
    assert "sources.kb.tenants: unknown tenant 'ghost'" in config_problems(data)
    data = retrieval_config()
    data["policy"]["rules"].append({"id": "x", "effect": "deny", "match": {"source": ["zz*"]}})
    assert "'zz*' matches no source declared under 'sources'" in config_problems(data)
    data = retrieval_config()
    data["policy"]["rules"].append(
        {"id": "y", "effect": "deny", "match": {"source": ["kb"], "tool": ["kb.search"]}}
    )
    assert "a rule with 'source' matches searches" in config_problems(data)
    data = retrieval_config()
    data["routes"]["r.ret"]["citation_rule"] = "maybe"
    assert "citation_rule" in config_problems(data)
    data = retrieval_config()
    data["sources"]["kb"]["max_top_k"] = 0
    assert "max_top_k" in config_problems(data)


def test_a_source_whose_retriever_is_not_registered_is_refused() -> None:
    config = RuntimeConfig.model_validate(retrieval_config())
    registry = RetrieverRegistry([LeakyRetriever()])
    problems = registry.problems(config)
    assert "sources.kb.retriever: no retriever 'documents' is registered" in problems[0]
    assert registry.version_label(config, ["leaky", "kb"]) == "test.leaky@leaky-1"


def test_a_policy_rule_matches_sources_or_tools_never_both() -> None:
    source_rule = PolicyRule(id="s", effect="deny", match=RuleMatch(source=["kb"]))
    tool_rule = PolicyRule(id="t", effect="deny", match=RuleMatch(tool=["*"]))
    tenant_rule = PolicyRule(id="n", effect="deny", match=RuleMatch(tenant=["t1"]))
    ctx: dict[str, Any] = {
        "args": {}, "side_effect": None, "tenant": "t1", "route": "r", "risk_class": "low",
        "autonomy_level": "bounded_autonomous", "allowed_tools": (), "tool_registered": True,
        "tool_enabled": True,
    }  # fmt: skip
    search_kb = PolicyContext(tool="source:kb", source="kb", **ctx)
    call = PolicyContext(tool="kb.search", **ctx)
    assert rule_matches(source_rule, search_kb) and not rule_matches(source_rule, call)
    assert rule_matches(tool_rule, call) and not rule_matches(tool_rule, search_kb)
    assert rule_matches(tenant_rule, search_kb) and rule_matches(tenant_rule, call)
