"""API keys of the HTTP API: per tenant, scoped, optionally expiring, revocable.

A key reads ``agrt_<prefix>_<secret>``: the prefix (12 hex characters) is kept in clear to
find the key; the secret (256 random bits) is shown once, at creation, and only its SHA-256
is stored. A high-entropy secret needs no slow hash: nobody can guess one from its digest.
The presented secret's digest is compared in constant time.

Tenancy: a key belongs to one tenant, and everything it reads or writes is scoped to it.
The one exception is a key of tenant ``*`` (``CROSS_TENANT``), which only an ``ops:admin``
key may be, for operators: it sees every tenant. Every request reads the key's row, so a
revoked or expired key fails on its very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from runtime.admission import identity_problem
from runtime.errors import ApiKeyNotFound, ApiKeyRejected, InvalidRequest, ScopeMissing
from runtime.store.api_keys import ApiKeyStore
from runtime.store.db import utcnow

SCOPES = (
    "runs:submit",
    "runs:read",
    "runs:cancel",
    "approvals:decide",
    "dlq:operate",
    "ops:admin",
)
ADMIN = "ops:admin"
#: the tenant of a cross-tenant key (ops:admin only)
CROSS_TENANT = "*"
KEY_PREFIX = "agrt"
#: the longest key we try to parse: longer is malformed before any look-up
MAX_KEY_CHARS = 200
#: the longest a key may live (and the longest expiry accepted)
MAX_TTL = timedelta(days=3650)
MAX_NAME_CHARS = 100
_PREFIX = re.compile(r"[0-9a-f]{12}")
_KEY = re.compile(r"agrt_([0-9a-f]{12})_([A-Za-z0-9_\-]{20,100})")
_NAME = re.compile(r"[A-Za-z0-9 _.:@\-]+")


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key, its tenant (None: every tenant) and its scopes."""

    key_id: str
    tenant: str | None
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"

    def require(self, scope: str) -> None:
        """``ScopeMissing`` unless the key has ``scope`` (``ops:admin`` has them all)."""
        if scope not in self.scopes and ADMIN not in self.scopes:
            raise ScopeMissing(scope)


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``secret`` is the whole key, shown once and stored nowhere."""

    key_id: str
    secret: str
    record: dict[str, Any]


def key_parts(presented: str | None) -> tuple[str, str]:
    """(prefix, secret) of a presented key, or ``ApiKeyRejected`` (``missing``,
    ``malformed``): no I/O, so a caller may check this much before anything else."""
    if not presented:
        raise ApiKeyRejected("missing")
    matched = _KEY.fullmatch(presented) if len(presented) <= MAX_KEY_CHARS else None
    if matched is None:
        raise ApiKeyRejected("malformed")
    prefix, secret = matched.groups()
    return prefix, secret


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def public(row: dict[str, Any]) -> dict[str, Any]:
    """What a key's listing shows: never its hash (there is no secret to show)."""
    return {k: v for k, v in row.items() if k != "secret_hash"}


def check_scopes(tenant: str, scopes: list[str]) -> list[str]:
    if not scopes:
        raise InvalidRequest(("scopes",), f"give at least one scope of {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidRequest(
            ("scopes",), f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}"
        )
    if tenant == CROSS_TENANT and ADMIN not in scopes:
        raise InvalidRequest(("tenant",), f"tenant '*' (every tenant) needs the {ADMIN} scope")
    return sorted(set(scopes), key=SCOPES.index)


class ApiKeys:
    def __init__(self, *, store: ApiKeyStore) -> None:
        self.store = store

    def create(
        self,
        tenant: str,
        scopes: list[str],
        *,
        actor: str,
        name: str | None = None,
        expires_in: timedelta | None = None,
        known_tenants: set[str] | None = None,
    ) -> IssuedKey:
        """A new key for ``tenant`` (``*``: every tenant, ops:admin only); checked before
        anything is stored (``InvalidRequest`` naming the field)."""
        if tenant != CROSS_TENANT:
            problem = identity_problem("tenant", tenant)
            if problem is not None:
                raise InvalidRequest(("tenant",), problem)
            if known_tenants is not None and tenant not in known_tenants:
                known = ", ".join(sorted(known_tenants))
                raise InvalidRequest(
                    ("tenant",), f"tenant {tenant!r} is not configured (known: {known})"
                )
        chosen = check_scopes(tenant, scopes)
        if name is not None and (len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name)):
            raise InvalidRequest(
                ("name",), f"name: letters, digits, space and _.:@- only, 1..{MAX_NAME_CHARS}"
            )
        if expires_in is not None and not timedelta(0) < expires_in <= MAX_TTL:
            raise InvalidRequest(
                ("expires_in",), f"expiry must be after now, at most {MAX_TTL.days}d"
            )
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = utcnow()
        key_id = f"k{secrets.token_hex(8)}"
        row: dict[str, Any] = {
            "key_id": key_id,
            "prefix": prefix,
            "tenant_id": tenant,
            "name": name or "",
            "secret_hash": digest(secret),
            "scopes": chosen,
            "created_at": now,
            "created_by": actor[:200],
            "expires_at": now + expires_in if expires_in is not None else None,
            "revoked_at": None,
            "revoked_by": None,
        }
        self.store.insert(row)
        return IssuedKey(key_id, f"{KEY_PREFIX}_{prefix}_{secret}", public(row))

    def authenticate(self, presented: str | None, now: datetime | None = None) -> Principal:
        """The principal of a presented key, or ``ApiKeyRejected`` with the reason code."""
        prefix, secret = key_parts(presented)
        presented_hash = digest(secret)
        return self.by_proof(
            prefix, lambda stored: hmac.compare_digest(presented_hash, stored), now
        )

    def by_proof(
        self, prefix: str, proof: Callable[[str], bool], now: datetime | None = None
    ) -> Principal:
        """The principal of the key ``prefix`` names, if ``proof`` (given the stored
        secret's digest) holds: a presented key, or a session token the dashboard signed
        with that digest. Revoked and expired keys are refused here, on every request."""
        row = self.store.by_prefix(prefix) if _PREFIX.fullmatch(prefix) else None
        stored_hash = row["secret_hash"] if row else "0" * 64
        if not proof(stored_hash) or row is None:
            raise ApiKeyRejected("unknown")
        if row["revoked_at"] is not None:
            raise ApiKeyRejected("revoked")
        expires = row["expires_at"]
        if expires is not None and _aware(expires) <= (now or utcnow()):
            raise ApiKeyRejected("expired")
        tenant = row["tenant_id"]
        return Principal(
            key_id=row["key_id"],
            tenant=None if tenant == CROSS_TENANT else tenant,
            scopes=frozenset(row["scopes"] or ()),
        )

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [public(r) for r in self.store.list(tenant)]

    def revoke(self, key_id: str, actor: str) -> dict[str, Any]:
        """Revoke a key (again: a no-op); ``ApiKeyNotFound`` for an unknown id."""
        if self.store.get(key_id) is None:
            raise ApiKeyNotFound(key_id)
        self.store.revoke(key_id, actor[:200], utcnow())
        row = self.store.get(key_id)
        assert row is not None
        return public(row)


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive UTC times."""
    from datetime import UTC

    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
