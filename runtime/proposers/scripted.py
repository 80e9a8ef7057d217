"""The scripted proposer: replays proposals given in the run's input, one per step.

``input.script`` is a list of proposals, e.g.::

    [{"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"},
      "usage": {"input_tokens": 120, "output_tokens": 30}},
     {"type": "reply", "text": "Done."}]

Items are handed to the runtime as they are - malformed ones included - because the runtime
validates every proposal as untrusted input. When the script runs out, it proposes stop.
Used for tests, demos and replaying recorded incidents.
"""

from __future__ import annotations

from typing import Any

from runtime.contract import ProposalResult, Usage
from runtime.proposers.base import WorkingSet

MAX_SCRIPT_ITEMS = 1000


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

    def propose(self, ws: WorkingSet) -> ProposalResult:
        script = ws.input.get("script") or []
        if ws.turn >= len(script):
            return ProposalResult(
                raw={"type": "stop", "reason": "script_exhausted"}, model_version=self.model_version
            )
        item = script[ws.turn]
        usage = Usage()
        raw: Any = item
        if isinstance(item, dict):
            raw = {k: v for k, v in item.items() if k != "usage"}
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
