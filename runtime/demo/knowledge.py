"""The demo's knowledge act (``make demo``, issue 15): after the workload, on the same workers,
one research run retrieves, remembers and delegates, and a later run reads what it remembered.

1. **Retrieval with evidence**: the handbook source holds acme's documents and one of
   globex's. ``support.research`` searches it; every result shown to the model becomes an
   evidence reference (``ev-...``) recorded with the step; globex's document is never shown.
2. **Memory write**: the run remembers the refund rule under ``customers``, resting on the
   evidence it retrieved (the route requires evidence), kept 30 days.
3. **Delegation**: the run delegates the customer-facing summary to ``support.summarize``: a
   child run under a budget carved out of the parent's; the parent waits holding no slot and
   resumes with the child's reply, then replies citing its evidence.
4. **Reading memory**: a later run of the same tenant searches the ``memory`` source and
   finds what the first run wrote.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from runtime.contract import RunView
from runtime.errors import DemoError
from runtime.memory.store import MemoryStore
from runtime.service import RuntimeService
from runtime.store.documents import DocumentStore

ROUTE = "support.research"
CHILD_ROUTE = "support.summarize"
TENANT = "acme"
OTHER_TENANT = "globex"
SOURCE = "handbook"
NAMESPACE = "customers"
ACTOR = "demo:knowledge"

DOCUMENTS = [
    (
        TENANT,
        "Refund window",
        "Customers may ask for a refund within 30 days of delivery. Refunds go back to the "
        "original payment method.",
    ),
    (TENANT, "Shipping delays", "Orders ship within two business days; delays are emailed."),
    (OTHER_TENANT, "Refund window (globex)", "globex refunds within 14 days of delivery."),
]


@dataclass
class KnowledgeReport:
    research_run: str | None = None
    research_status: str | None = None
    #: evidence the research run was shown: (evidence id, document title)
    evidence: list[tuple[str, str]] = field(default_factory=list)
    #: documents of another tenant among them (0: isolation held)
    foreign_shown: int = 0
    memory_id: str | None = None
    memory_evidence: list[str] = field(default_factory=list)
    child_run: str | None = None
    child_status: str | None = None
    child_budget: dict[str, int] = field(default_factory=dict)
    child_reply: str | None = None
    reply_citations: list[str] = field(default_factory=list)
    reader_run: str | None = None
    #: memories the later run found through the ``memory`` source
    memories_found: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "research_run": self.research_run,
            "research_status": self.research_status,
            "evidence": [list(e) for e in self.evidence],
            "foreign_shown": self.foreign_shown,
            "memory_id": self.memory_id,
            "memory_evidence": self.memory_evidence,
            "child_run": self.child_run,
            "child_status": self.child_status,
            "child_budget": self.child_budget,
            "child_reply": self.child_reply,
            "reply_citations": self.reply_citations,
            "reader_run": self.reader_run,
            "memories_found": self.memories_found,
        }


def _usage(tokens: tuple[int, int] = (400, 40)) -> dict[str, int]:
    return {"input_tokens": tokens[0], "output_tokens": tokens[1]}


def research_script(key: str) -> list[dict[str, Any]]:
    """Search, remember (citing what was found), delegate the summary, reply citing it.
    ``$evidence`` is what the step's working set shows (``runtime.proposers.scripted``)."""
    child_reply = "Good news: you can ask for a refund within 30 days of delivery."
    return [
        {
            "type": "retrieval_query",
            "query": "refund window delivery",
            "sources": [SOURCE],
            "top_k": 3,
            "usage": _usage(),
        },
        {
            "type": "memory_write",
            "namespace": NAMESPACE,
            "key": key,
            "content": "acme refunds: within 30 days of delivery, to the original payment.",
            "retention": "30d",
            "evidence": "$evidence",
            "usage": _usage(),
        },
        {
            "type": "delegate",
            "route": CHILD_ROUTE,
            "goal": "Write the customer a one-line answer about the refund window",
            "input": {"script": [{"type": "reply", "text": child_reply, "usage": _usage()}]},
            "usage": _usage(),
        },
        {
            "type": "reply",
            "text": "Refunds are accepted within 30 days of delivery (answer sent).",
            "citations": "$evidence",
            "usage": _usage(),
        },
    ]


