"""Admission: check a request where it enters, then decide whether it may start.

Every field of a submit is checked here, before anything is stored. There are two ways to
say no:

* ``AdmissionRefused`` (raised; nothing is stored) when the request cannot be stored under
  its own identity: a malformed tenant, route, actor, request id or idempotency key
  (``invalid_request``, naming the field and its limit - an identity is never truncated),
  or a request id / idempotency key reused with another payload (``idempotency_conflict``,
  naming the fields that differ; ``submit`` raises it through ``runtime.new_runs``).
* a ``Refusal``, stored as a refused run under the request id, for everything else:
  ``unknown_tenant``, ``tenant_disabled``, ``unknown_route``, ``tenant_not_in_scope``,
  ``route_stopped``, ``invalid_priority``, ``invalid_execution_mode``,
  ``execution_mode_not_allowed``, ``invalid_input``, ``input_too_large``, ``queue_full``.
  A stored refusal is bounded (a long goal is cut, an oversized or invalid input is
  withheld; their size and SHA-256 are kept) and never occupies its request id: a retry
  with the same id is decided afresh.

Two requests are the same payload when their ``route``, ``goal``, ``input``, ``actor``,
``priority``, ``idempotency_key`` and ``execution_mode`` are equal as canonical JSON (sorted
keys, no spaces, UTF-8); ``request_digest`` holds one SHA-256 per field, stored on the run
row (``execution_mode`` only when a request names one: runs stored before the field existed
keep their digests).
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.bounds import BoundsError, check_json
from runtime.errors import AdmissionRefused, AgentRuntimeError

if TYPE_CHECKING:  # views import this module for ``bounded``/``shown``: no YAML loader for them
    from runtime.config import RouteConfig, RuntimeConfig

PRIORITIES = ("critical", "high", "normal", "low")
#: the route execution modes (``runtime.statuses.ExecutionMode``)
EXECUTION_MODES = ("sync", "async_job", "durable_workflow", "event_triggered")
#: tenant and route names (as the config spells them)
MAX_NAME_CHARS = 100
#: request ids, idempotency keys and actors
MAX_ID_CHARS = 200
MAX_GOAL_CHARS = 8000
#: a refused goal longer than MAX_GOAL_CHARS is stored cut to this (with size and digest)
REFUSED_GOAL_CHARS = 500
#: a refused request's input is stored only up to this size (and its route's limit)
KEEP_REFUSED_INPUT_BYTES = 16 * 1024
#: longest refusal detail stored (details quote paths and names out of the request)
MAX_DETAIL_CHARS = 1000

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
#: request ids and idempotency keys: printable ASCII without spaces (headers, UUIDs, ...)
_TOKEN = re.compile(r"[\x21-\x7e]+")
#: what a goal may not contain: control characters (but tab and newlines), unpaired
#: surrogates (not Unicode; no database stores them)
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

#: the request fields whose digests make a payload (request_id is the lookup key, not one)
DIGEST_FIELDS = (
    "route", "goal", "input", "actor", "priority", "idempotency_key", "execution_mode",
)  # fmt: skip
#: digest fields a request without a value leaves out (absent = not asked for)
OPTIONAL_DIGEST_FIELDS = ("execution_mode",)
#: the digest of a value that is not JSON: equal to nothing, itself included
UNCOMPARABLE = "-"

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlevel = 3


def shown(value: Any) -> str:
    """A bounded repr of an untrusted value, for an error message."""
    try:
        return _repr.repr(value)
    except Exception:  # a hostile __repr__
        return f"<{type(value).__name__}>"


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut (never silently)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True)
class Refusal:
    code: str
    detail: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Backpressure:
    """Queue depths at admission and what they mean for a new run."""

    tenant_queued: int
    route_queued: int
    estimated_wait_s: float


def queue_full(
    config: RuntimeConfig, tenant: str, route: str, pressure: Backpressure
) -> Refusal | None:
    """Over a tenant's or route's ``max_queued``: refuse (``queue_full`` with a retry-after)
    unless the route says to queue anyway (the caller then reports the estimated wait)."""
    route_cfg, tenant_cfg = config.routes[route], config.tenants[tenant]
    over = []
    if tenant_cfg.max_queued is not None and pressure.tenant_queued >= tenant_cfg.max_queued:
        over.append(f"tenant {tenant!r} has {pressure.tenant_queued} queued steps "
                    f"(max_queued {tenant_cfg.max_queued})")  # fmt: skip
    if route_cfg.max_queued is not None and pressure.route_queued >= route_cfg.max_queued:
        over.append(f"route {route!r} has {pressure.route_queued} queued steps "
                    f"(max_queued {route_cfg.max_queued})")  # fmt: skip
    if not over or route_cfg.on_queue_full == "queue":
        return None
    retry = max(1.0, round(pressure.estimated_wait_s, 1))
    return Refusal("queue_full", "; ".join(over) + f"; retry after {retry:g}s", retry)


# --- the request, checked where it enters ---------------------------------------------


@dataclass(frozen=True)
class _Rule:
    limit: int
    pattern: re.Pattern[str] | None
    allowed: str


_NAME_RULE = _Rule(MAX_NAME_CHARS, _NAME, "letters, digits, '_', '.' and '-'")
_TOKEN_RULE = _Rule(MAX_ID_CHARS, _TOKEN, "printable ASCII without spaces")
_IDENTITY: dict[str, _Rule] = {
    "tenant": _NAME_RULE,
    "route": _NAME_RULE,
    "actor": _Rule(MAX_ID_CHARS, None, "printable characters (no control characters)"),
    "request_id": _TOKEN_RULE,
    "idempotency_key": _TOKEN_RULE,
}


def identity_problem(field: str, value: Any) -> str | None:
    """Why ``value`` cannot be the request's ``field`` (None: it can). None values are
    the caller's business (request_id and idempotency_key are optional)."""
    rule = _IDENTITY[field]
    if not isinstance(value, str):
        return f"{field} must be a string (got {type(value).__name__})"
    if not value:
        return f"{field} must not be empty"
    if len(value) > rule.limit:
        return f"{field} is {len(value)} characters; at most {rule.limit}"
    ok = rule.pattern.fullmatch(value) if rule.pattern else value.isprintable()
    if not ok:
        return f"{field} may contain {rule.allowed} only (at most {rule.limit})"
    return None


