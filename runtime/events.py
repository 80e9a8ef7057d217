"""Event-triggered runs: a webhook request becomes (at most) one run.

``EventIntake.accept(source, headers, body)`` checks, in this order and before anything is
stored: the source is configured and enabled (``event:unknown_source``), the body is within
its size (``event:too_large``), the signature (``event:bad_signature``), the body is a
bounded JSON object (``event:invalid_body``), the event id (``event:no_event_id``) and,
for a ``per_key`` source, the ordering key (``event:no_key``). It returns an ``Incoming``
event: what the façade submits (``RuntimeService.receive_event``), with the request id
``event:<source>:<event id>`` and the actor ``event:<source>``.

Dedupe is on (source, event id): ``earlier_run`` finds the run a stored event started
(the same body: that run; another body: ``event:conflict``). The event record is
inserted in the transaction of its run, so two receivers racing with one event meet at
the run's unique request id: one run, one record. A refused run (admission said no) stores
no record: like a refused submit, it holds nothing, and the sender's retry is decided
afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runtime.admission import AdmissionRequest, canonical_json, prepare
from runtime.bounds import BoundsError, check_json
from runtime.errors import EventRejected
from runtime.event_config import EventSourceConfig, SourceSecret, resolve_secrets
from runtime.event_ordering import EVENT_ACTOR_PREFIX
from runtime.event_signatures import verify
from runtime.store.events import EventStore
from runtime.store.tables import event_records_t

#: the request id ``event:<source>:<event id>`` fits the runs' 200 characters
MAX_EVENT_ID_CHARS = 150
_EVENT_ID = re.compile(r"[\x21-\x7e]+")
#: a string key longer than this is refused (it is shown in goals and errors)
MAX_KEY_CHARS = 200
#: header values are bounded where they enter (servers bound them too, loosely)
MAX_HEADER_CHARS = 8192


@dataclass(frozen=True)
class Incoming:
    """A verified, parsed event: what its run is submitted with."""

    source: str
    config: EventSourceConfig
    event_id: str
    body_sha256: str
    #: SHA-256 of the ordering key's canonical JSON (per_key sources), else None
    order_key: str | None
    goal: str
    input: dict[str, Any]

    @property
    def request_id(self) -> str:
        return f"event:{self.source}:{self.event_id}"

    @property
    def actor(self) -> str:
        return f"{EVENT_ACTOR_PREFIX}{self.source}"


class EventIntake:
    def __init__(
        self,
        *,
        sources: Mapping[str, EventSourceConfig],
        store: EventStore,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.sources = sources
        self.store = store
        self._environ = environ
        self._secrets: dict[str, SourceSecret] | None = None

    def require_secrets(self) -> None:
        """Read every enabled source's secret now: ``ConfigError`` naming each missing or
        unusable variable. A process that receives events calls it at start-up."""
        if self._secrets is None:
            self._secrets = resolve_secrets(self.sources, self._environ)

    def accept(self, source: str, headers: Mapping[str, str], body: bytes) -> Incoming:
        """The event, verified and parsed; ``EventRejected`` (nothing stored) otherwise."""
        cfg = self.sources.get(source)
        if cfg is None or not cfg.enabled:
            raise EventRejected("event:unknown_source", source, "no such event source")
        if len(body) > cfg.max_body_bytes:
            raise EventRejected(
                "event:too_large", source,
                f"body is {len(body)} bytes; the source accepts {cfg.max_body_bytes}",
            )  # fmt: skip
        self.require_secrets()  # fail closed: no secret, no event
        assert self._secrets is not None
        lowered = {k.lower(): v for k, v in headers.items() if len(v) <= MAX_HEADER_CHARS}
        verify(source, cfg.signature, self._secrets[source], lowered, body)
        event = _json_object(source, body)
        event_id = _event_id(source, cfg, lowered, event)
        key_value = _key(source, cfg, event)
        order_key = None if key_value is None else hashlib.sha256(
            canonical_json(key_value)).hexdigest()  # fmt: skip
        run_input = (
            event if cfg.input == "body"
            else {"source": source, "event_id": event_id, "event": event}
        )  # fmt: skip
        return Incoming(
            source=source,
            config=cfg,
            event_id=event_id,
            body_sha256=hashlib.sha256(body).hexdigest(),
            order_key=order_key,
            goal=cfg.goal_for(source, event_id, None if key_value is None else str(key_value)),
            input=run_input,
        )

    def earlier_run(self, event: Incoming) -> str | None:
        """The run an earlier delivery of this event started (None: first delivery);
        ``EventRejected`` (``event:conflict``) if that delivery had another body."""
        found = self.store.find(event.source, event.event_id)
        if found is None:
            return None
        if found["tenant_id"] != event.config.tenant:
            # the source was moved to another tenant since: its old runs are not theirs
            raise conflict(event, None, "was received before for another tenant")
        if found["body_sha256"] != event.body_sha256:
            raise conflict(event, str(found["run_id"]))
        return str(found["run_id"])

    def record_rows(self, event: Incoming, run: Mapping[str, Any]) -> list[tuple[Any, Any]]:
        """The event record inserted with ``run`` (in its transaction)."""
        received: datetime = run["created_at"]
        row = self.store.record(
            source=event.source,
            event_id=event.event_id,
            tenant_id=str(run["tenant_id"]),
            run_id=str(run["run_id"]),
            body_sha256=event.body_sha256,
            order_key=event.order_key,
            received_at=received,
        )
        return [(event_records_t, row)]


def event_request(event: Incoming) -> AdmissionRequest:
    """The submit an event makes: its source's tenant and route, request id
    ``event:<source>:<event id>``, actor ``event:<source>``."""
    cfg = event.config
    return prepare(
        tenant=cfg.tenant,
        route=cfg.route,
        goal=event.goal,
        input=event.input,
        actor=event.actor,
        request_id=event.request_id,
        idempotency_key=None,
        priority=cfg.priority,
    )


def conflict(
    event: Incoming, run_id: str | None, why: str = "was received before with another body"
) -> EventRejected:
    return EventRejected(
        "event:conflict", event.source, f"event id {event.event_id!r} {why}", run_id=run_id
    )


def _json_object(source: str, body: bytes) -> dict[str, Any]:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(body.decode("utf-8"), parse_constant=no_constant)
        check_json(value, label="body")
    except UnicodeDecodeError:
        raise EventRejected("event:invalid_body", source, "body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deep"
        raise EventRejected("event:invalid_body", source, f"body is not JSON: {detail}") from None
    except BoundsError as exc:
        raise EventRejected("event:invalid_body", source, str(exc)[:300]) from None
    if not isinstance(value, dict):
        raise EventRejected(
            "event:invalid_body", source, f"body must be a JSON object (got {type(value).__name__})"
        )
    return value


def _lookup(event: Mapping[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _event_id(
    source: str, cfg: EventSourceConfig, headers: Mapping[str, str], event: Mapping[str, Any]
) -> str:
    header = cfg.id_header()
    if header is not None:
        raw: Any = headers.get(header.lower())
        where = f"header {header}"
    else:
        assert cfg.event_id is not None and cfg.event_id.field is not None
        raw = _lookup(event, cfg.event_id.field)
        where = f"field {cfg.event_id.field}"
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw:
        raise EventRejected("event:no_event_id", source, f"no event id in {where}")
    if len(raw) > MAX_EVENT_ID_CHARS or not _EVENT_ID.fullmatch(raw):
        raise EventRejected(
            "event:no_event_id", source,
            f"the event id in {where} must be printable ASCII without spaces, "
            f"1..{MAX_EVENT_ID_CHARS} characters",
        )  # fmt: skip
    return raw


def _key(source: str, cfg: EventSourceConfig, event: Mapping[str, Any]) -> str | int | None:
    path = cfg.ordering.key_field
    if cfg.ordering.policy != "per_key" or path is None:
        return None
    value = _lookup(event, path)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventRejected(
            "event:no_key", source, f"field {path} must be a string or an integer (the key)"
        )
    if isinstance(value, str) and not 0 < len(value) <= MAX_KEY_CHARS:
        raise EventRejected(
            "event:no_key", source, f"field {path} must be 1..{MAX_KEY_CHARS} characters"
        )
    return value
