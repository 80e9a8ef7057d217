"""The ``retrieval_query`` stage: a search is checked like a tool call - every source named
must be declared (``unknown_source``), listed by the route (``source_not_eligible``), open
to the run's tenant (``source_access_denied``), asked for no more than its cap
(``top_k_over_cap``) and allowed by the policy (``policy_denied``) - and only then searched.
What comes back is filtered again (tenant, freshness, access labels: a retriever only
ranks), and each result shown becomes an evidence reference, recorded with the step's
checkpoint and in the trace (ids, never content)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from runtime import stop_reasons
from runtime.config import RuntimeConfig, SourceConfig
from runtime.contract import RetrievalQueryProposal, RunStatus
from runtime.policy import Decision, PolicyContext, PolicyEngine
from runtime.retrieval.base import Hit, SearchRequest
from runtime.retrieval.registry import RetrieverRegistry
from runtime.step import outcomes
from runtime.step.budget import Budgeting
from runtime.step.state import Move, Step
from runtime.step_record import StepKind, StepOutcome
from runtime.store.db import utcnow

#: characters of a result's content the model is shown
MAX_SHOWN_CHARS = 2000


@dataclass(frozen=True)
class Refusal:
    code: str
    source: str
    msg: str


def evidence_id(run_id: str, step_no: int, source: str, doc_id: str) -> str:
    """The same for every copy of a step: a redelivered step records its evidence once."""
    digest = hashlib.sha256(f"{run_id}\0{step_no}\0{source}\0{doc_id}".encode()).hexdigest()
    return f"ev-{digest[:24]}"


def actor_labels(config: RuntimeConfig, actor: str) -> frozenset[str]:
    entry = config.actors.get(actor)
    return frozenset(entry.labels) if entry is not None else frozenset()


def search_request(
    config: RuntimeConfig,
    st: Step,
    source: str,
    entry: SourceConfig,
    query: str,
    top_k: int,
    now: datetime,
) -> SearchRequest:
    """The search of ``source`` for the run: its tenant, the source's freshness and access
    rules, the labels the run's actor holds."""
    not_before = now - timedelta(seconds=entry.max_age_s) if entry.max_age_s else None
    return SearchRequest(
        tenant_id=st.tenant_id,
        source=source,
        query=query,
        top_k=top_k,
        not_before=not_before,
        labels=actor_labels(config, str(st.run["actor_id"])),
        labels_required=entry.labels_required,
    )


def visible(hit: Hit, request: SearchRequest) -> bool:
    """The runtime's own check of a result, whatever the retriever did: the run's tenant
    and source, fresh enough, and labels the actor holds."""
    if hit.tenant_id != request.tenant_id or hit.source != request.source:
        return False
    if request.not_before is not None and hit.updated_at < request.not_before:
        return False
    if hit.labels:
        return bool(hit.labels & request.labels)
    return not request.labels_required