@dataclass(frozen=True)
class AdmissionRequest:
    """A submit whose identity fields are known good; content is checked by ``decide``."""

    tenant: str
    route: str
    #: as given (``decide`` refuses a goal that is not a bounded string)
    goal: Any
    #: as given, ``{}`` for None
    input: Any
    actor: str
    request_id: str | None
    idempotency_key: str | None
    #: as given (``decide`` refuses one that is not a priority class)
    priority: Any
    #: as given; None: the route's own mode (``decide`` refuses one the route does not allow)
    execution_mode: Any
    #: canonical JSON of the input if it is a bounded JSON object, else None
    input_json: bytes | None
    #: why the input is not a bounded JSON object (None if it is)
    input_error: Refusal | None
    #: one SHA-256 per payload field (``DIGEST_FIELDS``)
    digest: dict[str, str]


def prepare(
    *,
    tenant: Any,
    route: Any,
    goal: Any,
    input: Any,
    actor: Any,
    request_id: Any,
    idempotency_key: Any,
    priority: Any,
    execution_mode: Any = None,
) -> AdmissionRequest:
    """Check the identity fields (``AdmissionRefused`` ``invalid_request`` naming every
    bad one), encode the input canonically, digest the payload. Reads nothing, writes
    nothing."""
    given = {"tenant": tenant, "route": route, "actor": actor}
    if request_id is not None:
        given["request_id"] = request_id
    if idempotency_key is not None:
        given["idempotency_key"] = idempotency_key
    problems = {f: p for f, v in given.items() if (p := identity_problem(f, v)) is not None}
    if problems:
        raise AdmissionRefused(
            "invalid_request", "; ".join(problems.values()), fields=tuple(problems)
        )
    run_input = {} if input is None else input
    input_json, input_error = encode_input(run_input)
    return AdmissionRequest(
        tenant=tenant,
        route=route,
        goal=goal,
        input=run_input,
        actor=actor,
        request_id=request_id,
        idempotency_key=idempotency_key,
        priority=priority,
        execution_mode=execution_mode,
        input_json=input_json,
        input_error=input_error,
        digest={
            "route": value_digest(route),
            "goal": value_digest(goal),
            "input": UNCOMPARABLE if input_json is None else sha256(input_json),
            "actor": value_digest(actor),
            "priority": value_digest(priority),
            "idempotency_key": value_digest(idempotency_key),
            **({} if execution_mode is None else {"execution_mode": value_digest(execution_mode)}),
        },
    )


