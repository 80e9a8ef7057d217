"""Latency histograms shared by every worker process and host, for Prometheus.

A step adds its observations to one Redis hash (``Keys.scheduler().histograms``) on the
pipeline of a round trip it makes anyway (the checkpoint's settle): two HINCRBY per
observation, no extra round trip. Each observation counts once, in the first bucket whose
bound holds it; the collector (``runtime.metrics``) sums the buckets into Prometheus'
cumulative ones at scrape time. Redis losing the hash is a counter reset to Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

#: bucket upper bounds (ms); an observation above the last counts in +Inf
BUCKETS_MS: tuple[int, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
INF = len(BUCKETS_MS)
#: the metrics observed: a step's stages, and how long a run's first step waited to start
STEP = "step"
DISPATCH_WAIT = "dispatch_wait"


def bucket_of(ms: int) -> int:
    for index, bound in enumerate(BUCKETS_MS):
        if ms <= bound:
            return index
    return INF


def observe_in(pipe: Any, key: str, metric: str, route: str, stage: str, ms: int) -> None:
    """Queue one observation on ``pipe``."""
    ms = max(0, int(ms))
    prefix = f"{metric}|{route}|{stage}|"
    pipe.hincrby(key, f"{prefix}{bucket_of(ms)}", 1)
    pipe.hincrby(key, f"{prefix}sum", ms)


@dataclass
class Histogram:
    metric: str
    route: str
    stage: str
    #: observations per bucket (not cumulative), the last one +Inf
    counts: list[int] = field(default_factory=lambda: [0] * (INF + 1))
    sum_ms: int = 0

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (le in seconds, observations at most that)."""
        out, total = [], 0
        for index, count in enumerate(self.counts):
            total += count
            le = "+Inf" if index == INF else repr(BUCKETS_MS[index] / 1000)
            out.append((le, total))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def read(client: redis.Redis, key: str) -> list[Histogram]:
    return parse(client.hgetall(key).items())


def parse(fields: Iterable[tuple[Any, Any]]) -> list[Histogram]:
    out: dict[tuple[str, str, str], Histogram] = {}
    for raw_field, raw_value in fields:
        text = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
        parts = text.split("|")
        if len(parts) != 4:
            continue
        metric, route, stage, slot = parts
        hist = out.setdefault((metric, route, stage), Histogram(metric, route, stage))
        if slot == "sum":
            hist.sum_ms = int(raw_value)
        elif slot.isdigit() and int(slot) <= INF:
            hist.counts[int(slot)] = int(raw_value)
    return [out[k] for k in sorted(out)]
