"""A throwaway database beside the deployment's (an eval replay's isolated SQL): a new
SQLite file, or a new schema of the same PostgreSQL database, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import make_url, text

from runtime.store.db import is_sqlite, make_engine


@contextlib.contextmanager
def scratch_database(url: str, directory: Path) -> Iterator[str]:
    """The URL of an empty database on ``url``'s server (a SQLite file in ``directory``
    for SQLite), removed when the block ends."""
    if is_sqlite(url):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"eval-{uuid.uuid4().hex[:12]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    schema = f"agentrt_eval_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        base = url
        if base.startswith(("postgresql://", "postgres://")):
            base = "postgresql+psycopg://" + base.split("://", 1)[1]
        scoped = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield scoped.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()
