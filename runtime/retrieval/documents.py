"""The built-in ``documents`` retriever: the documents table's full-text search
(``runtime.store.documents``), tenant, freshness and labels filtered in SQL."""

from __future__ import annotations

from runtime.retrieval.base import Hit, SearchRequest
from runtime.store.documents import DocumentStore, decode_labels

#: the name sources give as ``retriever``
NAME = "documents"
#: bumped when the ranking changes (the version set's ``retriever``)
VERSION = "fts-1"


class DocumentsRetriever:
    name = NAME
    version = VERSION

    def __init__(self, *, documents: DocumentStore) -> None:
        self.documents = documents

    def search(self, request: SearchRequest) -> list[Hit]:
        found = self.documents.search(
            tenant_id=request.tenant_id,
            source=request.source,
            query=request.query,
            top_k=request.top_k,
            not_before=request.not_before,
            labels=request.labels,
            labels_required=request.labels_required,
        )
        return [
            Hit(
                doc_id=f.row["doc_id"],
                version=int(f.row["version"]),
                source=f.row["source"],
                tenant_id=f.row["tenant_id"],
                title=f.row["title"],
                content=f.row["content"],
                score=f.score,
                updated_at=f.row["updated_at"],
                labels=frozenset(decode_labels(f.row["labels"])),
            )
            for f in found
        ]
