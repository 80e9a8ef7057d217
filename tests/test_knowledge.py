"""Retrieval, evidence and memory together (issue 15), end to end with real workers on both
SQL backends: a run searches a document source, remembers what it found resting on that
evidence, and cites it; a later run of the same tenant reads the memory back through the
``memory`` source, another tenant's run never does, and a forgotten memory is gone from every
later retrieval. Evidence is per run: a memory write cannot rest on another run's evidence.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.contract import RunView
from runtime.memory.store import MemoryStore
from runtime.store.db import utcnow
from runtime.store.documents import DocumentStore
from tests.conftest import _database_url
from tests.support import ROOT, Deployment

TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
ROUTE = "r.know"


def knowledge_config(tmp: Path) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    base = dict(data["routes"]["r.basic"])
    data["sources"] = {
        "handbook": {"retriever": "documents", "max_top_k": 5},
        "memory": {"retriever": "memory", "max_top_k": 5},
    }
    data["routes"][ROUTE] = {
        **base,
        "sources": ["handbook", "memory"],
        "citation_rule": "refuse",
        "memory": {
            "namespaces": ["facts"],
            "retention_classes": ["30d"],
            "require_evidence": True,
        },
    }
    path = tmp / "knowledge.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    return path


@pytest.fixture(scope="module")
def dep(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"know-{backend}")
    d = Deployment.create(
        name=f"k{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=knowledge_config(tmp),
        home=tmp,
    )
    try:
        d.start_worker(concurrency=2)
        yield d
    finally:
        d.close()


def run(dep: Deployment, tenant: str, script: list[dict[str, Any]]) -> RunView:
    view = dep.svc.submit(
        tenant, ROUTE, "know", {"script": script}, actor="tester", request_id=uuid.uuid4().hex
    )
    return dep.wait_all([view.run_id], timeout=90)[view.run_id]


def search(source: str, query: str) -> dict[str, Any]:
    return {"type": "retrieval_query", "query": query, "sources": [source], "top_k": 5}


def seen(dep: Deployment, run_id: str) -> str:
    """Everything the run's model was shown (its steps' observations), as text."""
    return json.dumps([s["observation"] for s in dep.svc.store.steps(run_id)], default=str)


def shown(dep: Deployment, run_id: str) -> list[dict[str, Any]]:
    """Every evidence reference the run's model was shown (from its trace)."""
    refs: list[dict[str, Any]] = []
    for event in dep.svc.trace(run_id):
        if event.kind == "retrieval":
            refs += event.data.get("evidence") or []
    return refs


def test_a_memory_resting_on_evidence_is_read_back_by_its_tenant_only_until_forgotten(
    dep: Deployment,
) -> None:
    word = f"wombat{uuid.uuid4().hex[:8]}"
    DocumentStore(dep.svc.store.engine).add(
        tenant_id="t1", source="handbook", title="Care", content=f"The {word} eats grass."
    )
    key = f"k{uuid.uuid4().hex[:8]}"
    remember = {
        "type": "memory_write",
        "namespace": "facts",
        "key": key,
        "content": f"{word} diet: grass",
        "retention": "30d",
        "evidence": "$evidence",
    }
    reply = {"type": "reply", "text": "noted", "citations": "$evidence"}
    first = run(dep, "t1", [search("handbook", word), remember, reply])
    assert first.status.value == "succeeded", first
    (evidence,) = shown(dep, first.run_id)
    # the reply cited what the run retrieved (the route refuses anything else)
    assert first.output["citations"] == [evidence["id"]]
    memories = MemoryStore(dep.svc.store.engine).listed("t1", namespace="facts")
    (memory,) = [m for m in memories if m["key"] == key]
    assert memory["evidence"] == [evidence["id"]]
    assert (memory["run_id"], memory["actor"]) == (first.run_id, "tester")

    # a later run of the same tenant finds it through the memory source
    later = run(dep, "t1", [search("memory", word), {"type": "reply", "text": "ok"}])
    assert [r["doc_id"] for r in shown(dep, later.run_id)] == [memory["memory_id"]]
    assert "diet: grass" in seen(dep, later.run_id)
    # another tenant's run never sees it
    other = run(dep, "t2", [search("memory", word), {"type": "reply", "text": "ok"}])
    assert other.status.value == "succeeded" and shown(dep, other.run_id) == []
    assert "diet: grass" not in seen(dep, other.run_id)

    # forgotten: gone from every later retrieval
    MemoryStore(dep.svc.store.engine).forget(
        "t1", memory["memory_id"], actor="ops:test", reason="asked", now=utcnow()
    )
    after = run(dep, "t1", [search("memory", word), {"type": "reply", "text": "ok"}])
    assert after.status.value == "succeeded" and shown(dep, after.run_id) == []
    assert "diet: grass" not in seen(dep, after.run_id)


def test_a_memory_write_cannot_rest_on_another_runs_evidence(dep: Deployment) -> None:
    word = f"quokka{uuid.uuid4().hex[:8]}"
    DocumentStore(dep.svc.store.engine).add(
        tenant_id="t1", source="handbook", title="Quokka", content=f"The {word} smiles."
    )
    first = run(dep, "t1", [search("handbook", word), {"type": "reply", "text": "ok"}])
    # the route refuses an uncited reply after a retrieval
    assert first.status.value == "refused" and first.stop_reason == (
        "invalid_proposal:uncited_reply"
    )
    (evidence,) = shown(dep, first.run_id)
    remember = {
        "type": "memory_write",
        "namespace": "facts",
        "key": "borrowed",
        "content": f"{word} smiles",
        "retention": "30d",
        "evidence": [evidence["id"]],
    }
    second = run(dep, "t1", [remember])
    assert second.stop_reason == "invalid_proposal:unknown_evidence"
    assert [
        m for m in MemoryStore(dep.svc.store.engine).listed("t1") if m["key"] == "borrowed"
    ] == []
