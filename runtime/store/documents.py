"""SQL of the documents a ``documents`` source searches: loading (``agentrt docs``) and the
full-text search, each database with its own index (``runtime.store.search_ddl``).

Every query is scoped by tenant, and the search filters freshness and access labels in
SQL, so a document the run may not see is never read out of the database at all."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    column,
    delete,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from runtime.errors import DocumentNotFound, InvalidRequest
from runtime.store.connections import StoreConnections
from runtime.store.db import utcnow
from runtime.store.search_ddl import PG_CONFIG
from runtime.store.tables import documents_t

#: the words of a query; anything else (FTS5 or tsquery syntax) is never passed through
_WORD = re.compile(r"\w+", re.UNICODE)
#: words of one query that reach the index (a longer query is cut)
MAX_QUERY_WORDS = 32


@dataclass(frozen=True)
class Found:
    """A document the search returned, with its rank (higher is better)."""

    row: dict[str, Any]
    score: float


def encode_labels(labels: Iterable[str]) -> str:
    """``,a,b,`` (sorted, unique), or "" for none."""
    unique = sorted({label.strip() for label in labels if label.strip()})
    return f",{','.join(unique)}," if unique else ""


def decode_labels(stored: str | None) -> list[str]:
    return [label for label in (stored or "").split(",") if label]


def query_words(query: str) -> list[str]:
    return _WORD.findall(query.lower())[:MAX_QUERY_WORDS]


class DocumentStore(StoreConnections):
    def add(
        self,
        *,
        tenant_id: str,
        source: str,
        title: str,
        content: str,
        labels: Iterable[str] = (),
        doc_id: str | None = None,
        updated_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Store a document; the same id again replaces it with the next version. Returns
        the stored row."""
        doc_id = doc_id or f"doc-{uuid.uuid4().hex[:16]}"
        now = utcnow()
        if updated_at is not None and updated_at > now:
            raise InvalidRequest(("updated_at",), f"{updated_at.isoformat()} is in the future")
        values = {
            "source": source,
            "title": title,
            "content": content,
            "labels": encode_labels(labels),
            # when the document last changed in its own system (freshness is measured from
            # it), else now
            "updated_at": updated_at or now,
        }
        key = (documents_t.c.tenant_id == tenant_id, documents_t.c.doc_id == doc_id)
        with self._write() as conn:
            bumped = conn.execute(
                update(documents_t).where(*key).values(**values, version=documents_t.c.version + 1)
            )
            if bumped.rowcount == 0:
                conn.execute(
                    insert(documents_t),
                    [
                        {
                            "doc_id": doc_id,
                            "tenant_id": tenant_id,
                            "version": 1,
                            "created_at": now,
                            **values,
                        }
                    ],
                )
            row = conn.execute(select(documents_t).where(*key)).mappings().one()
        return dict(row)

    def listed(
        self, tenant_id: str, source: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The tenant's documents (of ``source``), newest first, without their content."""
        cols = [c for c in documents_t.c if c.name not in ("content", "id")]
        query = select(*cols).where(documents_t.c.tenant_id == tenant_id)
        if source is not None:
            query = query.where(documents_t.c.source == source)
        query = query.order_by(documents_t.c.updated_at.desc()).limit(limit)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def remove(self, doc_id: str, tenant_id: str) -> None:
        """Delete the tenant's document (its index entry goes with it); ``DocumentNotFound``
        if the tenant has none of that id."""
        key = (documents_t.c.tenant_id == tenant_id, documents_t.c.doc_id == doc_id)
        with self._write() as conn:
            if conn.execute(delete(documents_t).where(*key)).rowcount != 1:
                raise DocumentNotFound(doc_id, tenant_id)

    def search(
        self,
        *,
        tenant_id: str,
        source: str,
        query: str,
        top_k: int,
        not_before: datetime | None,
        labels: frozenset[str],
        labels_required: bool = False,
    ) -> list[Found]:
        """At most ``top_k`` of the tenant's documents of ``source`` matching ``query``,
        best first: only those updated at ``not_before`` or later, and only those whose
        labels the actor holds one of (unlabelled ones unless ``labels_required``)."""
        words = query_words(query)
        if not words:
            return []
        d = documents_t.c
        filters: list[ColumnElement[bool]] = [d.tenant_id == tenant_id, d.source == source]
        if not_before is not None:
            filters.append(d.updated_at >= not_before)
        filters.append(_access(labels, labels_required))
        if self.engine.dialect.name == "postgresql":
            return self._search_pg(words, filters, top_k)
        return self._search_sqlite(words, filters, top_k)

    def _search_sqlite(
        self, words: list[str], filters: list[ColumnElement[bool]], top_k: int
    ) -> list[Found]:
        # each word quoted (an FTS5 string), any of them may match; bm25: lower is better,
        # a title match weighs twice a content match
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        fts = table("documents_fts", column("rowid"))
        rank: ColumnElement[Any] = literal_column("bm25(documents_fts, 2.0, 1.0)")
        query = (
            select(documents_t, rank.label("rank"))
            .select_from(documents_t.join(fts, fts.c.rowid == documents_t.c.id))
            .where(literal_column("documents_fts").op("MATCH")(match), *filters)
            .order_by(rank, documents_t.c.id)
            .limit(top_k)
        )
        with self._read_one() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return [Found(r, -float(r.pop("rank"))) for r in rows]

    def _search_pg(
        self, words: list[str], filters: list[ColumnElement[bool]], top_k: int
    ) -> list[Found]:
        # the words as plain lexemes ORed (plainto_tsquery would need every one of them);
        # ``documents.search`` is the generated column, not in the models (search_ddl)
        config: ColumnElement[Any] = literal_column(f"'{PG_CONFIG}'::regconfig")
        tsquery = func.to_tsquery(config, " | ".join(words))
        search: ColumnElement[Any] = literal_column("documents.search")
        rank = func.ts_rank(search, tsquery)
        query = (
            select(documents_t, rank.label("rank"))
            .where(search.op("@@")(tsquery), *filters)
            .order_by(rank.desc(), documents_t.c.id)
            .limit(top_k)
        )
        with self._read_one() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return [Found(r, float(r.pop("rank"))) for r in rows]


def _access(labels: frozenset[str], labels_required: bool) -> ColumnElement[bool]:
    """A labelled document needs one of ``labels``; an unlabelled one is open unless the
    source requires labels. Matched as ``,label,`` within the stored ``,a,b,``."""
    held = [documents_t.c.labels.contains(f",{label},", autoescape=True) for label in labels]
    if labels_required:
        return or_(*held) if held else false()
    return or_(documents_t.c.labels == "", *held)
