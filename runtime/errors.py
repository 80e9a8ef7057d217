"""Every error the runtime raises, under one root.

* AgentRuntimeError
  x ConfigError                (path, problems): a config file is missing or invalid
  x SettingsError              an environment setting is unusable (e.g. an evicting Redis)
  x AdmissionRefused           (code, detail, fields): submit() refused a request it could not
                               store (a malformed identity, an idempotency conflict)
  x InvalidRequest             (fields, detail): an argument of an operation is malformed
  x RunNotFound                (run_id)
  x StaleWrite                 (run_id): a conditional update lost to another writer
  x InvalidTransition          (run_id, from_status, to_status)
  x ToolError
    - ToolNotRegistered        (name)
    - ToolDefinitionError      a tool module declares a tool wrongly
    - ToolExecutionError       (tool, cause): the tool raised; recorded, never re-raised raw
    - ToolTimeout              (tool, timeout_s)
  x ProposerError              the proposer could not produce a proposal (HTTP error, bad reply)
  x BudgetError
    - BudgetExhausted          (scope, dimension)
  x LockBusy                   (name, retry_after_s)
  x ServiceUnavailable         Redis or the database cannot be reached
  x StateUnknown               (what): Redis lost its state; nothing runs until recovery
"""

from __future__ import annotations


class AgentRuntimeError(Exception):
    """Root of every error agentrt raises on purpose."""


class ConfigError(AgentRuntimeError):
    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {path}:\n{lines}")


class SettingsError(AgentRuntimeError):
    pass


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


class RunNotFound(AgentRuntimeError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class StaleWrite(AgentRuntimeError):
    def __init__(self, run_id: str, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id}: another writer won{': ' + detail if detail else ''}")


class InvalidTransition(AgentRuntimeError):
    def __init__(self, run_id: str, from_status: str, to_status: str) -> None:
        self.run_id = run_id
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(f"run {run_id}: cannot go from {from_status} to {to_status}")


class ToolError(AgentRuntimeError):
    pass


class ToolNotRegistered(ToolError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"tool {name!r} is not registered")


class ToolDefinitionError(ToolError):
    pass


class ToolExecutionError(ToolError):
    """Raise from a tool to report a clean, expected failure with a short code."""

    def __init__(self, message: str, code: str = "tool_error", retryable: bool = False) -> None:
        self.code = code
        self.retryable = retryable
        super().__init__(message)


class ToolTimeout(ToolError):
    def __init__(self, tool: str, timeout_s: float) -> None:
        self.tool = tool
        self.timeout_s = timeout_s
        super().__init__(f"tool {tool!r} exceeded its {timeout_s:g}s timeout")


class ProposerError(AgentRuntimeError):
    def __init__(self, message: str, code: str = "proposer_error") -> None:
        self.code = code
        super().__init__(message)


class BudgetError(AgentRuntimeError):
    pass


class BudgetExhausted(BudgetError):
    def __init__(self, scope: str, dimension: str) -> None:
        self.scope = scope
        self.dimension = dimension
        super().__init__(f"budget exhausted: {dimension} in scope {scope}")


class LockBusy(AgentRuntimeError):
    def __init__(self, name: str, retry_after_s: float) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        super().__init__(f"lock {name!r} is held by another run; retry in {retry_after_s:.2f}s")


class ServiceUnavailable(AgentRuntimeError):
    pass


class StateUnknown(AgentRuntimeError):
    """Redis lost its state (or holds an old one): nothing may run until it is rebuilt."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what}: the runtime's Redis state is unknown (lost, or restored from an old "
            "snapshot); waiting for recovery to rebuild it from SQL (automatic in workers; "
            "or run `agentrt recover`)"
        )


class WaitTimeout(AgentRuntimeError):
    """``wait`` gave up: the run was still neither terminal nor waiting."""

    def __init__(self, run_id: str, timeout: float, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} still {status} after {timeout:g}s")
