"""Error reporting to Sentry, when ``AGENTRT_SENTRY_DSN`` is set; nothing at all otherwise.

An event leaves the process only through ``scrub_event`` (``before_send`` and
``before_send_transaction``), and a breadcrumb only through ``scrub_breadcrumb``:

* no personal data, no local variables, no request bodies (SDK options);
* a request keeps its method, URL and a few harmless headers: never Authorization,
  Cookie, X-Api-Key, nor its query string, body or environment;
* a key that names a payload (tool arguments, proposals, prompts, messages, tool results,
  Celery task args and kwargs, log parameters, frame variables) loses its value;
* a key that looks secret (``runtime.tracing.redact``) loses its value, and so does any
  string that looks like a credential (``sk-...``, ``Bearer ...``, an agentrt API key);
* the values of the current call's secret arguments (``runtime.report_context``) are cut
  out of every string, exception messages and log lines included.

A scrubber that fails drops the event: an event that could not be checked is not sent.

The step and the API tag events with the tenant, route, run, trace and step ids
(``report_context.step_scope`` and the ids the step loop notes; ``tag_request``); dead
letters are reported as events of their own (``report_dead_letter``), fingerprinted by
queue and class.

The Celery and FastAPI integrations are handed in by the entry points (``tasks.app``,
``runtime.api.app``): this module imports neither framework.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import sentry_sdk
from sentry_sdk.integrations import Integration

from runtime import report_context
from runtime.settings import Settings
from runtime.tracing import REDACTED, redact, secret_name

log = logging.getLogger("agentrt.error_reporting")

#: keys whose values are payloads (a model's or a tool's), never sent whatever they hold
PAYLOAD_KEYS = frozenset(
    {
        "args",
        "arguments",
        "kwargs",
        "input",
        "script",
        "proposal",
        "proposals",
        "pending_proposal",
        "plan",
        "prompt",
        "prompts",
        "messages",
        "completion",
        "choices",
        "tool_result",
        "tool_results",
        "result",
        "output",
        "observation",
        "body",
        "request_body",
        "params",
        "vars",
        "cookies",
        "env",
        "query_string",
        "sys.argv",
    }
)
REMOVED = "[removed]"
#: the request headers an event keeps (lower case); every other header is dropped
KEPT_HEADERS = frozenset(
    {"accept", "content-length", "content-type", "host", "user-agent", "x-request-id"}
)
#: an agentrt API key (``runtime.api_keys``) quoted in a message or a URL
_API_KEY = re.compile(r"agrt_[0-9a-f]{12}_[A-Za-z0-9_\-]{20,100}")
#: deepest nesting the scrubber walks; anything deeper is removed, not sent unchecked
MAX_DEPTH = 40


def init_sentry(settings: Settings, *, integrations: Sequence[Integration] = ()) -> bool:
    """Start Sentry in this process if a DSN is set (once: later calls do nothing).
    Returns whether Sentry reports from this process."""
    if settings.sentry_dsn is None:
        return False
    if sentry_sdk.get_client().is_active():
        return True
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        attach_stacktrace=False,
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        integrations=list(integrations),
        # only the integrations handed in, plus the SDK's defaults (logging, threads,
        # excepthook...): the auto-enabled Redis and SQLAlchemy ones would send every
        # command and Lua script as breadcrumbs, noise that may quote what a run stored
        auto_enabling_integrations=False,
    )
    log.info("Sentry error reporting on (environment %s)", settings.sentry_environment or "-")
    return True


def active() -> bool:
    return sentry_sdk.get_client().is_active()


# --- scrubbing ------------------------------------------------------------------------
def scrub_event(event: Any, hint: Any) -> Any:
    """The event as it may leave the process, or None (dropped) if it cannot be checked."""
    try:
        return _scrub_event(event)
    except Exception:  # fail closed: never send what the scrubber could not check
        log.warning("an error report was dropped: it could not be scrubbed", exc_info=True)
        return None


def scrub_breadcrumb(crumb: Any, hint: Any) -> Any:
    try:
        return _scrub(crumb, report_context.secrets(), 0)
    except Exception:
        return None


def _scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    request = event.get("request")
    if isinstance(request, dict):
        event["request"] = _scrub_request(request)
    tags = event.setdefault("tags", {})
    if isinstance(tags, dict):
        for name, value in report_context.tags().items():
            tags.setdefault(name, value)
    scrubbed: dict[str, Any] = _scrub(event, report_context.secrets(), 0)
    return scrubbed


def _scrub_request(request: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {k: request[k] for k in ("method", "url") if k in request}
    headers = request.get("headers")
    if isinstance(headers, Mapping):
        kept["headers"] = {
            k: v for k, v in headers.items() if isinstance(k, str) and k.lower() in KEPT_HEADERS
        }
    return kept


def _scrub(value: Any, secrets: tuple[str, ...], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return REMOVED
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and k.lower() in PAYLOAD_KEYS:
                out[k] = REMOVED
            elif isinstance(k, str) and secret_name(k):
                out[k] = REDACTED
            else:
                out[k] = _scrub(v, secrets, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets, depth + 1) for v in value]
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    return value


def _scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _API_KEY.sub(REDACTED, text)
    scrubbed = redact(text)
    return scrubbed if isinstance(scrubbed, str) else REDACTED


# --- tags -----------------------------------------------------------------------------
def tag_request(**tags: str | None) -> None:
    """Tag the current HTTP request's reports (its isolation scope, one per request)."""
    if not active():
        return
    scope = sentry_sdk.get_isolation_scope()
    for name, value in tags.items():
        if value:
            scope.set_tag(name, value)


# --- dead letters ---------------------------------------------------------------------
def report_dead_letter(entry: Mapping[str, Any]) -> None:
    """A new dead-letter entry as an error event: its class and queue as tags and as the
    fingerprint (one issue per queue and class), its run's ids as tags. Its error message
    is not sent (it may quote a secret the runtime could not know); the entry id leads an
    operator to it (``agentrt dlq show``)."""
    if not active():
        return
    queue, dl_class = str(entry.get("queue") or "-"), str(entry.get("dl_class") or "-")
    error_type = str(entry.get("error_type") or "-")
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = [queue, dl_class]
        scope.set_tag("dead_letter_class", dl_class)
        scope.set_tag("queue", queue)
        scope.set_tag("error_type", error_type)
        ids = {
            "tenant": entry.get("tenant_id"),
            "route": entry.get("route"),
            "run_id": entry.get("run_id"),
            "trace_id": entry.get("trace_id"),
            "step": entry.get("step_no"),
        }
        for name, value in ids.items():
            if value is not None:
                scope.set_tag(name, str(value))
        scope.set_context(
            "dead_letter", {"entry_id": entry.get("id"), "task": entry.get("task_name")}
        )
        sentry_sdk.capture_message(
            f"dead letter: {dl_class} ({error_type}) on queue {queue}", level="error"
        )
