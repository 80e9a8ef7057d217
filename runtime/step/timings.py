"""A step's latencies for Prometheus (``runtime.scheduling.histograms``), queued on the
checkpoint's settle pipeline: two HINCRBY per observation, never a round trip of their own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runtime.scheduling import histograms
from runtime.step.state import Step


def observe_in(pipe: Any, key: str, st: Step, duration_ms: int) -> None:
    """The whole step, its timed stages and, for a run's first step (first attempt), how
    long it waited from admission to its start on a worker."""
    route = st.run["route"]
    histograms.observe_in(pipe, key, histograms.STEP, route, "step", duration_ms)
    for stage, ms in st.stage_ms.items():
        histograms.observe_in(pipe, key, histograms.STEP, route, stage, ms)
    if st.step_no != 0 or st.attempt != 0:
        return
    created = st.run.get("created_at")
    if isinstance(created, str):  # SQLite may hand a timestamp back as text
        created = datetime.fromisoformat(created)
    if not isinstance(created, datetime):
        return
    if created.tzinfo is None:  # stored as UTC
        created = created.replace(tzinfo=UTC)
    wait_ms = int((st.started_at - created).total_seconds() * 1000)
    histograms.observe_in(pipe, key, histograms.DISPATCH_WAIT, route, "first_step", wait_ms)
