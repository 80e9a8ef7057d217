"""Retrievers by name, like tools: a source's ``retriever`` names one, and the versions of
the retrievers a route's sources use go into its runs' version set."""

from __future__ import annotations

from collections.abc import Iterable

from runtime.config import RuntimeConfig
from runtime.errors import ConfigError
from runtime.retrieval.base import Retriever


class RetrieverRegistry:
    def __init__(self, retrievers: Iterable[Retriever] = ()) -> None:
        self._by_name: dict[str, Retriever] = {}
        for retriever in retrievers:
            self.register(retriever)

    def register(self, retriever: Retriever) -> None:
        if retriever.name in self._by_name:
            raise ConfigError("retrievers", [f"retriever {retriever.name!r} is registered twice"])
        self._by_name[retriever.name] = retriever

    def get(self, name: str) -> Retriever | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def version_label(self, config: RuntimeConfig, sources: Iterable[str]) -> str | None:
        """``name@version`` of each retriever the sources use, sorted (None: no source)."""
        labels = set()
        for source in sources:
            entry = config.sources.get(source)
            retriever = self.get(entry.retriever) if entry is not None else None
            if retriever is not None:
                labels.add(f"{retriever.name}@{retriever.version}")
        return ",".join(sorted(labels)) or None

    def problems(self, config: RuntimeConfig) -> list[str]:
        """Every source's retriever must be registered: a source nothing can search would
        refuse every query naming it, found only when a run tries."""
        return [
            f"sources.{name}.retriever: no retriever {entry.retriever!r} is registered "
            f"(registered: {', '.join(self.names()) or 'none'})"
            for name, entry in config.sources.items()
            if entry.retriever not in self._by_name
        ]
