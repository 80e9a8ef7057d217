"""An OpenAI-compatible chat-completions proposer with tool calling.

Works with OpenAI, vLLM, Ollama, LiteLLM and anything else that speaks
``POST /v1/chat/completions`` with ``tools``. The reply is turned into a raw proposal; the
runtime then validates it like any other untrusted input (arguments that are not JSON
become a proposal the runtime refuses, never a crash here). The proposal kinds a route
enables (plans, retrieval, memory writes, delegation) are offered as functions of their own
(``runtime.proposers.kinds``) and their calls become proposals of those kinds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import Any

import openai

from runtime.bounds import BoundsError, parse_json
from runtime.config import ModelConfig
from runtime.contract import ProposalResult, Usage
from runtime.errors import ProposerError
from runtime.proposals import MAX_ARGS_BYTES
from runtime.proposers import kinds
from runtime.proposers.base import (
    Prompt,
    WorkingSet,
    bounded_prompt,
    function_name,
    opening_messages,
    tool_payloads,
)
from runtime.step_record import StepKind

__all__ = ["OpenAIProposer", "function_name"]

#: a model version a reply may name (it is stored on every step)
_VERSION = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,200}")


class OpenAIProposer:
    needs_history = True

    def __init__(self, config: ModelConfig, client: openai.OpenAI | None = None) -> None:
        self.config = config
        api_key = os.environ.get(config.api_key_env or "", "") or "not-needed"
        self.client = client or openai.OpenAI(
            base_url=config.base_url, api_key=api_key, timeout=config.timeout_s, max_retries=1
        )

    def input_problems(self, run_input: dict[str, Any]) -> list[str]:
        return []

    def _messages(self, ws: WorkingSet) -> list[dict[str, Any]]:
        messages = opening_messages(ws)
        for step in ws.history_loader():
            if step.get("kind") in (StepKind.DEFERRED, StepKind.WAITING):
                # a lock wait, an approval: the step that resumed the call carries it
                continue
            proposal = step.get("proposal") or {}
            observation = _shown_observation(step, ws.evidence_ids)
            called = _as_call(proposal)
            if called is not None:
                name, args = called
                call_id = (
                    proposal.get("callId") or proposal.get("call_id") or f"call_{step['step_no']}"
                )
                # arguments that were not JSON go back as the model wrote them, not re-quoted
                arguments = args if isinstance(args, str) else json.dumps(args, default=str)
                messages.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": arguments},
                            }
                        ],
                    }
                )
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "content": json.dumps(observation, default=str),
                    }
                )
            elif observation is not None and step.get("kind") == StepKind.REFUSED:
                messages.append(
                    {
                        "role": "user",
                        "content": "The runtime refused your last proposal: "
                        + json.dumps(observation, default=str),
                    }
                )
        return messages

    def prepare(self, ws: WorkingSet) -> Prompt:
        """The request's messages (history included) and tools, its prompt bounded."""
        tools = tool_payloads(ws.tools)
        taken = {t["function"]["name"] for t in tools}
        return bounded_prompt(self._messages(ws), tools + kinds.payloads(ws.proposal_kinds, taken))

    def propose(self, ws: WorkingSet) -> ProposalResult:
        return self.call(ws, self.prepare(ws), ws.max_output_tokens)

    def call(self, ws: WorkingSet, prompt: Prompt, max_output_tokens: int) -> ProposalResult:
        by_fn = {function_name(t.name): t.name for t in ws.tools}
        # the kinds this request offered (a tool keeps a name it took)
        offered = {
            fn: kind for fn, kind in kinds.BY_FUNCTION.items()
            if kind in ws.proposal_kinds and fn not in by_fn
        }  # fmt: skip
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": prompt.messages,
            # what the step's reservation granted: never more output than the budget holds
            "max_tokens": max_output_tokens,
        }
        if prompt.tools:
            params["tools"] = prompt.tools
        if self.config.temperature is not None:
            params["temperature"] = self.config.temperature
        started = time.monotonic()
        try:
            response = self.client.chat.completions.create(**params)
        except openai.APIError as exc:
            raise ProposerError(f"model endpoint error: {exc}", code="model_error") from exc
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's error page)
            raise ProposerError(
                f"model endpoint sent a non-JSON reply: {exc}", code="model_bad_reply"
            ) from exc
        latency_ms = int((time.monotonic() - started) * 1000)
        try:
            return self._to_result(response, by_fn, offered, latency_ms)
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            # the reply is untrusted too: a malformed one is a proposer error, not a crash
            raise ProposerError(
                f"model returned a malformed reply: {exc!r}"[:500], code="model_bad_reply"
            ) from exc

    def _to_result(
        self, response: Any, by_fn: dict[str, str], offered: dict[str, str], latency_ms: int
    ) -> ProposalResult:
        if not getattr(response, "choices", None):
            raise ProposerError("model returned no choices", code="model_empty")
        message = response.choices[0].message
        reported = getattr(response, "usage", None)
        # no usage in the reply is not "free": the step charges its worst case
        usage = (
            Usage(unknown=True, reported={"usage": None})
            if reported is None
            else Usage.from_report(
                getattr(reported, "prompt_tokens", None),
                getattr(reported, "completion_tokens", None),
            )
        )
        raw: dict[str, Any]
        calls = list(message.tool_calls or [])
        if len(calls) > 1:
            # several calls in one reply: the runtime decides what to do with them (it refuses
            # them with a reason code), so every one is handed over, none dropped here
            raw = {"type": "tool_calls", "calls": [self._call(c, by_fn, offered) for c in calls]}
        elif calls:
            raw = self._call(calls[0], by_fn, offered)
        elif message.content:
            raw = {"type": "reply", "text": message.content}
        else:
            raw = {"type": "stop", "reason": "empty_reply"}
        return ProposalResult(
            raw=raw,
            usage=usage,
            model_version=self._version(getattr(response, "model", None)),
            latency_ms=latency_ms,
            truncated=getattr(response.choices[0], "finish_reason", None) == "length",
        )

    def _call(self, call: Any, by_fn: dict[str, str], offered: dict[str, str]) -> dict[str, Any]:
        """One function call as a raw proposal: a tool call, or a proposal of an offered
        kind. Arguments that are not bounded JSON stay the text the model wrote: the
        runtime refuses them with a reason code (and shows the model its own text), never
        a crash here."""
        fn = getattr(call, "function", None)
        name = getattr(fn, "name", "") or ""
        arguments: Any = getattr(fn, "arguments", "") or "{}"
        with contextlib.suppress(BoundsError):
            arguments = parse_json(arguments, label="args", max_bytes=MAX_ARGS_BYTES)
        if name in offered:
            return kinds.raw_of(offered[name], arguments)
        return {
            "type": "tool_call",
            "tool": by_fn.get(name, name),
            "args": arguments,
            "call_id": getattr(call, "id", None),
        }

    def _version(self, reported: Any) -> str:
        """The model version the reply names, if it is a sane one; else the configured one."""
        if isinstance(reported, str) and _VERSION.fullmatch(reported):
            return reported
        return self.config.version


def _shown_observation(step: dict[str, Any], selected_ids: list[str]) -> Any:
    """A step's observation as the model is shown it again: of a search's results, only
    the evidence the runtime selected for this step (its context budget)."""
    observation = step.get("observation")
    if step.get("kind") != StepKind.RETRIEVAL or not isinstance(observation, dict):
        return observation
    selected = set(selected_ids)
    shown = [e for e in observation.get("evidence") or [] if e.get("id") in selected]
    return {**observation, "evidence": shown}


def _as_call(proposal: dict[str, Any]) -> tuple[str, Any] | None:
    """An earlier proposal as the function call the model made: (name, arguments); None
    for a reply, a stop, or what was no call."""
    kind = proposal.get("type")
    if kind == "tool_call":
        return function_name(str(proposal.get("tool", ""))), proposal.get("args", {})
    if kind in kinds.KINDS:
        return kinds.KINDS[str(kind)][0], kinds.call_arguments(proposal)
    return None
