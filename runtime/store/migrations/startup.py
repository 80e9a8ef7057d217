"""The start-up check every process runs before it uses the database.

At head - the common case - it costs one catalog look-up and one SELECT and imports no
Alembic. Otherwise ``runner.prepare`` decides: an empty database gets the schema, tables
an older agentrt made that already match head are stamped, and anything older is refused
with ``SchemaOutOfDate`` naming ``agentrt db upgrade``.
"""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from runtime.store.migrations import HEAD


def ensure_current(engine: Engine) -> None:
    with engine.connect() as conn:
        current = None
        if inspect(conn).has_table("alembic_version"):
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current == HEAD:
        return
    from runtime.store.migrations import runner

    runner.prepare(engine)
