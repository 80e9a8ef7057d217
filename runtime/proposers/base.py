"""The proposer interface: a working set in, one (untrusted) proposal plus usage out.

A step asks in two moves, so that the budget is reserved between them: ``prepare`` builds
what would be sent and bounds its prompt tokens (``runtime.budgets.tokens``), the step
reserves the prompt plus an output allowance, and ``call`` sends it with the granted output
cap as ``max_tokens``. ``propose`` is both at once, with ``ws.max_output_tokens``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.budgets.tokens import prompt_bound
from runtime.contract import ProposalResult

_FN_NAME = re.compile(r"[^a-zA-Z0-9_-]")


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
    #: the output cap of the call: the budget policy's ``tokens_per_step``, lowered by the
    #: step to what its reservation granted
    max_output_tokens: int
    steps_left: int
    #: earlier steps (proposal + observation), loaded only for proposers that need them
    history_loader: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])
    #: what the runtime selected for this step (routes with ``sources`` only): the
    #: evidence ids retrieved so far that fit the route's context budget, newest last
    evidence_ids: list[str] = field(default_factory=list)
    #: ids of the tenant's memories the ``memory`` source found for the goal
    memory_ids: list[str] = field(default_factory=list)
    #: the rules the step runs under (steps left, sources, citation rule)
    constraints: dict[str, Any] = field(default_factory=dict)
    #: proposal kinds beyond tool calls, replies and stops the route offers the model
    #: (its ``proposal_kinds``: ``plan``, ``retrieval_query``, ``memory_write``, ``delegate``)
    proposal_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """What a proposer will send for one step, built before the budget is reserved."""

    #: an upper bound on the prompt's tokens (never below what the model will count)
    tokens: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


def function_name(tool: str) -> str:
    """OpenAI function names allow [a-zA-Z0-9_-]; tool names use dots (``kb.search``)."""
    return _FN_NAME.sub("_", tool.replace(".", "__"))


def tool_payloads(tools: list[ToolDescription]) -> list[dict[str, Any]]:
    """The tools as a chat-completions request sends them."""
    return [
        {
            "type": "function",
            "function": {
                "name": function_name(t.name),
                "description": t.description or t.name,
                "parameters": t.parameters,
            },
        }
        for t in tools
    ]


def opening_messages(ws: WorkingSet) -> list[dict[str, Any]]:
    """The system prompt, then the goal with the run's input (a scripted run's ``script``
    is the scripted model's own, not part of what a model is shown)."""
    user = ws.goal
    context = {k: v for k, v in ws.input.items() if k != "script"}
    if context:
        user += "\n\nInput:\n" + json.dumps(context, default=str)
    return [
        {"role": "system", "content": ws.system_prompt},
        {"role": "user", "content": user},
    ]


def bounded_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Prompt:
    return Prompt(prompt_bound(messages, tools), messages, tools)


class Proposer(Protocol):
    #: True if ``propose`` reads ``history_loader`` (costs one SQL read per step)
    needs_history: bool

    def input_problems(self, run_input: dict[str, Any]) -> list[str]:
        """Problems with a run's input for this proposer (checked at admission)."""
        ...

    def prepare(self, ws: WorkingSet) -> Prompt:
        """What would be sent, with a bound on its prompt tokens; nothing is sent."""
        ...

    def call(self, ws: WorkingSet, prompt: Prompt, max_output_tokens: int) -> ProposalResult:
        """Send ``prompt`` (from ``prepare(ws)``) with this output cap."""
        ...

    def propose(self, ws: WorkingSet) -> ProposalResult: ...
