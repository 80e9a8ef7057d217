"""Proposers: the scripted one and an OpenAI-compatible one, behind ``base.Proposer``.

``build`` makes the proposer for a model entry of the deployment file. The model clients
(the ``openai`` SDK costs ~0.3 s to import) are imported only when a model of that kind is
first used, so commands and processes that never call a model never load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.config import ModelConfig
    from runtime.proposers.base import Proposer


def build(model: ModelConfig) -> Proposer:
    """The proposer for ``model`` (its client module imported on first use)."""
    if model.kind == "scripted":
        from runtime.proposers.scripted import ScriptedProposer

        return ScriptedProposer(model.version)
    from runtime.proposers.openai_compat import OpenAIProposer

    return OpenAIProposer(model)
