"""Recording a call's result on its circuit breaker (a model's or a tool's)."""

from __future__ import annotations

from runtime.config import Breaker
from runtime.scheduling.breakers import Breakers
from runtime.step.state import Step


def record(breakers: Breakers, st: Step, name: str, cfg: Breaker | None, *, ok: bool) -> None:
    if cfg is None:  # no breaker configured: no round trip
        return
    state = breakers.record(name, cfg, f"{st.run_id}:{st.step_no}", ok)
    if state == "open" and not ok:
        st.trace.add("breaker_opened", breaker=name)
