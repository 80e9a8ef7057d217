"""The ``event_sources:`` section of the deployment file: webhook sources that start runs.

Each source names the tenant and route its runs belong to, how its requests are signed
(``standard_webhooks`` or ``hmac_sha256``) and the environment variable holding the
secret (never the secret itself: the file is reviewed and versioned, the secret is not),
where the event id comes from, the ordering policy, the largest body accepted, and how an
event becomes a run's goal and input. Example::

    event_sources:
      shop:
        tenant: acme
        route: orders.triage
        signature: {scheme: standard_webhooks, secret_env: SHOP_WEBHOOK_SECRET}
        ordering: {policy: per_key, key_field: order.customer_id}
        goal: "Handle {source} event {event_id}"

The secrets are read from the environment by ``resolve_secrets`` where events are received
(``runtime.events``): a missing or unusable one is a ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime.errors import ConfigError

#: a source name is part of a run's request id (``event:<source>:<event id>``, 200 chars)
MAX_SOURCE_CHARS = 40
SOURCE_NAME = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{MAX_SOURCE_CHARS}}}$")
#: largest body any source may accept (a source's own ``max_body_bytes`` is below it)
MAX_BODY_BYTES = 1024 * 1024
#: placeholders a goal template may use: values the runtime derived, never event content
GOAL_FIELDS = ("source", "event_id", "key")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

#: an HTTP header name (RFC 9110 token)
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,100}$")]
#: a dotted path into the event's JSON object: ``order.customer_id``
FieldPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,100}(\.[A-Za-z0-9_\-]{1,100}){0,7}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SignatureConfig(_Strict):
    scheme: Literal["standard_webhooks", "hmac_sha256"]
    #: the environment variable holding the secret (``whsec_...`` for standard webhooks)
    secret_env: EnvName
    #: standard webhooks: how far ``webhook-timestamp`` may be from now (replays)
    tolerance_s: int = Field(default=300, ge=1, le=3600)
    #: hmac_sha256: the header carrying the hex HMAC-SHA256 of the raw body
    header: HeaderName | None = None
    #: hmac_sha256: text before the hex digest in the header (GitHub: ``sha256=``)
    prefix: str = Field(default="", max_length=20)

    @model_validator(mode="after")
    def _scheme_fields(self) -> SignatureConfig:
        if self.scheme == "hmac_sha256" and self.header is None:
            raise ValueError("hmac_sha256 needs 'header': the header carrying the signature")
        if self.scheme == "standard_webhooks" and (self.header or self.prefix):
            raise ValueError("standard_webhooks signs in its own headers: no 'header'/'prefix'")
        return self


class EventIdConfig(_Strict):
    """Where the event id is: a header, or a field of the JSON body (one of them)."""

    header: HeaderName | None = None
    field: FieldPath | None = None

    @model_validator(mode="after")
    def _one(self) -> EventIdConfig:
        if (self.header is None) == (self.field is None):
            raise ValueError("give exactly one of 'header' or 'field'")
        return self


class OrderingConfig(_Strict):
    #: none: events run as they come; per_key: events with the same key run one at a
    #: time, in arrival order
    policy: Literal["none", "per_key"] = "none"
    #: per_key: the dotted path of the key in the event's JSON body
    key_field: FieldPath | None = None

    @model_validator(mode="after")
    def _key_for_per_key(self) -> OrderingConfig:
        if self.policy == "per_key" and self.key_field is None:
            raise ValueError("per_key needs 'key_field': the JSON path of the ordering key")
        if self.policy == "none" and self.key_field is not None:
            raise ValueError("'key_field' is only used with policy: per_key")
        return self


class EventSourceConfig(_Strict):
    tenant: str = Field(min_length=1, max_length=100)
    route: str = Field(min_length=1, max_length=100)
    signature: SignatureConfig
    #: where the event id is; standard webhooks: ``webhook-id`` (the default there)
    event_id: EventIdConfig | None = None
    ordering: OrderingConfig = OrderingConfig()
    max_body_bytes: int = Field(default=64 * 1024, ge=1, le=MAX_BODY_BYTES)
    #: the run's goal; placeholders: {source}, {event_id}, {key}
    goal: str = Field(default="Handle {source} event {event_id}", min_length=1, max_length=2000)
    #: the run's input: ``body``, the event's JSON object itself, or ``envelope``,
    #: ``{"source", "event_id", "event": <the JSON body>}``
    input: Literal["body", "envelope"] = "envelope"
    priority: Literal["critical", "high", "normal", "low"] | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _checks(self) -> EventSourceConfig:
        if self.signature.scheme == "hmac_sha256" and self.event_id is None:
            raise ValueError("hmac_sha256 sources need 'event_id' (a header or a JSON field)")
        given = self.event_id.header if self.event_id is not None else "webhook-id"
        if self.signature.scheme == "standard_webhooks" and (given or "").lower() != "webhook-id":
            raise ValueError("standard_webhooks events are identified by webhook-id")
        unknown = [p for p in _PLACEHOLDER.findall(self.goal) if p not in GOAL_FIELDS]
        if unknown:
            raise ValueError(
                f"goal: unknown placeholder {{{unknown[0]}}} (use {', '.join(GOAL_FIELDS)})"
            )
        if "{key}" in self.goal and self.ordering.policy != "per_key":
            raise ValueError("goal: {key} needs ordering policy per_key")
        return self

    def id_header(self) -> str | None:
        if self.signature.scheme == "standard_webhooks":
            return "webhook-id"
        return self.event_id.header if self.event_id else None

    def goal_for(self, source: str, event_id: str, key: str | None) -> str:
        values = {"source": source, "event_id": event_id, "key": key or ""}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.goal)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_source_problems(data: Mapping[str, Any]) -> list[str]:
    """Names the event sources point at that do not exist (on the raw file)."""
    sources = data.get("event_sources")
    if not isinstance(sources, dict):
        return []
    tenants: dict[str, Any] = _dict(data.get("tenants"))
    routes: dict[str, Any] = _dict(data.get("routes"))
    problems: list[str] = []
    for name, source in sources.items():
        key = f"event_sources.{name}"
        if not isinstance(name, str) or not SOURCE_NAME.match(name):
            problems.append(
                f"{key}: names may use letters, digits, '_', '.' and '-' only "
                f"(at most {MAX_SOURCE_CHARS})"
            )
        if not isinstance(source, dict):
            continue
        tenant, route = source.get("tenant"), source.get("route")
        if isinstance(tenant, str) and tenant not in tenants:
            problems.append(f"{key}.tenant: unknown tenant {tenant!r}")
        if isinstance(route, str) and route not in routes:
            problems.append(f"{key}.route: unknown route {route!r}")
        elif isinstance(route, str) and isinstance(tenant, str) and tenant in tenants:
            allowed = routes[route].get("tenants", ["*"]) if isinstance(routes[route], dict) else []
            if isinstance(allowed, list) and "*" not in allowed and tenant not in allowed:
                problems.append(f"{key}.route: tenant {tenant!r} may not use route {route!r}")
    return problems


@dataclass(frozen=True)
class SourceSecret:
    scheme: str
    #: the key bytes: HMAC key (hmac_sha256) or the decoded ``whsec_`` key
    key: bytes

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"SourceSecret({self.scheme}, <{len(self.key)} bytes>)"


def resolve_secrets(
    sources: Mapping[str, EventSourceConfig], environ: Mapping[str, str] | None = None
) -> dict[str, SourceSecret]:
    """Every enabled source's secret, read from its environment variable; a
    ``ConfigError`` naming every variable that is missing, empty or unusable (never its
    value). Fail closed: no source is served with a missing secret."""
    env = os.environ if environ is None else environ
    found: dict[str, SourceSecret] = {}
    problems: list[str] = []
    for name, source in sources.items():
        if not source.enabled:
            continue
        var = source.signature.secret_env
        where = f"event_sources.{name}.signature.secret_env"
        raw = env.get(var, "")
        if not raw:
            problems.append(f"{where}: environment variable {var} is not set (or empty)")
            continue
        try:
            found[name] = SourceSecret(source.signature.scheme, _key(source.signature.scheme, raw))
        except ValueError as exc:
            problems.append(f"{where}: environment variable {var}: {exc}")
    if problems:
        raise ConfigError("event_sources (environment)", problems)
    return found


def _key(scheme: str, raw: str) -> bytes:
    if scheme == "hmac_sha256":
        return raw.encode("utf-8")
    from standardwebhooks.webhooks import Webhook  # the scheme's own secret format

    try:
        return Webhook(raw)._whsecret
    except Exception:  # binascii.Error, EmptyWebhookSecretError: the message has no secret
        raise ValueError("not a standard webhooks secret (whsec_ + base64)") from None
