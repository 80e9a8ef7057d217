"""Alembic's environment: run on the connection ``runtime.store.migrations.runner`` hands in.

There is no ``alembic.ini`` and no URL here: the runner opens the connection (inside one
transaction, holding the schema lock) and passes it as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import runtime.store.models  # noqa: F401  (the tables, into SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "agentrt's migrations run through `agentrt db upgrade` "
        "(runtime.store.migrations.runner), not the alembic command"
    )
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite alters a table by rebuilding it
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
