"""Retrieval the runtime governs: which sources a route may search (eligibility), who may
see a document (access), how old it may be (freshness), how many results (top-k), and the
evidence references every shown result becomes. The search engine behind a source is
pluggable (``runtime.retrieval.base.Retriever``)."""
