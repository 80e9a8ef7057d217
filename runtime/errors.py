"""Every error the runtime raises, under one root, defined here and nowhere else
(``tests/test_errors.py`` checks it). A module that used to define one re-exports it.

* AgentRuntimeError
  x ConfigError                (path, problems): a config file is missing or invalid
    - ConfigTooDeep            (mark): YAML nested too deep; config_loader turns it into
                               a ConfigError naming the line
  x SettingsError              an environment setting is unusable (e.g. an evicting Redis)
    - SchemaOutOfDate          (revision, head): the database's schema is older than the code
  x BoundsError                (code, path, detail): a value is not bounded JSON
  x AdmissionRefused           (code, detail, fields): submit() refused a request it could not
                               store (a malformed identity, an idempotency conflict)
  x InvalidRequest             (fields, detail): an argument of an operation is malformed
  x EventRejected              (code, source, detail): a webhook event was not accepted
                               (``event:bad_signature``, ``event:unknown_source``, ...);
                               nothing of it was stored
  x RunNotFound                (run_id)
    - ApprovalNotFound         (approval_id): no such approval (or another tenant's)
  x WaitTimeout                (run_id, timeout, status): wait() gave up; the run goes on
  x DeadLetterNotFound         (entry_id)
  x ApiKeyRejected             (reason): a presented API key is missing, malformed,
                               unknown, revoked or expired (the HTTP API's 401)
  x ScopeMissing               (scope): the API key lacks the scope an operation needs
  x ApiKeyNotFound             (key_id): no API key with this id
  x RequestTooLarge            (limit): an HTTP request body is over the API's limit
  x StaleWrite                 (run_id): a conditional update lost to another writer
  x InvalidTransition          (run_id, from_status, to_status)
  x ApprovalClosed             (approval_id, status, detail): decided, expired or spent
                               already, or its run no longer waits for it
  x ApprovalForbidden          (approval_id, actor, detail): this actor may not decide it
  x ToolError
    - ToolDefinitionError      a tool module declares a tool wrongly
    - ToolExecutionError       (message, code): raised by a tool for a clean, expected failure
    - ToolTimeout              (tool, timeout_s)
    - ToolOutputNotStorable    a tool returned what a record cannot hold (not JSON, too big)
  x ProposerError              the proposer could not produce a proposal (HTTP error, bad reply)
  x BudgetError
    - BudgetExhausted          (scope, dimension)
  x StateUnknown               (what): Redis lost its state; nothing runs until recovery
  x RecoveryError              rebuilding Redis state from SQL cannot go on
  x ReleaseError               (detail): a release operation is refused (unknown route or
                               release, no canary to promote, ...); nothing was changed
    - GateFailed               (route, release, summary): promote's gate did not pass
  x DemoError                  the demo could not run (workers did not start, ...)
  x EvalError                  an eval could not be captured or replayed (unusable run,
                               replay that left the process, missing releases module)
    - EvalFixtureError         (path, problems): an eval fixture file is unreadable or invalid
  x StepHandled                the step task ends in FAILURE for a step the runtime has
                               handled already (shown by Flower; task_failure skips it)
    - StepFailed               (run_id, step, stop_reason, failure_class): the runtime ended
                               the step's run failed
      - StepDeadLettered       the step's run went to the dead-letter queue
    - MessagePoisoned          (task_id, error_type, error, entry_id): the message was no
                               valid step; kept in the dead-letter queue, never run
  x StepRetrying               (run_id, step, outcome, next_step, countdown_s): the cause of
                               the Retry a step task raises when the runtime retries the call
  x ScriptsLost                Redis lost its Lua scripts mid-batch    } also
  x BrokerConnectionClosed     a broker channel outlived its connection } redis.ConnectionError

``ScriptsLost`` and ``BrokerConnectionClosed`` are also ``redis.ConnectionError``: callers
(the step task's retry, Celery's consumer) handle them as the connection errors they are.
They are built on first use, so that importing this module never imports redis (read-only
CLI commands must not load it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class AgentRuntimeError(Exception):
    """Root of every error agentrt raises on purpose."""


class ConfigError(AgentRuntimeError):
    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {path}:\n{lines}")


class ConfigTooDeep(ConfigError):
    """A YAML document nests deeper than the loader allows (``mark``: where, a yaml Mark);
    ``config_loader.parse_yaml`` reports it as a ConfigError on the file."""

    def __init__(self, mark: Any) -> None:
        self.mark = mark
        Exception.__init__(self)


class SettingsError(AgentRuntimeError):
    pass


class SchemaOutOfDate(SettingsError):
    """The database's schema is older than this code needs (or predates migrations):
    ``agentrt db upgrade`` brings it to ``head``. ``revision`` is where it is (None: no
    version recorded)."""

    def __init__(self, revision: str | None, head: str, detail: str) -> None:
        self.revision = revision
        self.head = head
        super().__init__(detail)


class BoundsError(AgentRuntimeError):
    """A value is not bounded JSON. ``code`` is the reason code, ``path`` where it failed."""

    def __init__(self, code: str, path: str, detail: str) -> None:
        self.code = code
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}" if path else detail)


class AdmissionRefused(AgentRuntimeError):
    def __init__(
        self,
        code: str,
        detail: str,
        run_id: str | None = None,
        fields: tuple[str, ...] = (),
    ) -> None:
        self.code = code
        self.detail = detail
        self.run_id = run_id
        #: the request fields the refusal is about (e.g. those that differ in a conflict)
        self.fields = fields
        super().__init__(f"refused:{code}: {detail}")


class InvalidRequest(AgentRuntimeError):
    """An argument of an operation (other than submit, which refuses) is malformed."""

    def __init__(self, fields: tuple[str, ...], detail: str) -> None:
        self.fields = fields
        self.detail = detail
        super().__init__(f"invalid request: {detail}")


class UnknownLeverTarget(InvalidRequest):
    """An operator lever named a tool, route, tenant or model the config lacks."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        shown = ", ".join(sorted(known)[:30]) or "none"
        super().__init__((kind,), f"unknown {kind} {name!r} (known: {shown})")


