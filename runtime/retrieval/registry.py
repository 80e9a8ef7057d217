"""Retrievers by name, like tools: a source's ``retriever`` names one, and the versions of
the retrievers a route's sources use go into its runs' version set.

Besides the built-in ``documents``, each module of the config's ``retriever_modules``
defines ``retrievers(ctx: RetrieverContext) -> Iterable[Retriever]``, called once per
process with the connections a retriever may use."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from runtime.config import RuntimeConfig
from runtime.errors import ConfigError
from runtime.keys import Keys
from runtime.retrieval.base import Retriever


@dataclass(frozen=True)
class RetrieverContext:
    """What a retriever module's ``retrievers`` gets to build its retrievers with."""

    #: the runtime's SQL database
    engine: Engine
    #: the tools' Redis (``ToolContext.redis``)
    redis: Any
    keys: Keys


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


def from_modules(
    modules: Iterable[str], ctx: RetrieverContext, builtin: Iterable[Retriever]
) -> RetrieverRegistry:
    """The built-in retrievers plus those each module's ``retrievers(ctx)`` returns."""
    registry = RetrieverRegistry(builtin)
    problems: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"retriever_modules: cannot import {name!r}: {exc}")
            continue
        make = getattr(module, "retrievers", None)
        if not callable(make):
            problems.append(f"retriever_modules: {name!r} defines no retrievers(ctx)")
            continue
        for retriever in make(ctx):
            registry.register(retriever)
    if problems:
        raise ConfigError("retriever_modules", problems)
    return registry
