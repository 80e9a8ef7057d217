"""The HTTP API served for tests: a real uvicorn server on a free loopback port, in a
thread of the test process, over a ``Deployment``'s runtime; ``httpx`` as the client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from runtime.api.app import create_app
from tests.support import Deployment, wait_for

ALL_SCOPES = [
    "runs:submit",
    "runs:read",
    "runs:cancel",
    "approvals:decide",
    "dlq:operate",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Api:
    dep: Deployment
    app: FastAPI
    base: str

    def key(self, tenant: str = "t1", scopes: list[str] | None = None, **kw: Any) -> str:
        issued = self.dep.svc.api_keys.create(tenant, scopes or ALL_SCOPES, actor="test", **kw)
        return issued.secret

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, message="the server to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve(dep: Deployment, extra: Any = None) -> Iterator[Api]:
    app = create_app(dep.svc)
    if extra is not None:
        extra(app)
    with serve_app(app) as base:
        yield Api(dep, app, base)


def is_problem(response: httpx.Response, status: int, reason: str | None = None) -> Any:
    """The response is an RFC 9457 problem with ``status`` (and ``reason``); its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail", "reason"} <= set(body), body
    assert body["status"] == status
    if reason is not None:
        assert body["reason"] == reason, body
    return body