class RetrievalStage:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        retrievers: RetrieverRegistry,
        policy: PolicyEngine,
        policy_sets: Mapping[str, PolicyEngine] | None = None,
        budgeting: Budgeting,
    ) -> None:
        self.config = config
        self.retrievers = retrievers
        self.policy = policy
        self.policy_sets = dict(policy_sets or {})
        self.budgeting = budgeting

    def act(self, st: Step, proposal: RetrievalQueryProposal) -> Move:
        sources = list(dict.fromkeys(proposal.sources))
        refusal = self._refusal(st, sources, proposal.top_k)
        if refusal is not None:
            error = {"loc": "sources", "source": refusal.source, "msg": refusal.msg}
            return outcomes.refuse(st, refusal.code, [error], st.proposal)
        for source in sources:
            decision = self._decide(st, source, proposal)
            if decision.effect != "allow":
                return self._denied(st, source, decision)
        held = self.budgeting.reserve_retrieval(st)
        if held is not None:
            return held
        st.trace.add("validation", ok=True, type="retrieval_query", sources=sources)
        return self._search(st, sources, proposal)

    def _refusal(self, st: Step, sources: list[str], top_k: int) -> Refusal | None:
        for source in sources:
            entry = self.config.sources.get(source)
            if entry is None or self.retrievers.get(entry.retriever) is None:
                return Refusal("unknown_source", source, f"no source {source!r}")
            if source not in st.route.sources:
                return Refusal(
                    "source_not_eligible", source, f"route {st.run['route']!r} may not search it"
                )
            if not entry.allows_tenant(st.tenant_id):
                return Refusal(
                    "source_access_denied", source, f"tenant {st.tenant_id!r} may not search it"
                )
            if top_k > entry.max_top_k:
                return Refusal(
                    "top_k_over_cap", source, f"top_k {top_k} is over its cap {entry.max_top_k}"
                )
        return None

    def _decide(self, st: Step, source: str, proposal: RetrievalQueryProposal) -> Decision:
        engine = self.policy if st.policy_set is None else self.policy_sets[st.policy_set]
        decision = engine.decide_source(
            PolicyContext(
                tool=f"source:{source}",
                args={"query": proposal.query, "top_k": proposal.top_k},
                side_effect=None,
                tenant=st.tenant_id,
                route=st.run["route"],
                risk_class=st.run["risk_class"],
                autonomy_level=st.run["autonomy_level"],
                allowed_tools=tuple(st.run["allowed_tools"]),
                tool_registered=True,
                tool_enabled=True,
                source=source,
            )
        )
        st.trace.add(
            "policy_decision",
            source=source,
            effect=decision.effect,
            rule=decision.label,
            reasons=decision.reason_codes,
            policy_version=decision.policy_version,
        )
        return decision

    @staticmethod
    def _denied(st: Step, source: str, decision: Decision) -> Move:
        """Denied - and any effect but allow: a search waits for no approval (none is
        built for it), so a rule asking for one refuses it (fail closed)."""
        st.trace.add("validation", ok=False, code="policy_denied", source=source)
        return Move(
            RunStatus.REFUSED,
            StepKind.REFUSED,
            StepOutcome.POLICY_DENIED.of(decision.label),
            observation={"denied": decision.label, "source": source},
            stop_reason=stop_reasons.make("policy_denied", decision.label),
        )

    def _search(self, st: Step, sources: list[str], proposal: RetrievalQueryProposal) -> Move:
        now = utcnow()
        hits: list[Hit] = []
        dropped = 0
        for source in sources:
            entry = self.config.sources[source]
            retriever = self.retrievers.get(entry.retriever)
            assert retriever is not None  # checked in _refusal
            request = search_request(
                self.config, st, source, entry, proposal.query, proposal.top_k, now
            )
            try:
                found = retriever.search(request)[: proposal.top_k]
                shown = [h for h in found if visible(h, request)]
            except Exception as exc:  # a retriever is outside code: its failure is the step's
                st.trace.add("retriever_error", source=source, error=repr(exc)[:500])
                return outcomes.error_move(st, "tool", "retriever_error", repr(exc))
            dropped += len(found) - len(shown)
            hits += shown
        hits.sort(key=lambda h: -h.score)
        hits = hits[: proposal.top_k]
        refs = [self._reference(st, h, now) for h in hits]
        st.evidence = refs
        st.budget.tool_executions = max(st.budget.tool_executions, 1)
        st.trace.add(
            "retrieval",
            sources=sources,
            top_k=proposal.top_k,
            evidence=[_traced(r) for r in refs],
            filtered=dropped,
        )
        observation = {
            "evidence": [
                {
                    "id": ref["evidence_id"],
                    "doc_id": h.doc_id,
                    "version": h.version,
                    "source": h.source,
                    "title": h.title,
                    "score": ref["score"],
                    "content": h.content[:MAX_SHOWN_CHARS],
                }
                for ref, h in zip(refs, hits, strict=True)
            ]
        }
        return Move(
            RunStatus.RUNNING,
            StepKind.RETRIEVAL,
            StepOutcome.RETRIEVED.of(str(len(refs))),
            observation=observation,
        )

    @staticmethod
    def _reference(st: Step, hit: Hit, now: datetime) -> dict[str, Any]:
        return {
            "run_id": st.run_id,
            "evidence_id": evidence_id(st.run_id, st.step_no, hit.source, hit.doc_id),
            "tenant_id": st.tenant_id,
            "step_no": st.step_no,
            "doc_id": hit.doc_id,
            "version": hit.version,
            "source": hit.source,
            "score": float(hit.score),
            "retrieved_at": now,
        }


def _traced(ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ref["evidence_id"],
        "doc_id": ref["doc_id"],
        "version": ref["version"],
        "source": ref["source"],
        "score": ref["score"],
        "retrieved_at": ref["retrieved_at"].isoformat(),
    }