def canonical_json(value: Any) -> bytes:
    """Canonical JSON of a checked value: sorted keys, no spaces, UTF-8."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value_digest(value: Any) -> str:
    """SHA-256 of a scalar's canonical JSON; ``UNCOMPARABLE`` for anything else."""
    if value is not None and not isinstance(value, str | int | float | bool):
        return UNCOMPARABLE
    try:
        return sha256(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except ValueError:  # NaN, an unpaired surrogate
        return UNCOMPARABLE


def encode_input(value: Any) -> tuple[bytes | None, Refusal | None]:
    """(canonical JSON, None) for a bounded JSON object; (None, why not) otherwise."""
    if not isinstance(value, dict):
        return None, Refusal(
            "invalid_input", f"input must be a JSON object (got {type(value).__name__})"
        )
    try:
        check_json(value, label="input")
    except BoundsError as exc:
        return None, Refusal("invalid_input", bounded(f"{exc.path or 'input'}: {exc.detail}"))
    try:
        return canonical_json(value), None
    except ValueError:  # UnicodeEncodeError
        return None, Refusal("invalid_input", "input: a string is not valid Unicode")


def differing_fields(stored: Any, digest: dict[str, str]) -> list[str]:
    """The payload fields in which a request differs from a stored run's digest."""
    if not isinstance(stored, dict):
        return [f for f in DIGEST_FIELDS if f in digest or f not in OPTIONAL_DIGEST_FIELDS]
    return [
        f for f in DIGEST_FIELDS if digest.get(f) == UNCOMPARABLE or stored.get(f) != digest.get(f)
    ]


def decide(config: RuntimeConfig, req: AdmissionRequest, *, route_stopped: bool) -> Refusal | None:
    """The refusal for a prepared request, or None. The proposer's own input checks come
    after (the caller asks it only about an input that passed these)."""
    tenant = config.tenants.get(req.tenant)
    if tenant is None:
        return Refusal("unknown_tenant", f"tenant {req.tenant!r} is not configured")
    if not tenant.enabled:
        return Refusal("tenant_disabled", f"tenant {req.tenant!r} is disabled")
    route = config.routes.get(req.route)
    if route is None:
        return Refusal("unknown_route", f"route {req.route!r} is not configured")
    if "*" not in route.tenants and req.tenant not in route.tenants:
        return Refusal(
            "tenant_not_in_scope", f"tenant {req.tenant!r} may not use route {req.route!r}"
        )
    if not route.enabled or route_stopped:
        return Refusal("route_stopped", f"route {req.route!r} is stopped")
    if req.priority is not None and (
        not isinstance(req.priority, str) or req.priority not in PRIORITIES
    ):
        return Refusal(
            "invalid_priority",
            f"priority {shown(req.priority)} is not one of {', '.join(PRIORITIES)}",
        )
    mode = mode_refusal(route, req.route, req.execution_mode)
    if mode is not None:
        return mode
    goal = goal_refusal(req.goal)
    if goal is not None:
        return goal
    if req.input_error is not None or req.input_json is None:
        return req.input_error or Refusal("invalid_input", "input is not a JSON object")
    if len(req.input_json) > route.max_input_bytes:
        return Refusal(
            "input_too_large",
            f"input is {len(req.input_json)} bytes; route {req.route!r} accepts "
            f"{route.max_input_bytes}",
        )
    return None


def mode_refusal(route: RouteConfig, name: str, mode: Any) -> Refusal | None:
    """A requested execution mode must be one the route allows (None: the route's own)."""
    if mode is None:
        return None
    if not isinstance(mode, str) or mode not in EXECUTION_MODES:
        return Refusal(
            "invalid_execution_mode",
            f"execution_mode {shown(mode)} is not one of {', '.join(EXECUTION_MODES)}",
        )
    if mode not in route.modes():
        return Refusal(
            "execution_mode_not_allowed",
            f"route {name!r} runs as {', '.join(route.modes())}; not {mode}",
        )
    return None


def execution_mode(route: RouteConfig | None, req: AdmissionRequest) -> str:
    """The mode a run of ``req`` records: the allowed one it asked for, else its route's."""
    if route is None:
        return "durable_workflow"
    mode = req.execution_mode
    return mode if isinstance(mode, str) and mode in route.modes() else route.execution_mode


def goal_refusal(goal: Any) -> Refusal | None:
    if not isinstance(goal, str):
        return Refusal("invalid_input", f"goal must be a string (got {type(goal).__name__})")
    if len(goal) > MAX_GOAL_CHARS:
        return Refusal(
            "input_too_large", f"goal is {len(goal)} characters; at most {MAX_GOAL_CHARS}"
        )
    bad = _BAD_TEXT.search(goal)
    if bad is not None:
        return Refusal(
            "invalid_input",
            f"goal has a control character or an unpaired surrogate at index {bad.start()}",
        )
    if not goal.strip():
        return Refusal("invalid_input", "goal must be a non-empty string")
    return None


# --- what a refused run keeps ----------------------------------------------------------


@dataclass(frozen=True)
class StoredContent:
    """What a run stores of its request's content."""

    goal: str
    input: Any
    #: the valid priority asked for (None: the route's)
    priority: str | None
    #: a refusal's record (None for an admitted run)
    output: dict[str, Any] | None


def stored_content(req: AdmissionRequest, refusal: Refusal | None, limit: int) -> StoredContent:
    """Nothing is cut silently: identities were checked whole, an admitted request is
    stored whole; a refused one keeps a long goal cut and an oversized (over ``limit`` or
    ``KEEP_REFUSED_INPUT_BYTES``) or invalid input withheld, their sizes and SHA-256 in its
    output next to the reason code and detail."""
    if refusal is not None:
        limit = min(limit, KEEP_REFUSED_INPUT_BYTES)
    goal, goal_note = goal_to_store(req.goal)
    run_input, input_note = input_to_store(req, limit)
    if refusal is None and (goal_note is not None or input_note is not None):
        raise AgentRuntimeError(  # decide() admits neither; never store an admitted run cut
            f"admitted request cannot be stored whole: goal {goal_note}, input {input_note}"
        )
    priority = (
        req.priority if isinstance(req.priority, str) and req.priority in PRIORITIES else None
    )
    output: dict[str, Any] | None = None
    if refusal is not None:
        output = {
            "refused": refusal.code,
            "detail": bounded(refusal.detail),
            "retry_after_s": refusal.retry_after_s,
        }
        if goal_note is not None:
            output["goal"] = goal_note
        if input_note is not None:
            output["input"] = input_note
    return StoredContent(goal, run_input, priority, output)


def goal_to_store(goal: Any) -> tuple[str, dict[str, Any] | None]:
    """The goal as a run stores it, and a note on what was withheld (None: kept whole).
    A goal within bounds is kept whole; a longer one is cut to ``REFUSED_GOAL_CHARS``
    (before any character no database stores) with its size and SHA-256 noted."""
    if not isinstance(goal, str):
        return "", {"withheld": f"not a string ({type(goal).__name__})"}
    bad = _BAD_TEXT.search(goal)
    if len(goal) <= MAX_GOAL_CHARS and bad is None:
        return goal, None
    data = goal.encode("utf-8", "surrogatepass")
    keep = min(REFUSED_GOAL_CHARS, bad.start() if bad is not None else len(goal))
    note = {"chars": len(goal), "bytes": len(data), "sha256": sha256(data), "stored_chars": keep}
    return goal[:keep], note


def input_to_store(req: AdmissionRequest, limit: int) -> tuple[Any, dict[str, Any] | None]:
    """The input as a run stores it (None if withheld) and a note on what was withheld."""
    if req.input_json is None:
        reason = req.input_error.detail if req.input_error else "not a JSON object"
        return None, {"withheld": reason}
    if len(req.input_json) > limit:
        return None, {"bytes": len(req.input_json), "sha256": sha256(req.input_json)}
    return req.input, None
