"""Broker faults a worker must survive: a Redis that restarts (with or without its data).

When the broker goes away, Celery's consumer closes its channels and reconnects. A channel
closed after its connection was released asks kombu's Redis transport for a new connection
pool, and the transport reads the released connection's ``client`` (``None``):
``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery ignores
*connection* errors while closing channels, but not an AttributeError, so the worker stops
("Unrecoverable error") - every worker at once, when the broker restarts.

``guard_closed_connections`` makes that case a connection error, which Celery already
handles: the channel is dropped, the consumer reconnects, the worker goes on.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import BrokerConnectionClosed as BrokerConnectionClosed


def guard_closed_connections() -> None:
    """Patch kombu's Redis channel once: no connection parameters from a released
    connection; raise a connection error Celery knows how to handle instead."""
    from kombu.transport import redis as transport

    original = transport.Channel._connparams
    if getattr(original, "agentrt_guarded", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(getattr(self, "connection", None), "client", None) is None:
            raise BrokerConnectionClosed(
                "the broker connection was closed (Redis restarted?); reconnecting"
            )
        return original(self, asynchronous)

    _connparams.agentrt_guarded = True  # type: ignore[attr-defined]
    transport.Channel._connparams = _connparams  # type: ignore[method-assign]
