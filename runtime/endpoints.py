"""Where the runtime's servers are: Redis, the broker, the database (an embedded Redis and
SQLite under ``home`` when the environment names none)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.embedded_redis import EmbeddedRedis, ensure_embedded
from runtime.settings import Settings
from runtime.store.db import default_sqlite_url


@dataclass
class Endpoints:
    redis_url: str
    broker_url: str
    database_url: str
    embedded_redis: EmbeddedRedis | None = None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Fill in what the environment left unset: an embedded Redis, SQLite under ``home``."""
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = ensure_embedded(settings.home)
        redis_url = embedded.url
    database_url = settings.database_url or default_sqlite_url(settings.home)
    return Endpoints(redis_url, settings.broker_url or redis_url, database_url, embedded)
