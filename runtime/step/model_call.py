"""The model call: choose the model (breakers, fallbacks), build and bound the prompt, take
the model's global rate limits, ask the proposer, and give back what the call did not use."""

from __future__ import annotations

from typing import Any

from runtime import proposals, telemetry
from runtime.config import ModelConfig, RuntimeConfig
from runtime.contract import ProposalResult, RunStatus
from runtime.errors import ProposerError
from runtime.proposers.base import Prompt, WorkingSet
from runtime.scheduling import limits
from runtime.scheduling.breakers import Breakers
from runtime.scheduling.limits import Limiter, Take
from runtime.step import breakers as breaker
from runtime.step import outcomes
from runtime.step.collaborators import CatalogReads
from runtime.step.outcomes import Retries
from runtime.step.state import Move, Step
from runtime.step.working_set import WorkingSetAssembly
from runtime.step_record import StepKind, StepOutcome, WorkflowStep, workflow_step
from runtime.store.runs import RunStore
from runtime.tools.registry import ToolRegistry

#: how long a step pinned to an unknown model waits before it looks at the pin again
PIN_UNKNOWN_WAIT_S = 5.0


class ModelCall:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        catalog: CatalogReads,
        breakers: Breakers,
        limiter: Limiter,
        store: RunStore,
        registry: ToolRegistry,
        retries: Retries,
        working_set: WorkingSetAssembly | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.breakers = breakers
        self.limiter = limiter
        self.store = store
        self.registry = registry
        self.retries = retries
        #: selects evidence and memories for routes that retrieve (None: nothing selected)
        self.working_set = working_set

    def model(self, st: Step) -> ModelConfig:
        return self.config.models[st.model_name]

    def prepare(self, st: Step) -> tuple[WorkingSet, Prompt] | Move:
        """Choose the model, build and bound the prompt, take the model's rate limits.
        The prompt comes first: its tokens are part of the worst case both limit."""
        blocked = self._choose_model(st)
        if blocked is not None:
            return blocked
        ws = self._working_set(st)
        prompt = self.catalog.proposer_for(st.model_name).prepare(ws)
        wait_s = self._take_model_rate(st, prompt.tokens)
        if wait_s > 0:
            st.trace.add("rate_limited", limiter=f"model:{st.model_name}", retry_after_s=wait_s)
            return Move(
                RunStatus.RUNNING,
                StepKind.DEFERRED,
                StepOutcome.RATE_LIMITED.of("model"),
                observation={"rate_limited": st.model_name},
                run_updates={"workflow_step": workflow_step(WorkflowStep.WAITING_RATE_LIMIT)},
                countdown_s=wait_s,
            )
        return ws, prompt

    def call(self, st: Step, ws: WorkingSet, prompt: Prompt) -> Any:
        """The model's raw proposal; a ``Move`` if the call failed (tried again, fed back,
        or the end of the run). Either way its breaker hears of it and the unused tokens
        go back to the rate limit."""
        cfg = self.model(st).breaker
        try:
            with telemetry.span("agentrt.model_call", model=st.model_name) as span:
                result = self._propose(st, ws, prompt)
                span.set("agentrt.outcome", "ok")
        except ProposerError as exc:
            st.trace.add("proposer_error", code=exc.code, error=str(exc), model=st.model_name)
            breaker.record(self.breakers, st, f"model:{st.model_name}", cfg, ok=False)
            policy = self.catalog.retry_policy(st.run["route"])
            if policy is not None and exc.code not in policy.non_retryable:
                return self.retries.retry_or_dead_letter(
                    st, "proposer", exc.code, str(exc), policy, pending=None
                )
            return outcomes.error_move(st, "proposer", exc.code, str(exc))
        finally:
            self.give_back_tokens(st)
        breaker.record(self.breakers, st, f"model:{st.model_name}", cfg, ok=True)
        return result.raw

    def _choose_model(self, st: Step) -> Move | None:
        """Ask the route's model unless its breaker is open; then its fallbacks in order.
        With every breaker open the step waits (holding no slot) for the first to close."""
        caller = f"{st.run_id}:{st.step_no}"
        waits: list[float] = []
        candidates = [st.route.proposer, *st.route.fallback_proposers]
        pinned = st.pinned_model
        if pinned is not None and pinned not in self.config.models:
            # pinned to a model this config lacks (a later config dropped it): asking the
            # route's own model would undo the operator's pin, so the step waits
            st.trace.add("model_pin_unknown", model=pinned)
            return Move(
                RunStatus.RUNNING,
                StepKind.DEFERRED,
                StepOutcome.BREAKER_OPEN.of("model", pinned),
                observation={"pinned_model_unknown": pinned},
                run_updates={"workflow_step": workflow_step(WorkflowStep.WAITING_BREAKER)},
                countdown_s=PIN_UNKNOWN_WAIT_S,
            )
        if pinned is not None:
            # an operator's pin replaces the route's choice, fallbacks included
            candidates = [pinned]
            st.trace.add("model_pinned", model=pinned, instead_of=st.route.proposer)
        for name in candidates:
            verdict = self.breakers.allow(f"model:{name}", self.config.models[name].breaker, caller)
            if verdict.allowed:
                if name != st.route.proposer and pinned is None:
                    st.trace.add("fallback", model=name, instead_of=st.route.proposer)
                st.model_name = name
                return None
            st.trace.add(
                "breaker_open",
                breaker=f"model:{name}",
                retry_after_s=round(verdict.retry_after_s, 3),
            )
            waits.append(verdict.retry_after_s)
        wait_s = max(min(waits), 0.05)
        return Move(
            RunStatus.RUNNING,
            StepKind.DEFERRED,
            StepOutcome.BREAKER_OPEN.of("model", st.route.proposer),
            observation={"breaker_open": st.route.proposer},
            run_updates={"workflow_step": workflow_step(WorkflowStep.WAITING_BREAKER)},
            countdown_s=wait_s,
        )

    def _take_model_rate(self, st: Step, prompt_tokens: int) -> float:
        """Take one request and the call's worst-case tokens (its prompt's bound plus the
        output cap) from the model's global limiters."""
        model = self.model(st)
        takes = []
        if model.requests_rate:
            takes.append(Take(limits.model_requests(st.model_name), model.requests_rate))
        tokens = 0
        if model.tokens_rate:
            cap = self.config.budget_policies[st.route.budget_policy].tokens_per_step
            # the limiter takes at most its burst (a larger take could never pass): record
            # what it really took, or giving back "taken - used" would give back too much
            tokens = min(prompt_tokens + cap, model.tokens_rate.burst)
            takes.append(Take(limits.model_tokens(st.model_name), model.tokens_rate, tokens))
        wait_s = self.limiter.take(takes)
        if wait_s <= 0:
            st.rate_tokens = tokens
        return wait_s

    def give_back_tokens(self, st: Step) -> None:
        """Give the model's token limiter what the call did not use (all of it when the
        step stopped before calling)."""
        if not st.rate_tokens:
            return
        model = self.model(st)
        taken, st.rate_tokens = st.rate_tokens, 0
        if model.tokens_rate:
            self.limiter.give_back(
                limits.model_tokens(st.model_name),
                model.tokens_rate,
                taken - (st.usage.total_tokens if st.used_proposer else 0),
            )

    def _working_set(self, st: Step) -> WorkingSet:
        run, route, store = st.run, st.route, self.store
        tools = self.catalog.tool_descriptions(run["route"], st.disabled_tools)
        policy = self.config.budget_policies[route.budget_policy]
        selection = (
            self.working_set.select(st, [t.name for t in tools])
            if self.working_set is not None and route.sources
            else None
        )
        ws = WorkingSet(
            run_id=st.run_id,
            tenant_id=st.tenant_id,
            route=run["route"],
            goal=run["goal"],
            input=run["input"] or {},
            turn=run["turns"],
            system_prompt=route.system_prompt,
            tools=tools,
            max_output_tokens=policy.tokens_per_step,
            steps_left=route.max_steps - run["turns"],
            history_loader=lambda: store.steps(st.run_id),
            proposal_kinds=tuple(route.proposal_kinds),
        )
        if selection is not None:
            ws.evidence_ids = selection.evidence_ids
            ws.memory_ids = selection.memory_ids
            ws.constraints = selection.constraints
        return ws

    def _propose(self, st: Step, ws: WorkingSet, prompt: Prompt) -> ProposalResult:
        proposer = self.catalog.proposer_for(st.model_name)
        st.used_proposer = True
        prompt_tokens, granted = st.budget.prompt_tokens, st.budget.granted_output
        ws.max_output_tokens = granted
        result = proposer.call(ws, prompt, granted)
        # a reported usage is untrusted: bounded by what the step reserved (the prompt's
        # bound, the granted output), so settling never overspends in tokens or cost and
        # the checkpoint can never overflow a column
        st.usage = result.usage.within(prompt_tokens, granted)
        st.model_version = result.model_version
        st.stage_ms["model_call"] = int(result.latency_ms or 0)
        st.trace.add(
            "proposal",
            proposal=proposals.shown(result.raw, self.registry),
            usage=st.usage.model_dump(include={"input_tokens", "output_tokens"}),
            model_version=result.model_version,
            latency_ms=result.latency_ms,
        )
        if st.usage.reported is not None:
            st.trace.add(
                "usage_unknown" if st.usage.unknown else "usage_clamped",
                reported=st.usage.reported,
                charged=st.usage.total_tokens,
                reserved={"input_tokens": prompt_tokens, "output_tokens": granted},
            )
        if result.truncated:
            st.trace.add("output_truncated", max_output_tokens=granted)
        return result
