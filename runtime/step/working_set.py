"""What the model is shown besides its goal and tools, selected per step for routes that
retrieve: the evidence retrieved so far and the memories the ``memory`` source finds for
the goal, fitted to the route's ``context_budget_tokens`` (the oldest evidence goes
first). The selection (ids, never content) is traced as ``working_set`` each step, so a
trace answers "what did the agent see when it decided". A route without ``sources``
selects nothing and costs nothing: no SQL, no search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.config import RuntimeConfig
from runtime.retrieval.registry import RetrieverRegistry
from runtime.step.retrieval import MAX_SHOWN_CHARS, search_request, visible
from runtime.step.state import Step
from runtime.store.db import utcnow

#: the source name memories are read through (registered by the memory engine)
MEMORY_SOURCE = "memory"
#: a sound upper bound of the tokens one shown result takes (its bounded content, at
#: worst one token per 3 characters, plus its id, title and score)
ITEM_TOKENS = MAX_SHOWN_CHARS // 3 + 60


class EvidenceRows(Protocol):
    def of_run(self, run_id: str, tenant_id: str, limit: int = 1000) -> list[dict[str, Any]]: ...


@dataclass
class Selection:
    evidence_ids: list[str] = field(default_factory=list)
    memory_ids: list[str] = field(default_factory=list)
    constraints: dict[str, Any] = field(default_factory=dict)
    dropped_evidence: int = 0
    dropped_memories: int = 0
    tokens: int = 0


def text_tokens(text: str) -> int:
    """An upper bound: no tokenizer makes more than one token per character; prose is
    about four characters per token, so count one per three."""
    return len(text) // 3 + 1


def fit(
    base: int, evidence: Sequence[str], memories: Sequence[str], budget: int
) -> tuple[list[str], list[str]]:
    """Drop the oldest evidence first, then memories, until everything fits ``budget``."""
    kept_ev, kept_mem = list(evidence), list(memories)
    while kept_ev and base + ITEM_TOKENS * (len(kept_ev) + len(kept_mem)) > budget:
        kept_ev.pop(0)
    while kept_mem and base + ITEM_TOKENS * len(kept_mem) > budget:
        kept_mem.pop()
    return kept_ev, kept_mem


class WorkingSetAssembly:
    def __init__(
        self, *, config: RuntimeConfig, evidence: EvidenceRows, retrievers: RetrieverRegistry
    ) -> None:
        self.config = config
        self.evidence = evidence
        self.retrievers = retrievers

    def select(self, st: Step, tool_names: Sequence[str]) -> Selection | None:
        route = st.route
        if not route.sources:
            return None
        constraints = {
            "steps_left": route.max_steps - int(st.run["turns"]),
            "sources": list(route.sources),
            "citation_rule": route.citation_rule,
        }
        evidence = [r["evidence_id"] for r in self.evidence.of_run(st.run_id, st.tenant_id)]
        memories = self._memories(st)
        base = text_tokens(str(st.run["goal"])) + text_tokens(" ".join(tool_names)) + 50
        kept_ev, kept_mem = fit(base, evidence, memories, route.context_budget_tokens)
        selection = Selection(
            evidence_ids=kept_ev,
            memory_ids=kept_mem,
            constraints=constraints,
            dropped_evidence=len(evidence) - len(kept_ev),
            dropped_memories=len(memories) - len(kept_mem),
            tokens=base + ITEM_TOKENS * (len(kept_ev) + len(kept_mem)),
        )
        st.trace.add(
            "working_set",
            goal=True,
            constraints=constraints,
            tools=list(tool_names),
            evidence=selection.evidence_ids,
            memories=selection.memory_ids,
            dropped_evidence=selection.dropped_evidence,
            dropped_memories=selection.dropped_memories,
            tokens=selection.tokens,
            budget_tokens=route.context_budget_tokens,
        )
        return selection

    def _memories(self, st: Step) -> list[str]:
        """The memories the ``memory`` source finds for the goal, under its own rules
        (tenant, freshness, labels); none unless the route lists it and it is registered."""
        entry = self.config.sources.get(MEMORY_SOURCE)
        if MEMORY_SOURCE not in st.route.sources or entry is None:
            return []
        if not entry.allows_tenant(st.tenant_id):
            return []
        retriever = self.retrievers.get(entry.retriever)
        if retriever is None:
            return []
        request = search_request(
            self.config, st, MEMORY_SOURCE, entry, str(st.run["goal"]), entry.max_top_k, utcnow()
        )
        return [h.doc_id for h in retriever.search(request) if visible(h, request)]
