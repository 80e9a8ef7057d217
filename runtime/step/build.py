"""Building the step runner and its stages, each handed only what it uses.

The composition root calls ``build_runner`` with the runtime's components; the stages are
built here because nothing outside the step package needs them one by one.
"""

from __future__ import annotations

import redis

from runtime.budgets.ledger import BudgetLedger
from runtime.config import RuntimeConfig
from runtime.keys import Keys
from runtime.locks.leases import LeaseManager
from runtime.memory.evidence import NoEvidence
from runtime.memory.store import MemoryStore
from runtime.policy import PolicyEngine
from runtime.retrieval.registry import RetrieverRegistry
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter
from runtime.scheduling.scheduler import Scheduler
from runtime.state import KnownGeneration, StateMarkers
from runtime.step.approval import ApprovalGate
from runtime.step.budget import Budgeting
from runtime.step.checkpoint import Checkpointer
from runtime.step.citations import CitationCheck
from runtime.step.collaborators import (
    AfterCancel,
    AfterFailure,
    AfterTerminal,
    CatalogReads,
    ChildRuns,
    DeadLettering,
    LiveControls,
    ReleaseRouting,
    Scheduling,
)
from runtime.step.delegation import DelegateStage
from runtime.step.execution import ToolExecution
from runtime.step.guards import Guards
from runtime.step.memory import MemoryStage
from runtime.step.model_call import ModelCall
from runtime.step.outcomes import Retries
from runtime.step.pending import PendingCalls
from runtime.step.plan import PlanStage
from runtime.step.policy_context import StepPolicy
from runtime.step.proposal import ProposalCheck, ProposalStage
from runtime.step.retrieval import RetrievalStage
from runtime.step.runner import StepRunner
from runtime.step.tool_call import ToolCall
from runtime.step.working_set import WorkingSetAssembly
from runtime.store.approvals import ApprovalStore
from runtime.store.evidence import EvidenceStore
from runtime.store.runs import RunStore
from runtime.tools.registry import ToolRegistry


def build_runner(
    *,
    config: RuntimeConfig,
    config_digest: str,
    registry: ToolRegistry,
    store: RunStore,
    approvals: ApprovalStore,
    redis: redis.Redis,
    tool_redis: redis.Redis,
    keys: Keys,
    ledger: BudgetLedger,
    leases: LeaseManager,
    scheduler: Scheduler,
    limiter: Limiter,
    breakers: Breakers,
    policy: PolicyEngine,
    markers: StateMarkers,
    generation: KnownGeneration,
    catalog: CatalogReads,
    controls: LiveControls,
    dispatch: Scheduling,
    dead_letters: DeadLettering,
    after_failure: AfterFailure,
    after_cancel: AfterCancel,
    after_terminal: AfterTerminal,
    memories: MemoryStore,
    releases: ReleaseRouting | None = None,
    policy_sets: dict[str, PolicyEngine] | None = None,
    retrievers: RetrieverRegistry | None = None,
    evidence: EvidenceStore | None = None,
    children: ChildRuns | None = None,
) -> StepRunner:
    retries = Retries(dead_letters=dead_letters)
    pending = PendingCalls(registry=registry, store=store)
    budgeting = Budgeting(config=config, ledger=ledger, catalog=catalog)
    tool_call = ToolCall(
        config=config,
        catalog=catalog,
        breakers=breakers,
        limiter=limiter,
        leases=leases,
        budgeting=budgeting,
        execution=ToolExecution(
            store=store,
            approvals=approvals,
            keys=keys,
            tool_redis=tool_redis,
            control_redis=redis,
        ),
        pending=pending,
        retries=retries,
    )
    step_policy = StepPolicy(policy=policy, policy_sets=policy_sets, catalog=catalog)
    stages: dict[str, ProposalStage] = {}
    working_set: WorkingSetAssembly | None = None
    citations: CitationCheck | None = None
    if retrievers is not None and evidence is not None:
        stages["retrieval_query"] = RetrievalStage(
            config=config,
            retrievers=retrievers,
            policy=policy,
            policy_sets=policy_sets,
            budgeting=budgeting,
        )
        working_set = WorkingSetAssembly(config=config, evidence=evidence, retrievers=retrievers)
        citations = CitationCheck(evidence=evidence)
    stages["memory_write"] = MemoryStage(
        policy=policy,
        policy_sets=policy_sets,
        budgeting=budgeting,
        # without retrieval no evidence is known: a write naming any is refused
        evidence=evidence if evidence is not None else NoEvidence(),
        memories=memories,
    )
    if children is not None:
        stages["delegate"] = DelegateStage(
            config=config,
            ledger=ledger,
            budgeting=budgeting,
            policy=policy,
            policy_sets=policy_sets,
            children=children,
        )
    stages["plan"] = PlanStage(config=config, registry=registry, step_policy=step_policy)
    proposal = ProposalCheck(
        config=config,
        registry=registry,
        step_policy=step_policy,
        catalog=catalog,
        tool_call=tool_call,
        approvals=ApprovalGate(
            config=config, registry=registry, approvals=approvals, pending=pending
        ),
        stages=stages,
        citations=citations,
    )
    model_call = ModelCall(
        config=config,
        catalog=catalog,
        breakers=breakers,
        limiter=limiter,
        store=store,
        registry=registry,
        retries=retries,
        working_set=working_set,
    )
    checkpoint = Checkpointer(
        store=store,
        ledger=ledger,
        leases=leases,
        scheduler=scheduler,
        redis=redis,
        dispatch=dispatch,
        dead_letters=dead_letters,
        after_failure=after_failure,
        budgeting=budgeting,
        controls=controls,
        after_cancel=after_cancel,
        after_terminal=after_terminal,
    )
    return StepRunner(
        config=config,
        config_digest=config_digest,
        store=store,
        ledger=ledger,
        redis=redis,
        keys=keys,
        leases=leases,
        scheduler=scheduler,
        markers=markers,
        generation=generation,
        controls=controls,
        dispatch=dispatch,
        guards=Guards(controls=controls),
        model_call=model_call,
        budgeting=budgeting,
        pending=pending,
        proposal=proposal,
        checkpoint=checkpoint,
        releases=releases,
    )
