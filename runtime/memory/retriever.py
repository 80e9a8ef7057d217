"""The ``memory`` source's retriever: the tenant's live memories (not forgotten, not
expired, not older than the request's freshness rule), ranked by how many of the query's
words they hold. A key written again shows only its newest version. Registered like any
retriever (``runtime.retrieval.base.Retriever``): ``memory_retriever(engine)``."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine

from runtime.memory.store import MemoryStore
from runtime.retrieval.base import Hit, SearchRequest
from runtime.store.db import utcnow

#: the retriever's name (the config's source) and version (the run's version set)
NAME = "memory"
VERSION = "memory-like-1"
#: query words used (the rest are ignored: a LIKE per word per column)
MAX_TERMS = 16
#: candidate rows read per requested hit, before ranking
CANDIDATES_PER_HIT = 5
MAX_CANDIDATES = 500

_WORD = re.compile(r"[\w\-]{2,}", re.UNICODE)


def terms_of(query: str) -> list[str]:
    """The query's distinct words, lower-cased, in order (at most ``MAX_TERMS``)."""
    seen: list[str] = []
    for word in _WORD.findall(query.lower()):
        if word not in seen:
            seen.append(word)
    return seen[:MAX_TERMS]


class MemoryRetriever:
    name = NAME
    version = VERSION

    def __init__(self, *, store: MemoryStore) -> None:
        self.store = store

    def search(self, request: SearchRequest) -> list[Hit]:
        terms = terms_of(request.query)
        if not terms:
            return []
        rows = self.store.search(
            request.tenant_id,
            terms,
            now=utcnow(),
            not_before=request.not_before,
            limit=min(request.top_k * CANDIDATES_PER_HIT, MAX_CANDIDATES),
        )
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:  # newest first: the first of a key is its newest version
            newest.setdefault((row["namespace"], row["key"]), row)
        ranked = sorted(
            ((_score(row, terms), row) for row in newest.values()),
            key=lambda pair: (-pair[0], -pair[1]["created_at"].timestamp()),
        )
        return [_hit(row, score, request.source) for score, row in ranked[: request.top_k]]


def _score(row: dict[str, Any], terms: list[str]) -> float:
    text = f"{row['key']} {row['content']}".lower()
    return round(sum(1 for t in terms if t in text) / len(terms), 4)


def _hit(row: dict[str, Any], score: float, source: str) -> Hit:
    return Hit(
        doc_id=str(row["memory_id"]),
        version=int(row["version"]),
        source=source,
        tenant_id=str(row["tenant_id"]),
        title=f"{row['namespace']}/{row['key']}",
        content=str(row["content"]),
        score=score,
        updated_at=row["created_at"],
        meta={
            "namespace": str(row["namespace"]),
            "key": str(row["key"]),
            "retention": str(row["retention"]),
            "run_id": str(row["run_id"]),
        },
    )


def memory_retriever(engine: Engine) -> MemoryRetriever:
    """The ``memory`` retriever over the store on ``engine``."""
    return MemoryRetriever(store=MemoryStore(engine))
