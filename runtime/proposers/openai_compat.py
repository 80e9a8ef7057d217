"""An OpenAI-compatible chat-completions proposer with tool calling.

Works with OpenAI, vLLM, Ollama, LiteLLM and anything else that speaks
``POST /v1/chat/completions`` with ``tools``. The reply is turned into a raw proposal; the
runtime then validates it like any other untrusted input (arguments that are not JSON
become a proposal the runtime refuses, never a crash here).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import openai

from runtime.config import ModelConfig
from runtime.contract import ProposalResult, Usage
from runtime.errors import ProposerError
from runtime.proposers.base import ToolDescription, WorkingSet

_FN_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def function_name(tool: str) -> str:
    """OpenAI function names allow [a-zA-Z0-9_-]; tool names use dots (``kb.search``)."""
    return _FN_NAME.sub("_", tool.replace(".", "__"))


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

    def _tools(self, tools: list[ToolDescription]) -> list[dict[str, Any]]:
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

    def _messages(self, ws: WorkingSet) -> list[dict[str, Any]]:
        user = ws.goal
        context = {k: v for k, v in ws.input.items() if k != "script"}
        if context:
            user += "\n\nInput:\n" + json.dumps(context, default=str)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": ws.system_prompt},
            {"role": "user", "content": user},
        ]
        for step in ws.history_loader():
            if step.get("kind") == "deferred":
                continue  # a lock wait: the step that resumed the call carries it
            proposal = step.get("proposal") or {}
            observation = step.get("observation")
            if proposal.get("type") == "tool_call":
                call_id = (
                    proposal.get("callId") or proposal.get("call_id") or f"call_{step['step_no']}"
                )
                args = proposal.get("args", {})
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
                                "function": {
                                    "name": function_name(str(proposal.get("tool", ""))),
                                    "arguments": arguments,
                                },
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
            elif observation is not None and step.get("kind") == "refused":
                messages.append(
                    {
                        "role": "user",
                        "content": "The runtime refused your last proposal: "
                        + json.dumps(observation, default=str),
                    }
                )
        return messages

    def propose(self, ws: WorkingSet) -> ProposalResult:
        by_fn = {function_name(t.name): t.name for t in ws.tools}
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": self._messages(ws),
            "max_tokens": ws.max_output_tokens,
        }
        if ws.tools:
            params["tools"] = self._tools(ws.tools)
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
            return self._to_result(response, by_fn, latency_ms)
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            # the reply is untrusted too: a malformed one is a proposer error, not a crash
            raise ProposerError(
                f"model returned a malformed reply: {exc!r}"[:500], code="model_bad_reply"
            ) from exc

    def _to_result(self, response: Any, by_fn: dict[str, str], latency_ms: int) -> ProposalResult:
        if not getattr(response, "choices", None):
            raise ProposerError("model returned no choices", code="model_empty")
        message = response.choices[0].message
        usage = Usage(
            input_tokens=max(0, int(getattr(response.usage, "prompt_tokens", 0) or 0)),
            output_tokens=max(0, int(getattr(response.usage, "completion_tokens", 0) or 0)),
        )
        version = response.model or self.config.version
        raw: dict[str, Any]
        if message.tool_calls:
            call = message.tool_calls[0]
            fn = getattr(call, "function", None)
            name = getattr(fn, "name", "") or ""
            arguments = getattr(fn, "arguments", "") or "{}"
            try:
                args: Any = json.loads(arguments)
            except json.JSONDecodeError:
                args = arguments  # not JSON: the runtime refuses it as invalid_args
            raw = {
                "type": "tool_call",
                "tool": by_fn.get(name, name),
                "args": args,
                "call_id": call.id,
            }
        elif message.content:
            raw = {"type": "reply", "text": message.content}
        else:
            raw = {"type": "stop", "reason": "empty_reply"}
        return ProposalResult(raw=raw, usage=usage, model_version=version, latency_ms=latency_ms)
