"""What the whole deployment agrees on, kept in SQL: the applied config and the Redis state
generation. Small reads and writes, never on a step's hot path (processes cache them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select

from runtime.store.db import utcnow
from runtime.store.models import AppliedConfigRow, StateGenerationRow

configs_t = AppliedConfigRow.__table__  # type: ignore[attr-defined]
generations_t = StateGenerationRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AppliedConfig:
    digest: str
    version: str
    document: dict[str, Any]
    source: str
    actor: str
    applied_at: Any


class DeploymentStore:
    """Scoped to one deployment (namespace): deployments may share a database."""

    def __init__(self, engine: Engine, namespace: str) -> None:
        self.engine = engine
        self.namespace = namespace

    # --- the applied config ------------------------------------------------------------
    def applied(self) -> AppliedConfig | None:
        """The config every process enforces (the newest applied), or None before any."""
        query = (
            select(configs_t)
            .where(configs_t.c.namespace == self.namespace)
            .order_by(configs_t.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _applied(dict(row))

    def record(
        self, digest: str, version: str, document: dict[str, Any], source: str, actor: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(configs_t),
                [
                    {
                        "namespace": self.namespace,
                        "digest": digest,
                        "version": version,
                        "document": document,
                        "source": source[:500],
                        "actor": actor[:200],
                        "applied_at": utcnow(),
                    }
                ],
            )

    # --- the Redis state generation ------------------------------------------------------
    def generation(self) -> int:
        """The newest generation of Redis state built from SQL (0: never built)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(generations_t.c.id)).where(
                    generations_t.c.namespace == self.namespace
                )
            ).scalar()
        return int(value or 0)

    def new_generation(self, actor: str, reason: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(generations_t)
                .values(
                    namespace=self.namespace, actor=actor[:200], reason=reason[:200], at=utcnow()
                )
                .returning(generations_t.c.id)
            )
            return int(result.scalar_one())


def _applied(row: dict[str, Any]) -> AppliedConfig:
    return AppliedConfig(
        digest=row["digest"],
        version=row["version"],
        document=dict(row["document"]),
        source=row["source"],
        actor=row["actor"],
        applied_at=row["applied_at"],
    )
