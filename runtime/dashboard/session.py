"""The dashboard's session: an HttpOnly, SameSite=Strict cookie holding a signed token,
never the key. The token is ``<key prefix>.<issued unix time>.<HMAC>``, the HMAC keyed by
the SHA-256 the store keeps of the key's secret: only this server can mint one, a revoked
or expired key ends its sessions at the next request, and a stolen cookie is no API key.
Every POST carries a CSRF token derived from the session (HMAC again) in a hidden field."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from runtime.api_keys import ApiKeys, Principal
from runtime.errors import ApiKeyRejected

COOKIE = "agentrt_session"
#: the pre-login cookie the login form's CSRF token is checked against
LOGIN_COOKIE = "agentrt_login"
#: how long a session lives (the key's own expiry and revocation apply too)
MAX_AGE_S = 8 * 3600
_TOKEN = re.compile(r"([0-9a-f]{12})\.([0-9]{1,12})\.([0-9a-f]{64})")
_KEY = re.compile(r"agrt_([0-9a-f]{12})_")


def _sign(secret_digest: str, message: str) -> str:
    return hmac.new(secret_digest.encode(), message.encode(), hashlib.sha256).hexdigest()


def _prefix(api_key: str) -> str:
    matched = _KEY.match(api_key)
    if matched is None:
        raise ApiKeyRejected("malformed")
    return matched.group(1)


def open_session(keys: ApiKeys, api_key: str, now: float | None = None) -> tuple[str, Principal]:
    """A session token for a presented key (``ApiKeyRejected`` if it cannot log in)."""
    principal = keys.authenticate(api_key)
    prefix = _prefix(api_key)
    issued = str(int(now if now is not None else time.time()))
    stored = keys.store.by_prefix(prefix)
    assert stored is not None  # authenticate just read it
    token = f"{prefix}.{issued}.{_sign(stored['secret_hash'], f'{prefix}.{issued}')}"
    return token, principal


def principal_of(keys: ApiKeys, token: str | None, now: float | None = None) -> Principal:
    """Who a session token is (``ApiKeyRejected`` when missing, forged, old, or its key is
    revoked or expired)."""
    matched = _TOKEN.fullmatch(token or "")
    if matched is None:
        raise ApiKeyRejected("missing" if not token else "malformed")
    prefix, issued, signature = matched.groups()
    age = (now if now is not None else time.time()) - int(issued)
    if not 0 <= age <= MAX_AGE_S:
        raise ApiKeyRejected("expired")
    return keys.by_proof(
        prefix,
        lambda stored: hmac.compare_digest(_sign(stored, f"{prefix}.{issued}"), signature),
    )


def csrf_token(token: str) -> str:
    """The CSRF token of a session: bound to it, useless without it."""
    return hashlib.sha256(f"csrf|{token}".encode()).hexdigest()


def csrf_ok(token: str | None, presented: str | None) -> bool:
    if not token or not presented:
        return False
    return hmac.compare_digest(csrf_token(token), presented)


def login_nonce() -> str:
    return secrets.token_urlsafe(24)


def hmac_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
