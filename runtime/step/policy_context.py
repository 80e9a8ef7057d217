"""The policy engine a step's run is decided by, and the context it decides a tool on:
one place, so a planned tool (``runtime.step.plan``) is judged exactly as its call will be
(``runtime.step.proposal``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.policy import Decision, PolicyContext, PolicyEngine
from runtime.step.collaborators import CatalogReads
from runtime.step.state import Step
from runtime.tools.registry import ToolSpec


class StepPolicy:
    def __init__(
        self,
        *,
        policy: PolicyEngine,
        policy_sets: Mapping[str, PolicyEngine] | None = None,
        catalog: CatalogReads,
    ) -> None:
        self.policy = policy
        #: the named sets releases may use (``policies:``)
        self.policy_sets = dict(policy_sets or {})
        self.catalog = catalog

    def engine(self, st: Step) -> PolicyEngine:
        """The top-level policy, or the set of the run's release."""
        return self.policy if st.policy_set is None else self.policy_sets[st.policy_set]

    def decide(
        self,
        st: Step,
        *,
        tool: str,
        args: Any,
        spec: ToolSpec | None,
        registered: bool,
    ) -> Decision:
        return self.engine(st).decide(
            PolicyContext(
                tool=tool,
                args=args,
                side_effect=spec.side_effect if spec else None,
                tenant=st.tenant_id,
                route=st.run["route"],
                risk_class=st.run["risk_class"],
                autonomy_level=st.run["autonomy_level"],
                allowed_tools=tuple(st.run["allowed_tools"]),
                tool_registered=registered,
                tool_enabled=self.catalog.tool_enabled(tool, st.disabled_tools),
                plan_deviation=st.plan_deviation,
            )
        )
