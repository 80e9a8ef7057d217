"""Memory the runtime governs: writes proposed by a model are checked (namespaces,
retention classes, required evidence, size, a secret/PII screen), stored with provenance,
read back through the ``memory`` source under the same access and freshness rules, expired
by retention and forgotten explicitly."""
