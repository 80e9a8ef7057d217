"""What a release gate answers: may a candidate release be promoted on a route.

A leaf: ``runtime.releases`` calls a gate before a promotion and stores its result with the
release; the evals package provides the real one (the blocking eval set replayed under the
candidate), injected by the composition root.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field


class GateResult(BaseModel):
    """A gate's verdict on (route, candidate release)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    summary: str = Field(max_length=2000)
    cases: int = Field(default=0, ge=0)
    failures: int = Field(default=0, ge=0)
    flaky: int = Field(default=0, ge=0)


#: (route, candidate release) -> verdict
Gate = Callable[[str, str], GateResult]


def no_evals_gate(route: str, release: str) -> GateResult:
    """The gate of a deployment without blocking evals: passes, and says there was nothing
    to run (so ``releases show`` never presents it as an eval pass)."""
    return GateResult(passed=True, summary=f"no blocking evals configured for {route}")
