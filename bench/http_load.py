"""The load process of ``bench/http.py``: open-loop ``POST /v1/runs`` at a fixed rate.

Run as its own process (``python -m bench.http_load``) so the load generator's CPU is not
the API server's. Request *i* is due at ``t0 + i / rate`` whatever happened to the earlier
ones (open loop: a slow server does not slow the sender down); one sender per keep-alive
connection (httpx) takes due requests in order. Latency is taken from the due time (time a
request waited for a free connection counts: no coordinated omission) and, separately, from
the moment it was handed to httpx. The API key comes in the environment
(``BENCH_HTTP_KEY``), never on the command line. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import httpx

KEY_ENV = "BENCH_HTTP_KEY"


async def _one(
    client: httpx.AsyncClient, body: dict[str, Any], due: float
) -> tuple[float, float, float, int, str]:
    sent = time.perf_counter()
    try:
        response = await client.post("/v1/runs", json=body)
        status, error = response.status_code, ""
    except httpx.HTTPError as exc:  # counted and reported, never dropped
        status, error = -1, type(exc).__name__
    return due, sent, time.perf_counter(), status, error


async def _warm(client: httpx.AsyncClient, connections: int) -> None:
    """Open every connection before the clock starts (keep-alive: they stay open)."""
    await asyncio.gather(*(client.get("/healthz") for _ in range(connections)))


async def _sender(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    due_queue: asyncio.Queue[float | None],
    results: list[tuple[float, float, float, int, str]],
) -> None:
    """One per connection: a request that is due waits here (its wait counts in its latency),
    not in httpx's pool, whose assignment of queued requests to connections is quadratic in
    their number and would make the sender, not the server, the bottleneck."""
    while (due := await due_queue.get()) is not None:
        results.append(await _one(client, body, due))


async def run_load(
    base_url: str, key: str, rate: float, duration: float, connections: int, body: dict[str, Any]
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {key}"}
    results: list[tuple[float, float, float, int, str]] = []
    due_queue: asyncio.Queue[float | None] = asyncio.Queue()
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as client:
        await _warm(client, connections)
        senders = [
            asyncio.create_task(_sender(client, body, due_queue, results))
            for _ in range(connections)
        ]
        total = int(rate * duration)
        t0 = time.perf_counter() + 0.05
        issued: list[float] = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            issued.append(time.perf_counter())
            due_queue.put_nowait(due)
        for _ in senders:
            due_queue.put_nowait(None)
        await asyncio.gather(*senders)
    late = [1000 * (at - (t0 + i / rate)) for i, at in enumerate(issued)]
    summary = summarize(results, rate, duration)
    # the scheduler's own timing: how fast and how late requests were issued
    summary["issue_rate"] = (total - 1) / (issued[-1] - issued[0]) if total > 1 else 0.0
    summary["issue_late_max_ms"] = max(late, default=0.0)
    return summary


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(
    results: list[tuple[float, float, float, int, str]], rate: float, duration: float
) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for _, _, _, status, error in results:
        name = error or str(status)
        statuses[name] = statuses.get(name, 0) + 1
    ok = [r for r in results if 200 <= r[3] < 300]
    from_due = [1000 * (done - due) for due, _, done, _, _ in ok]
    from_sent = [1000 * (done - sent) for _, sent, done, _, _ in ok]
    # waiting for a free connection (the server had all of them busy)
    lag = [1000 * (sent - due) for due, sent, _, _, _ in results]
    first_sent = min((r[1] for r in results), default=0.0)
    last_sent = max((r[1] for r in results), default=0.0)
    last_done = max((r[2] for r in results), default=0.0)
    sent = len(results)
    return {
        "target_rate": rate,
        "duration_s": duration,
        "sent": sent,
        "completed_2xx": len(ok),
        "non_2xx": {k: v for k, v in statuses.items() if not k.startswith("2")},
        "statuses": statuses,
        # n requests span n-1 intervals
        "send_rate": (sent - 1) / (last_sent - first_sent) if last_sent > first_sent else 0.0,
        "completion_rate": len(ok) / (last_done - first_sent) if last_done > first_sent else 0.0,
        "p50_ms": _pct(from_due, 0.50),
        "p99_ms": _pct(from_due, 0.99),
        "max_ms": max(from_due, default=0.0),
        "p50_sent_ms": _pct(from_sent, 0.50),
        "p99_sent_ms": _pct(from_sent, 0.99),
        "conn_wait_p99_ms": _pct(lag, 0.99),
        "conn_wait_max_ms": max(lag, default=0.0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="open-loop POST /v1/runs (bench/http.py)")
    p.add_argument("--base-url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--body", required=True, help="the JSON body of every request")
    args = p.parse_args(argv)
    key = os.environ.get(KEY_ENV)
    if not key:
        print(f"{KEY_ENV} is not set", file=sys.stderr)
        return 2
    body = json.loads(args.body)
    cpu0 = time.process_time()
    result = asyncio.run(
        run_load(args.base_url, key, args.rate, args.duration, args.connections, body)
    )
    # the load generator's own CPU per request: on a small host it competes with the server
    result["cpu_ms_per_request"] = 1000 * (time.process_time() - cpu0) / max(1, result["sent"])
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
