"""Messages no worker can run land in the dead-letter queue as ``poison``, never lost.

Celery on Redis drops what it cannot run: an unregistered task name (``task_unknown``), an
invalid message (``task_rejected``) and a body that does not decode (the consumer's
``on_decode_error``, which has no signal: ``PoisonAwareConsumer`` adds the hook). Step
messages whose kwargs do not name a valid step are caught by the step task itself.

Worse, bytes on the queue list that are not a kombu envelope at all make kombu's Redis
transport raise inside the worker's event loop, and Celery stops the worker ("Unrecoverable
error"): every worker that pops the item dies. ``guard_transport`` wraps the transport's
JSON decoding so such an item becomes an envelope Celery rejects as unknown, which the
``task_rejected`` hook dead-letters with the raw bytes.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

from tasks.host import RuntimeHost
from tasks.messages import STEP_QUEUE

log = logging.getLogger("agentrt.poison")

#: bytes of a message body kept in its dead-letter entry
MAX_BODY = 20_000


def describe(message: Any) -> dict[str, Any]:
    """What an operator needs to read a dropped message: headers, properties, body."""
    body = getattr(message, "body", None)
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(body[:MAX_BODY]).decode()
    else:
        text = repr(body)
    return {
        "headers": _plain(getattr(message, "headers", None)),
        "properties": _plain(getattr(message, "properties", None)),
        "content_type": getattr(message, "content_type", None),
        "body": text[:MAX_BODY],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _queue_of(message: Any) -> str:
    info = getattr(message, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("exchange") or STEP_QUEUE)


def record(app: RuntimeHost, message: Any, error_type: str, error: str) -> None:
    try:
        headers = getattr(message, "headers", None) or {}
        app.runtime_service().dead_letters.poison(
            queue=_queue_of(message),
            error_type=error_type,
            error=error,
            message=describe(message),
            task_name=str(headers.get("task")) if headers.get("task") else None,
            task_id=str(headers.get("id")) if headers.get("id") else None,
        )
    except Exception:  # never let bookkeeping take the consumer down
        log.exception("could not dead-letter a poison message (%s)", error_type)


class PoisonAwareConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, plus a dead-letter entry for a body that does not decode."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        record(self.app, message, "undecodable", f"{type(exc).__name__}: {exc}")


def _garbage_envelope(raw: Any) -> dict[str, Any]:
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw or b"")
    return {
        "body": base64.b64encode(data[:MAX_BODY]).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-agentrt-garbage",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": ""},
            "delivery_mode": 2,
            "delivery_tag": uuid.uuid4().hex,
            "priority": 0,
        },
    }


def _sane(payload: Any) -> bool:
    if isinstance(payload, list):  # kombu's own records of unacked messages
        return True
    props = payload.get("properties") if isinstance(payload, dict) else None
    return isinstance(props, dict) and "delivery_tag" in props


def guard_transport() -> None:
    """Make kombu's Redis transport hand garbage to Celery instead of dying on it."""
    from kombu.transport import redis as transport

    original = transport.loads  # type: ignore[attr-defined]
    if getattr(original, "agentrt_guarded", False):
        return

    def tolerant_loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            payload = original(s, *args, **kwargs)
        except (ValueError, TypeError):
            log.error("undecodable item on a broker list: dead-lettered as poison")
            return _garbage_envelope(s)
        return payload if _sane(payload) else _garbage_envelope(s)

    tolerant_loads.agentrt_guarded = True  # type: ignore[attr-defined]
    transport.loads = tolerant_loads  # type: ignore[attr-defined]


def register(app: RuntimeHost) -> None:
    guard_transport()
    app.conf.worker_consumer = "tasks.poison:PoisonAwareConsumer"

    @signals.task_unknown.connect(weak=False, dispatch_uid=f"agentrt-unknown-{id(app)}")
    def _unknown(
        sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any
    ) -> None:
        if getattr(sender, "app", None) is app:
            record(app, message, "unknown_task", f"unregistered task {name!r}: {exc}")

    @signals.task_rejected.connect(weak=False, dispatch_uid=f"agentrt-rejected-{id(app)}")
    def _rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            detail = f"{type(exc).__name__}: {exc}" if exc else "message in an unknown format"
            record(app, message, "invalid_message", detail)
