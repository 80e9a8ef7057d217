"""The proposer interface: a working set in, one (untrusted) proposal plus usage out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.contract import ProposalResult


@dataclass(frozen=True)
class ToolDescription:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class WorkingSet:
    """What the proposer may see for one step: selected, bounded, never the whole store."""

    run_id: str
    tenant_id: str
    route: str
    goal: str
    input: dict[str, Any]
    #: proposer calls made before this one
    turn: int
    system_prompt: str
    tools: list[ToolDescription]
    max_output_tokens: int
    steps_left: int
    #: earlier steps (proposal + observation), loaded only for proposers that need them
    history_loader: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])


class Proposer(Protocol):
    #: True if ``propose`` reads ``history_loader`` (costs one SQL read per step)
    needs_history: bool

    def input_problems(self, run_input: dict[str, Any]) -> list[str]:
        """Problems with a run's input for this proposer (checked at admission)."""
        ...

    def propose(self, ws: WorkingSet) -> ProposalResult: ...
