"""A step's latencies for Prometheus (``runtime.scheduling.histograms``), queued on the
checkpoint's settle pipeline: two HINCRBY per observation, never a round trip of their own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runtime.scheduling import histograms
from runtime.step.state import Step


def observe_in(pipe: Any, key: str, st: Step, duration_ms: int) -> None:
    """The whole step, its timed stages and how long the step waited to start: a run's
    first step from its admission (``first``), a later one from the checkpoint that queued
    it (``next``; the run row's ``updated_at`` as the step loaded it). A retry, or a kept
    call resumed after a lock wait, a backoff or a human, waited on purpose: not counted."""
    route = st.run["route"]
    histograms.observe_in(pipe, key, histograms.STEP, route, "step", duration_ms)
    for stage, ms in st.stage_ms.items():
        histograms.observe_in(pipe, key, histograms.STEP, route, stage, ms)
    if st.attempt != 0:
        return
    if st.step_no == 0:
        since, which = _utc(st.run.get("created_at")), "first"
    elif st.run.get("pending_proposal") is None:
        since, which = _utc(st.run.get("updated_at")), "next"
    else:
        return
    if since is None:
        return
    # clocks of two hosts: a skew never makes a negative wait
    wait_ms = max(0, int((st.started_at - since).total_seconds() * 1000))
    histograms.observe_in(pipe, key, histograms.DISPATCH_WAIT, route, which, wait_ms)


def _utc(value: Any) -> datetime | None:
    if isinstance(value, str):  # SQLite may hand a timestamp back as text
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # stored as UTC
