"""The scripted proposer: replays proposals given in the run's input, one per step.

``input.script`` is a list of proposals, e.g.::

    [{"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"},
      "usage": {"input_tokens": 120, "output_tokens": 30}},
     {"type": "reply", "text": "Done."}]

Items are handed to the runtime as they are - malformed ones included - because the runtime
validates every proposal as untrusted input. When the script runs out, it proposes stop.
Used for tests, demos and replaying recorded incidents.

Its prompt is what an OpenAI-compatible model would be sent for the same working set
without the history (the system prompt, the goal with the input less the script, the tool
schemas), bounded the same way, so a step reserves the same whichever proposer a route
uses. An item's ``usage`` is what the step is charged (the model's report, replayed),
bounded like any report by the prompt bound and the granted output.

An item's ``citations`` (a reply) or ``evidence`` (a memory write) may be the text
``"$evidence"``: it becomes the evidence ids the step's working set shows (what a model
would cite), so a script can cite what its own retrievals returned without knowing the ids.
"""

from __future__ import annotations

from typing import Any

from runtime.contract import ProposalResult, Usage
from runtime.proposers.base import (
    Prompt,
    WorkingSet,
    bounded_prompt,
    opening_messages,
    tool_payloads,
)

MAX_SCRIPT_ITEMS = 1000
#: stands for the evidence ids the working set shows (see the module docstring)
EVIDENCE_PLACEHOLDER = "$evidence"
_CITING = frozenset({"citations", "evidence"})


class ScriptedProposer:
    needs_history = False

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version

    def input_problems(self, run_input: dict[str, Any]) -> list[str]:
        script = run_input.get("script")
        if not isinstance(script, list):
            return ["input.script: the scripted proposer needs a list of proposals"]
        if len(script) > MAX_SCRIPT_ITEMS:
            return [f"input.script: at most {MAX_SCRIPT_ITEMS} items"]
        return []

    def prepare(self, ws: WorkingSet) -> Prompt:
        return bounded_prompt(opening_messages(ws), tool_payloads(ws.tools))

    def propose(self, ws: WorkingSet) -> ProposalResult:
        return self.call(ws, self.prepare(ws), ws.max_output_tokens)

    def call(self, ws: WorkingSet, prompt: Prompt, max_output_tokens: int) -> ProposalResult:
        script = ws.input.get("script") or []
        if ws.turn >= len(script):
            return ProposalResult(
                raw={"type": "stop", "reason": "script_exhausted"}, model_version=self.model_version
            )
        item = script[ws.turn]
        usage = Usage()
        raw: Any = item
        if isinstance(item, dict):
            raw = {
                k: list(ws.evidence_ids) if k in _CITING and v == EVIDENCE_PLACEHOLDER else v
                for k, v in item.items()
                if k != "usage"
            }
            usage = _usage(item.get("usage"))
        return ProposalResult(raw=raw, usage=usage, model_version=self.model_version)


def _usage(report: Any) -> Usage:
    """A script item's ``usage`` (snake or camel case); no report means none was used, a
    report that is not a pair of counts is unknown (charged at the worst case)."""
    if report is None:
        return Usage()
    if not isinstance(report, dict):
        return Usage.from_report(report, report)
    return Usage.from_report(
        report.get("input_tokens", report.get("inputTokens", 0)),
        report.get("output_tokens", report.get("outputTokens", 0)),
    )
