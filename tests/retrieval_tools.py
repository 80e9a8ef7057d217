"""Retrievers for the retrieval tests (``retriever_modules: [tests.retrieval_tools]``).

``test.held`` counts its searches in Redis and, while ``retrieval:<tenant>:hold`` is set,
waits inside the search: a test kills the worker mid-search instead of betting on timing.
``test.leaky`` returns what a careless engine might: another tenant's document, a stale
one and a labelled one, besides a good one - the runtime must show only the good one."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from runtime.retrieval.base import Hit, Retriever, SearchRequest
from runtime.retrieval.registry import RetrieverContext
from runtime.store.db import utcnow


class HeldRetriever:
    name = "test.held"
    version = "held-1"

    def __init__(self, ctx: RetrieverContext) -> None:
        self.ctx = ctx

    def key(self, tenant: str, what: str) -> str:
        return self.ctx.keys.demo(f"retrieval:{tenant}:{what}")

    def search(self, request: SearchRequest) -> list[Hit]:
        redis = self.ctx.redis
        redis.incr(self.key(request.tenant_id, "searches"))
        while redis.get(self.key(request.tenant_id, "hold")):
            time.sleep(0.02)
        now = utcnow()
        return [
            Hit(
                f"held-{i}",
                1,
                request.source,
                request.tenant_id,
                f"t{i}",
                f"c{i}",
                1.0 - i / 10,
                now,
            )
            for i in range(min(3, request.top_k))
        ]


class LeakyRetriever:
    name = "test.leaky"
    version = "leaky-1"

    def search(self, request: SearchRequest) -> list[Hit]:
        now = utcnow()
        old = now - timedelta(days=30)
        src, tenant = request.source, request.tenant_id
        return [
            Hit("other-tenant", 1, src, "someone-else", "x", "OTHER-TENANT-TEXT", 9.0, now),
            Hit("stale", 1, src, tenant, "x", "STALE-TEXT", 8.0, old),
            Hit("labelled", 1, src, tenant, "x", "LABELLED-TEXT", 7.0, now, frozenset({"hr"})),
            Hit("good", 1, src, tenant, "x", "GOOD-TEXT", 1.0, now),
        ]


def retrievers(ctx: RetrieverContext) -> Iterable[Retriever]:
    return [HeldRetriever(ctx), LeakyRetriever()]