class EventRejected(AgentRuntimeError):
    """An event (``runtime.events``) was not accepted; nothing of it was stored. ``code``
    is the reason code, ``event:<what>``: ``bad_signature``, ``unknown_source``,
    ``too_large``, ``invalid_body``, ``no_event_id``, ``no_key``, ``conflict`` (the event
    id names an earlier event with another body; ``run_id`` is that event's run),
    ``refused`` (admission refused the run it would start; ``run_id`` is the refused run)."""

    def __init__(self, code: str, source: str, detail: str, run_id: str | None = None) -> None:
        self.code = code
        self.source = source
        self.detail = detail
        self.run_id = run_id
        super().__init__(f"{code}: source {source!r}: {detail}")


class RunNotFound(AgentRuntimeError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class ApprovalNotFound(RunNotFound):
    """No approval with this id - or one of another tenant's runs, which is the same to
    the caller (a ``RunNotFound``: the run it would decide is not theirs)."""

    def __init__(self, approval_id: str) -> None:
        self.approval_id = approval_id
        self.run_id = ""
        AgentRuntimeError.__init__(self, f"no approval with id {approval_id!r}")


class ApprovalClosed(AgentRuntimeError):
    """The approval cannot be decided (again): it was approved, denied, expired or spent,
    or its run no longer waits for it (cancelled, say)."""

    def __init__(self, approval_id: str, status: str, detail: str) -> None:
        self.approval_id = approval_id
        self.status = status
        super().__init__(f"approval {approval_id} is {status}: {detail}")


class ApprovalForbidden(AgentRuntimeError):
    """This actor may not decide this approval (their own run on a high-risk route)."""

    def __init__(self, approval_id: str, actor: str, detail: str) -> None:
        self.approval_id = approval_id
        self.actor = actor
        super().__init__(f"approval {approval_id}: {actor} may not decide it: {detail}")


class WaitTimeout(AgentRuntimeError):
    def __init__(self, run_id: str, timeout: float, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} still {status} after {timeout:g}s")


class DeadLetterNotFound(AgentRuntimeError):
    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no dead letter with id {entry_id!r}")


class ApiKeyRejected(AgentRuntimeError):
    """A presented API key cannot authenticate. ``reason`` is the reason code
    (``missing``, ``malformed``, ``unknown``, ``revoked``, ``expired``); what the caller
    is told never says more than "invalid or expired key" (no oracle for key ids)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"API key rejected: {reason}")


class DashboardSessionMissing(AgentRuntimeError):
    """No valid dashboard session: a page goes to the login form."""


class ScopeMissing(AgentRuntimeError):
    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"this API key lacks the scope {scope!r}")


class ApiKeyNotFound(AgentRuntimeError):
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no API key with id {key_id!r}")


class RequestTooLarge(AgentRuntimeError):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is over {limit} bytes")


class StaleWrite(AgentRuntimeError):
    def __init__(self, run_id: str, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id}: another writer won{': ' + detail if detail else ''}")


class CancelRequested(StaleWrite):
    """The run was asked to cancel while this writer worked: its step may not go on as if
    nothing happened (a claim refused, a checkpoint to be ended ``cancelled``). A
    ``StaleWrite``: a caller that does not know about cancels treats it as a lost write."""

    def __init__(self, run_id: str, stop_reason: str | None, workflow_step: str | None) -> None:
        self.stop_reason = stop_reason
        self.workflow_step = workflow_step
        super().__init__(run_id, f"cancel requested ({stop_reason})")


class InvalidTransition(AgentRuntimeError):
    def __init__(self, run_id: str, from_status: str, to_status: str) -> None:
        self.run_id = run_id
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(f"run {run_id}: cannot go from {from_status} to {to_status}")


class NotWaitingForBudget(InvalidTransition):
    """A budget extension for a run that does not wait for one (it runs, it finished, or
    it waits for something else, e.g. an approval of a tool call)."""

    def __init__(self, run_id: str, status: str, stop_reason: str | None) -> None:
        super().__init__(run_id, status, "running")
        self.stop_reason = stop_reason
        self.args = (
            f"run {run_id} does not wait for a budget extension "
            f"(status {status}, stop reason {stop_reason or '-'})",
        )


class ToolError(AgentRuntimeError):
    pass


class ToolDefinitionError(ToolError):
    pass


class ToolExecutionError(ToolError):
    """Raise from a tool to report a clean, expected failure with a short code."""

    def __init__(self, message: str, code: str = "tool_error", retryable: bool = False) -> None:
        self.code = code
        self.retryable = retryable
        super().__init__(message)


class ToolCancelled(ToolExecutionError):
    """The run was cancelled (immediately) while the tool ran: ``ctx.redis_effect`` refuses
    to commit, and a tool that polls ``ctx.cancelled`` raises this to stop early."""

    CODE = "cancelled"

    def __init__(self, message: str = "the run was cancelled; nothing was committed") -> None:
        super().__init__(message, code=self.CODE)


class ToolTimeout(ToolError):
    def __init__(self, tool: str, timeout_s: float) -> None:
        self.tool = tool
        self.timeout_s = timeout_s
        super().__init__(f"tool {tool!r} exceeded its {timeout_s:g}s timeout")


class ToolOutputNotStorable(ToolError):
    """A tool returned a result that is not storable JSON, or more than a record keeps."""


class ProposerError(AgentRuntimeError):
    def __init__(self, message: str, code: str = "proposer_error") -> None:
        self.code = code
        super().__init__(message)


class BudgetError(AgentRuntimeError):
    pass


class BudgetExhausted(BudgetError):
    def __init__(self, scope: str, dimension: str, *, shortfall: int | None = None) -> None:
        self.scope = scope
        self.dimension = dimension
        #: how much more of ``dimension`` the refused reservation needed than the scope had
        #: left (None: not known)
        self.shortfall = shortfall
        super().__init__(f"budget exhausted: {dimension} in scope {scope}")


class StateUnknown(AgentRuntimeError):
    """Redis lost its state (or holds an old one): nothing may run until it is rebuilt."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what}: the runtime's Redis state is unknown (lost, or restored from an old "
            "snapshot); waiting for recovery to rebuild it from SQL (automatic in workers; "
            "or run `agentrt recover`)"
        )