def reader_script() -> list[dict[str, Any]]:
    return [
        {
            "type": "retrieval_query",
            "query": "acme refunds",
            "sources": ["memory"],
            "top_k": 3,
            "usage": _usage(),
        },
        {"type": "reply", "text": "Found it in memory.", "citations": "$evidence"},
    ]


def run_knowledge(svc: RuntimeService, timeout_s: float) -> KnowledgeReport:
    docs = DocumentStore(svc.store.engine)
    titles: dict[str, tuple[str, str]] = {}
    for tenant, title, content in DOCUMENTS:
        row = docs.add(tenant_id=tenant, source=SOURCE, title=title, content=content)
        titles[str(row["doc_id"])] = (tenant, title)
    key = f"refund-window-{uuid.uuid4().hex[:6]}"
    report = KnowledgeReport()
    research = _run(svc, ROUTE, "Research the refund window", research_script(key), timeout_s)
    report.research_run, report.research_status = research.run_id, research.status.value
    for event in svc.trace(research.run_id):
        if event.kind == "retrieval":
            for ref in event.data.get("evidence") or []:
                tenant, title = titles.get(str(ref.get("doc_id")), ("?", "?"))
                report.evidence.append((str(ref.get("id")), title))
                report.foreign_shown += tenant != TENANT
        elif event.kind == "delegated":
            report.child_run = str(event.data.get("child_run_id"))
            report.child_budget = dict(event.data.get("budget") or {})
    if isinstance(research.output, dict):
        report.reply_citations = list(research.output.get("citations") or [])
    memories = [
        m
        for m in MemoryStore(svc.store.engine).listed(TENANT, namespace=NAMESPACE)
        if m["key"] == key
    ]
    if memories:
        report.memory_id = str(memories[0]["memory_id"])
        report.memory_evidence = list(memories[0].get("evidence") or [])
    if report.child_run:
        child = svc.get(report.child_run)
        report.child_status = child.status.value
        if isinstance(child.output, dict):
            report.child_reply = child.output.get("text")
    reader = _run(svc, ROUTE, "What do we know about acme refunds?", reader_script(), timeout_s)
    report.reader_run = reader.run_id
    for event in svc.trace(reader.run_id):
        if event.kind == "retrieval":
            report.memories_found += [
                str(ref.get("doc_id")) for ref in event.data.get("evidence") or []
            ]
    return report


def _run(
    svc: RuntimeService, route: str, goal: str, script: list[dict[str, Any]], timeout_s: float
) -> RunView:
    run = svc.submit(
        TENANT,
        route,
        goal,
        {"script": script},
        actor=ACTOR,
        request_id=f"demo-knowledge-{uuid.uuid4().hex}",
    )
    done = svc.wait(run.run_id, timeout=timeout_s)
    if done.status.value != "succeeded":
        raise DemoError(f"knowledge act: run {run.run_id} on {route} ended {done.status.value}")
    return done


def print_knowledge(report: KnowledgeReport, console: Console) -> None:
    console.print("[bold]knowledge[/]: retrieval with evidence, a memory write, a delegation")
    shown = ", ".join(f"{ev} ({title})" for ev, title in report.evidence) or "none"
    console.print(f"  retrieval: {len(report.evidence)} evidence references: {shown}")
    console.print(f"  other tenants' documents shown: {report.foreign_shown}")
    console.print(
        f"  memory write: {report.memory_id or 'none'} (customers, 30d) resting on "
        f"{len(report.memory_evidence)} evidence references"
    )
    budget = ", ".join(f"{k}={v}" for k, v in sorted(report.child_budget.items()))
    console.print(
        f"  delegation: child {report.child_run or 'none'} on {CHILD_ROUTE} "
        f"{report.child_status or '-'} under a carved budget ({budget})"
    )
    console.print(f"  child's reply, returned to the parent: {report.child_reply!r}")
    console.print(f"  parent's reply cites: {', '.join(report.reply_citations) or 'nothing'}")
    console.print(
        f"  a later run read {len(report.memories_found)} memories through the memory source"
    )
    console.print(
        f"  what the agent saw at each step: agentrt trace {report.research_run} "
        "(working_set, retrieval, delegated events)"
    )
