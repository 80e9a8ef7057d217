"""The proposal kinds beyond tool calls, replies and stops, as a model with function calling
is offered them: one function per kind a route enables (``proposal_kinds``), named so no
tool's function name can take it (``agentrt_plan``: a tool's name has its dots as ``__``).

A call of one is mapped to the proposal dict of its kind, arguments as the model wrote
them; it stays untrusted input: the runtime validates it (``runtime.proposals``) and the
kind's stage decides it, exactly as it would a scripted one. The parameters are the
contract's own schema of the kind, so what the model is told and what the runtime checks
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from runtime.contract import (
    DelegateProposal,
    MemoryWriteProposal,
    PlanProposal,
    RetrievalQueryProposal,
)

#: kind -> (function name, its contract model, what the model is told it does)
KINDS: dict[str, tuple[str, type[BaseModel], str]] = {
    "plan": (
        "agentrt_plan",
        PlanProposal,
        "Propose a plan: the steps you intend to take, in order, before taking them. "
        "The runtime checks it and compares your later steps with it.",
    ),
    "retrieval_query": (
        "agentrt_retrieve",
        RetrievalQueryProposal,
        "Search the named sources; the results come back as evidence you may cite.",
    ),
    "memory_write": (
        "agentrt_remember",
        MemoryWriteProposal,
        "Remember content for later runs, under a namespace and key, with a retention class "
        "and the evidence it rests on.",
    ),
    "delegate": (
        "agentrt_delegate",
        DelegateProposal,
        "Start a child run on another route with a goal and input; its result comes back "
        "as this call's result.",
    ),
}
#: function name -> kind
BY_FUNCTION = {fn: kind for kind, (fn, _, _) in KINDS.items()}


def parameters(model: type[BaseModel]) -> dict[str, Any]:
    """The kind's JSON schema without its ``type`` (the function name says it)."""
    schema = model.model_json_schema(by_alias=False)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "type"}
    if "required" in schema:
        schema["required"] = [r for r in schema["required"] if r != "type"]
    schema.pop("title", None)
    return schema


def payloads(kinds: tuple[str, ...], taken: set[str]) -> list[dict[str, Any]]:
    """The functions of ``kinds``, as a chat-completions request sends them; a function
    name a tool already takes is left out (the tool keeps its name)."""
    out = []
    for kind in kinds:
        fn, model, description = KINDS[kind]
        if fn in taken:
            continue
        out.append(
            {
                "type": "function",
                "function": {
                    "name": fn,
                    "description": description,
                    "parameters": parameters(model),
                },
            }
        )
    return out


def raw_of(kind: str, arguments: Any) -> dict[str, Any]:
    """A call of a kind's function as a raw proposal. Arguments that are not an object are
    handed over as they are: the runtime refuses them (``malformed``)."""
    if isinstance(arguments, dict):
        return {**arguments, "type": kind}
    return {"type": kind, "arguments": arguments}


def call_arguments(proposal: dict[str, Any]) -> dict[str, Any]:
    """A stored proposal of a kind as the arguments of its function (for the history):
    the names the model was given, not the stored (camelCase) ones."""
    model = KINDS[str(proposal.get("type"))][1]
    try:
        return model.model_validate(proposal).model_dump(exclude={"type"}, exclude_none=True)
    except ValidationError:  # a refused one: shown as it was stored
        return {k: v for k, v in proposal.items() if k != "type"}
