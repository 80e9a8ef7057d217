"""The load process of ``bench/http.py``: open-loop ``POST /v1/runs`` at a fixed rate.

Run as its own process (``python -m bench.http_load``) so the load generator's CPU is not
the API server's. Request *i* is due at ``t0 + i / rate`` whatever happened to the earlier
ones (open loop: a slow server does not slow the sender down); one sender per keep-alive
connection takes due requests in order. Latency is taken from the due time (time a request
waited for a free connection counts: no coordinated omission) and, separately, from the
moment it was written to its connection. The API key comes in the environment
(``BENCH_HTTP_KEY``), never on the command line. Prints one JSON object.

The client is a minimal HTTP/1.1 one over asyncio streams: the request's bytes are built
once, and a response is read by its ``Content-Length`` (or its chunks). On a 2-core host
the load process shares the CPU with the server it measures: httpx cost about 1.1 CPU-ms a
request here (a fifth of a core at 200 requests/s), this client a small fraction of that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

KEY_ENV = "BENCH_HTTP_KEY"
#: a response head longer than this is an error, not something to wait for
MAX_HEAD = 64 * 1024

Result = tuple[float, float, float, int, str]


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client reads."""


def request_bytes(method: str, host: str, path: str, key: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {key}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server keeps the connection open); the body is read and
    dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD or not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(head[:100].decode("latin-1"))
    status = int(head[9:12])
    length, chunked, keep = 0, False, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            keep = value != b"close"
    if not chunked:
        await reader.readexactly(length)
        return status, keep
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        await reader.readexactly(size + 2)
    await reader.readuntil(b"\r\n")  # the last chunk's end (no trailers are sent)
    return status, keep


class Connection:
    """One keep-alive connection; reopened when the server closes it or it fails."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, raw: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(raw)
            status, keep = await read_response(reader)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _one(conn: Connection, raw: bytes, due: float) -> Result:
    sent = time.perf_counter()
    try:
        status, error = await conn.exchange(raw), ""
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as exc:
        status, error = -1, type(exc).__name__  # counted and reported, never dropped
    except ValueError as exc:  # a malformed status or length
        status, error = -1, type(exc).__name__
    return due, sent, time.perf_counter(), status, error


async def _sender(
    conn: Connection, raw: bytes, due_queue: asyncio.Queue[float | None], results: list[Result]
) -> None:
    """One per connection: a request that is due waits here (its wait counts in its
    latency) until this connection is free."""
    while (due := await due_queue.get()) is not None:
        results.append(await _one(conn, raw, due))


async def run_load(
    base_url: str, key: str, rate: float, duration: float, connections: int, body: dict[str, Any]
) -> dict[str, Any]:
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"--base-url must be http://host:port, not {base_url!r}")
    host, port = url.hostname, url.port or 80
    authority = f"{host}:{port}"
    raw = request_bytes("POST", authority, "/v1/runs", key, json.dumps(body).encode())
    conns = [Connection(host, port) for _ in range(connections)]
    # open every connection before the clock starts (keep-alive: they stay open)
    health = request_bytes("GET", authority, "/healthz", key, None)
    await asyncio.gather(*(c.exchange(health) for c in conns))
    results: list[Result] = []
    due_queue: asyncio.Queue[float | None] = asyncio.Queue()
    senders = [asyncio.create_task(_sender(c, raw, due_queue, results)) for c in conns]
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
    for c in conns:
        c.close()
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


def summarize(results: list[Result], rate: float, duration: float) -> dict[str, Any]:
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
