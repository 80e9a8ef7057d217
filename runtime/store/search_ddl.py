"""The documents table's full-text index, in each database's own terms: an FTS5 table over
``documents`` kept by triggers on SQLite, a generated ``tsvector`` column with a GIN index
on PostgreSQL. Created with the table (``create_all``) and by migration 0014, from the same
statements, so both make one schema. SQLAlchemy's metadata does not describe them: the
migration tests' comparison leaves out what ``ignored`` names."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import DDL, Table, event
from sqlalchemy.engine import Connection

#: the PostgreSQL text-search configuration (stemming) documents and queries share
PG_CONFIG = "english"

SQLITE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5("
    "title, content, content='documents', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS documents_fts_ai AFTER INSERT ON documents BEGIN "
    "INSERT INTO documents_fts(rowid, title, content) VALUES (new.id, new.title, new.content); "
    "END",
    "CREATE TRIGGER IF NOT EXISTS documents_fts_ad AFTER DELETE ON documents BEGIN "
    "INSERT INTO documents_fts(documents_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS documents_fts_au AFTER UPDATE ON documents BEGIN "
    "INSERT INTO documents_fts(documents_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); "
    "INSERT INTO documents_fts(rowid, title, content) VALUES (new.id, new.title, new.content); "
    "END",
)

POSTGRESQL = (
    "ALTER TABLE documents ADD COLUMN IF NOT EXISTS search tsvector GENERATED ALWAYS AS ("
    f"setweight(to_tsvector('{PG_CONFIG}', title), 'A') || "
    f"setweight(to_tsvector('{PG_CONFIG}', content), 'B')) STORED",
    "CREATE INDEX IF NOT EXISTS ix_documents_search ON documents USING GIN (search)",
)

#: what the index adds beyond the models: tables (and their FTS5 shadow tables),
#: a column and an index
IGNORED_PREFIX = "documents_fts"
IGNORED_COLUMN = "search"
IGNORED_INDEX = "ix_documents_search"


def statements(dialect: str) -> tuple[str, ...]:
    return {"sqlite": SQLITE, "postgresql": POSTGRESQL}.get(dialect, ())


def create(conn: Connection) -> None:
    """The index on ``conn``'s database (idempotent)."""
    for sql in statements(conn.dialect.name):
        conn.exec_driver_sql(sql)


def attach(table: Table) -> None:
    """Create the index whenever ``create_all`` creates the table."""
    for dialect in ("sqlite", "postgresql"):
        for sql in statements(dialect):
            ddl = DDL(sql)  # type: ignore[no-untyped-call]
            event.listen(table, "after_create", ddl.execute_if(dialect=dialect))


def include_name(name: str | None, kind: str, parents: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` for a schema comparison: everything but the index's own
    tables, column and index, which the models do not describe."""
    if name is None:
        return True
    if kind == "table":
        return not name.startswith(IGNORED_PREFIX)
    if kind == "column" and parents.get("table_name") == "documents":
        return name != IGNORED_COLUMN
    return not (kind == "index" and name == IGNORED_INDEX)
