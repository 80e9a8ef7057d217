"""A real, local OpenAI-compatible HTTP server for tests.

It implements ``POST /v1/chat/completions``: every request is recorded (parsed JSON body)
and answered with the next programmed response. Responses are queued per *key*: a request
goes to the first key that appears in its user message (runs put a unique marker in their
goal), else to the default queue. When a queue is empty the server answers 500, so a test
that forgot a response fails loudly instead of hanging.

    with FakeOpenAI() as server:
        server.add(tool_call("kb.search", {"query": "refund"}), key="run-1")
        server.add(text("done"), key="run-1")
        ... base_url=server.base_url ...
        server.requests_for("run-1")[1]["messages"]
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "test-model-2025-01-01"


@dataclass
class FakeResponse:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: raw bytes to send instead of ``body`` as JSON (to send garbage)
    raw: bytes | None = None


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    key: str | None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


def completion(
    message: dict[str, Any],
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    model: str = DEFAULT_MODEL,
    finish_reason: str = "stop",
) -> FakeResponse:
    return FakeResponse(
        body={
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def text(content: str, **kw: Any) -> FakeResponse:
    """An assistant message with plain content."""
    return completion({"role": "assistant", "content": content}, **kw)


def tool_call(
    function: str, arguments: Any, *, call_id: str | None = None, **kw: Any
) -> FakeResponse:
    """An assistant message calling ``function`` (a wire name such as ``kb__search``).

    ``arguments`` is sent as given when it is a string (to send broken JSON), else dumped."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id or f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {"name": function, "arguments": args},
            }
        ],
    }
    return completion(message, finish_reason="tool_calls", **kw)


def error(
    status: int = 500, message: str = "boom", *, retry_after_ms: int = 1, retry: bool = True
) -> FakeResponse:
    """An error reply; ``retry-after-ms`` keeps the client's one retry fast."""
    headers = {"retry-after-ms": str(retry_after_ms)} if retry else {"x-should-retry": "false"}
    body = {"error": {"message": message, "type": "server_error", "code": None}}
    return FakeResponse(status=status, body=body, headers=headers)


class FakeOpenAI:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[FakeResponse]] = {None: deque()}
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openai", daemon=True
        )

    # --- lifecycle -------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # --- programming -----------------------------------------------------------------
    def add(self, *responses: FakeResponse, key: str | None = None) -> None:
        with self._lock:
            self._queues.setdefault(key, deque()).extend(responses)

    def requests_for(self, key: str | None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.key == key]

    def pending(self, key: str | None = None) -> int:
        with self._lock:
            return len(self._queues.get(key, ()))

    # --- serving ---------------------------------------------------------------------
    def _key_for(self, body: Any) -> str | None:
        users: list[str] = []
        if isinstance(body, dict):
            for m in body.get("messages") or []:
                if isinstance(m, dict) and m.get("role") == "user":
                    content = m.get("content")
                    if isinstance(content, str):
                        users.append(content)
        for key in self._queues:
            if key is not None and any(key in u for u in users):
                return key
        return None

    def _respond(self, path: str, headers: dict[str, str], raw: bytes) -> FakeResponse:
        try:
            body: Any = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        with self._lock:
            key = self._key_for(body)
            self.requests.append(RecordedRequest(path, headers, body, key))
            if path.rstrip("/") != "/v1/chat/completions":
                return FakeResponse(404, {"error": {"message": f"no route {path}"}})
            queue = self._queues.get(key)
            if not queue:
                return error(
                    500, f"fake-openai: no response programmed for key {key!r}", retry=False
                )
            return queue.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                response = fake._respond(self.path, headers, raw)
                payload = (
                    response.raw if response.raw is not None else json.dumps(response.body).encode()
                )
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