class RecoveryError(AgentRuntimeError):
    pass


class ReleaseError(AgentRuntimeError):
    """A release operation is refused; nothing was changed."""


class GateFailed(ReleaseError):
    def __init__(self, route: str, release: str, summary: str) -> None:
        super().__init__(f"promote {release!r} on {route!r} refused: the gate failed: {summary}")
        self.route, self.release, self.summary = route, release, summary


class DemoError(AgentRuntimeError):
    """The demo could not run (workers did not start, runs did not finish...)."""


class StepHandled(AgentRuntimeError):
    """Raised by the step task to end in FAILURE (what Flower shows) for a step the runtime
    has already handled: no new failure, nothing left for the task_failure handler to do."""


class MessagePoisoned(StepHandled):
    """A step message was no valid step (bad kwargs, an unknown run): it was kept in the
    dead-letter queue as ``poison`` and never run."""

    def __init__(self, task_id: str, error_type: str, error: str, entry_id: str) -> None:
        super().__init__(task_id, error_type, error, entry_id)
        self.task_id, self.error_type, self.error, self.entry_id = (
            task_id,
            error_type,
            error,
            entry_id,
        )

    def __str__(self) -> str:
        return (
            f"message {self.task_id} is poison ({self.error_type}): {self.error}; "
            f"kept as dead-letter entry {self.entry_id}, never run"
        )


