"""ASGI middleware at the edge: the request body limit (413 before anything parses it) and
the last resort for an exception nobody expected (a 500 problem carrying an ``error_id``
that is logged with the traceback; never a traceback in the body)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.api.problems import PROBLEM_JSON, problem_body
from runtime.errors import RequestTooLarge

log = logging.getLogger("agentrt.api")


async def _send_problem(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(raw)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """Refuse a body over ``max_bytes``: by its Content-Length before reading it, or while
    it streams in (chunked) as soon as it passes the limit (``RequestTooLarge``, which
    the error table answers 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"the request body is over {self.max_bytes} bytes"
        await _send_problem(send, 413, problem_body(413, "body_too_large", detail))


class LastResort:
    """An unexpected exception: a 500 problem with an id that is in the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            error_id = uuid.uuid4().hex
            log.exception(
                "internal error %s on %s %s (%s)",
                error_id,
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
            )
            if not started:
                body = problem_body(
                    500,
                    "internal_error",
                    f"an internal error occurred; quote error id {error_id}",
                    error_id=error_id,
                )
                await _send_problem(send, 500, body)
