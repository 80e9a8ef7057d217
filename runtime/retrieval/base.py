"""The retriever interface: a source's search engine, registered like a tool (by name, with
a version that goes into the run's version set). The runtime checks eligibility before it
asks and filters what comes back (tenant, access labels, freshness) before the model sees
any of it; a retriever only ranks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SearchRequest:
    """One source's search for one proposal, already checked for eligibility."""

    tenant_id: str
    source: str
    query: str
    top_k: int
    #: documents updated before this are stale (None: no freshness rule)
    not_before: datetime | None = None
    #: the access labels the run's actor holds (a labelled document needs one of them)
    labels: frozenset[str] = field(default_factory=frozenset)
    #: the source's access rule: an unlabelled document is shown to no actor either
    labels_required: bool = False


@dataclass(frozen=True)
class Hit:
    """A result as the retriever ranks it; the runtime turns it into an evidence reference."""

    doc_id: str
    version: int
    source: str
    tenant_id: str
    title: str
    content: str
    score: float
    updated_at: datetime
    labels: frozenset[str] = field(default_factory=frozenset)
    meta: Mapping[str, str] = field(default_factory=dict)


class Retriever(Protocol):
    #: the source it serves (a key of the config's ``sources``)
    name: str
    #: recorded in the run's version set (``retriever``)
    version: str

    def search(self, request: SearchRequest) -> list[Hit]:
        """At most ``request.top_k`` hits of ``request.tenant_id``'s documents."""
        ...