class StepFailed(StepHandled):
    """A step ended its run ``failed``, and the runtime has recorded it (stop reason, dead
    letter): the step task raises it so Celery, and Flower, show the task as FAILURE with
    the run, step and stop reason. Nothing is left to handle: it is not a new failure."""

    def __init__(self, run_id: str, step: int, stop_reason: str, failure_class: str) -> None:
        # the args are the constructor's: the exception pickles from a pool process back
        super().__init__(run_id, step, stop_reason, failure_class)
        self.run_id, self.step = run_id, step
        self.stop_reason, self.failure_class = stop_reason, failure_class

    def __str__(self) -> str:
        return (
            f"run {self.run_id} step {self.step}: {self.stop_reason} "
            f"(failure class {self.failure_class})"
        )


class StepDeadLettered(StepFailed):
    """The step's run went to the dead-letter queue (``dead_lettered:<class>``); an
    operator's retry resumes it."""


class StepRetrying(AgentRuntimeError):
    """Why a step task ends in RETRY: the runtime retries the call at ``next_step`` after
    ``countdown_s``, scheduled by its own scheduler (Celery re-sends nothing)."""

    def __init__(
        self, run_id: str, step: int, outcome: str, next_step: int, countdown_s: float
    ) -> None:
        super().__init__(run_id, step, outcome, next_step, countdown_s)
        self.run_id, self.step, self.outcome = run_id, step, outcome
        self.next_step, self.countdown_s = next_step, countdown_s

    def __str__(self) -> str:
        return (
            f"run {self.run_id} step {self.step}: {self.outcome}; "
            f"retried as step {self.next_step} in {self.countdown_s:.3g}s"
        )


class EvalError(AgentRuntimeError):
    """An eval could not be captured or replayed (``runtime.evals``)."""


class EvalFixtureError(EvalError):
    """An eval fixture file is unreadable or invalid; ``problems`` name each bad key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid eval fixture {path}:\n{lines}")


# --- errors that are also redis.ConnectionError ----------------------------------------
if TYPE_CHECKING:
    # what the classes built by _connection_errors are, for the type checker
    from redis import ConnectionError as _RedisConnectionError

    class ScriptsLost(AgentRuntimeError, _RedisConnectionError): ...

    class BrokerConnectionClosed(AgentRuntimeError, _RedisConnectionError): ...


_CONNECTION_ERRORS = ("ScriptsLost", "BrokerConnectionClosed")


def __getattr__(name: str) -> Any:
    if name not in _CONNECTION_ERRORS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _connection_errors()
    return globals()[name]


def _connection_errors() -> None:
    """Define the errors whose second base is redis's (imports redis, once)."""
    global ScriptsLost, BrokerConnectionClosed
    import redis

    class ScriptsLost(AgentRuntimeError, redis.ConnectionError):
        """Redis lost its scripts while a batch ran, and some of the batch's scripts had
        run: it cannot be replayed. A connection error: callers retry the whole operation
        (a step task does, and a step that already checkpointed finds it done)."""

    class BrokerConnectionClosed(AgentRuntimeError, redis.ConnectionError):
        """A broker channel asked for a connection after its connection was released (the
        broker restarted): a connection error, which Celery's consumer recovers from."""


class DocumentNotFound(AgentRuntimeError):
    """No document with this id for this tenant (another tenant's is never found)."""

    def __init__(self, doc_id: str, tenant_id: str) -> None:
        super().__init__(f"no document {doc_id!r} for tenant {tenant_id!r}")
        self.doc_id = doc_id
        self.tenant_id = tenant_id
