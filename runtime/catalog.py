"""Config lookups: what the loaded config and the tool registry say about a route, a model
or a tool. One per config (a newly applied config builds a new one)."""

from __future__ import annotations

from runtime import proposers, release_sets
from runtime.config import RetryPolicy, RuntimeConfig
from runtime.contract import VersionSet
from runtime.proposers.base import Proposer, ToolDescription
from runtime.retrieval.registry import RetrieverRegistry
from runtime.tools.registry import ToolRegistry, ToolSpec


class Catalog:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        registry: ToolRegistry,
        retrievers: RetrieverRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        #: the retrievers sources name: their versions go into the version set
        self.retrievers = retrievers
        self._proposers: dict[str, Proposer] = {}
        self._tool_descriptions: dict[tuple[str, frozenset[str]], list[ToolDescription]] = {}

    def proposer_for(self, model_name: str) -> Proposer:
        proposer = self._proposers.get(model_name)
        if proposer is None:
            # model clients (the openai SDK) are imported on first use, not with the service
            proposer = proposers.build(self.config.models[model_name])
            self._proposers[model_name] = proposer
        return proposer

    def tool_timeout(self, spec: ToolSpec, route: str | None = None) -> float:
        """The manifest's timeout, else the tool's own; never beyond the route's step."""
        entry = self.config.tools.get(spec.name)
        timeout = entry.timeout_s if entry and entry.timeout_s else spec.timeout_s
        if route is not None and route in self.config.routes:
            timeout = min(timeout, self.config.routes[route].step_timeout_s)
        return timeout

    def retry_policy(self, route: str, tool: str | None = None) -> RetryPolicy | None:
        """The tool's own retry policy, else the route's; None: failures are not retried."""
        name = None
        entry = self.config.tools.get(tool) if tool else None
        if entry is not None and entry.retry_policy:
            name = entry.retry_policy
        elif route in self.config.routes:
            name = self.config.routes[route].retry_policy
        return self.config.retry_policies[name] if name else None

    def tool_cost_micro(self, name: str) -> int:
        entry = self.config.tools.get(name)
        return round(entry.cost_usd * 1_000_000) if entry else 0

    def tool_enabled(self, name: str, disabled_live: frozenset[str] = frozenset()) -> bool:
        entry = self.config.tools.get(name)
        return entry is not None and entry.enabled and name not in disabled_live

    def tool_descriptions(self, route: str, disabled_live: frozenset[str]) -> list[ToolDescription]:
        """What the proposer is shown: the route's enabled tools with their JSON schemas.
        Cached: building pydantic JSON schemas costs more than the rest of a scripted step."""
        key = (route, disabled_live)
        cached = self._tool_descriptions.get(key)
        if cached is None:
            cached = []
            for name in self.config.routes[route].allowed_tools:
                spec = self.registry.get(name)
                if spec is not None and self.tool_enabled(name, disabled_live):
                    cached.append(ToolDescription(name, spec.description, spec.json_schema()))
            self._tool_descriptions[key] = cached
        return list(cached)

    def _retriever_label(self, sources: list[str]) -> str | None:
        if not sources or self.retrievers is None:
            return None
        return self.retrievers.version_label(self.config, sources)

    def version_set(self, route_name: str, release: str | None = None) -> VersionSet:
        """What a run of the route records; under ``release``, its versions (its labels
        where it gives them, else what the route computes)."""
        route = release_sets.route_for(self.config, route_name, release)
        model = self.config.models[route.proposer]
        versions = {n: e.version for n, e in self.config.tools.items()}
        rel = self.config.releases[release] if release is not None else None
        harness = f"{self.config.harness_version}+config:{self.config.version}"
        return VersionSet(
            model=model.version,
            prompt=route.prompt_version,
            policy=release_sets.policy_for(self.config, release)[1].version,
            tool_schema=(rel and rel.tool_schema)
            or self.registry.schema_digest(route.allowed_tools, versions),
            retriever=route.retriever_version or self._retriever_label(route.sources),
            harness=(rel and rel.harness) or harness,
        )
