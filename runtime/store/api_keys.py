"""SQL for the HTTP API's keys: insert, look up by prefix, list, revoke. Secrets are never
here: the caller hands in the hash."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from runtime.store.connections import StoreConnections
from runtime.store.models import ApiKeyRow

api_keys_t = ApiKeyRow.__table__  # type: ignore[attr-defined]


class ApiKeyStore(StoreConnections):
    def insert(self, row: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(insert(api_keys_t), [row])

    def by_prefix(self, prefix: str) -> dict[str, Any] | None:
        # every authenticated request reads its key: driver SQL built once
        with self._read_one() as conn:
            return self._sql.select_by(conn, api_keys_t, {"prefix": prefix})

    def get(self, key_id: str) -> dict[str, Any] | None:
        with self._read_one() as conn:
            found = conn.execute(select(api_keys_t).where(api_keys_t.c.key_id == key_id))
            row = found.mappings().first()
        return dict(row) if row is not None else None

    def list(self, tenant_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = select(api_keys_t).order_by(api_keys_t.c.created_at.desc()).limit(limit)
        if tenant_id is not None:
            query = query.where(api_keys_t.c.tenant_id == tenant_id)
        with self._read_one() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def revoke(self, key_id: str, actor: str, at: datetime) -> bool:
        """Revoke a key not revoked yet; False if it was (or does not exist)."""
        query = (
            update(api_keys_t)
            .where(api_keys_t.c.key_id == key_id, api_keys_t.c.revoked_at.is_(None))
            .values(revoked_at=at, revoked_by=actor)
        )
        with self._write() as conn:
            return conn.execute(query).rowcount == 1
