"""A broker that restarts must not stop the workers."""

from __future__ import annotations

import redis
from kombu import Connection
from kombu.common import ignore_errors

from tasks.broker_faults import BrokerConnectionClosed, guard_closed_connections


def test_a_channel_of_a_released_connection_raises_a_connection_error(redis_url: str) -> None:
    # Given a channel whose broker connection was released (as Celery's consumer leaves it
    # when Redis goes away), with no connection pool of its own yet
    guard_closed_connections()
    with Connection(redis_url) as conn:
        channel = conn.channel()
        channel._pool = None
        channel.connection.client = None
        # When it needs a connection (closing it deletes auto-delete queues, restores unacked
        # messages), it gets a connection error - not an AttributeError
        try:
            channel._get_pool()
        except Exception as exc:
            error: BaseException = exc
        assert isinstance(error, BrokerConnectionClosed)
        assert isinstance(error, redis.ConnectionError)
        # which is one of the transport's connection errors: Celery's ignore_errors (used when
        # it closes channels on a connection loss) swallows it instead of stopping the worker
        assert isinstance(error, conn.connection_errors)
        with ignore_errors(conn):
            channel._get_pool()
