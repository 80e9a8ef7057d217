"""What the step stages need from objects that live above or beside them, as protocols.

Each protocol names exactly the methods the stages call, with the signatures their owners
have; a stage takes one of these (``catalog=``, ``controls=``, ``dispatch=``,
``dead_letters=``), never the service that happens to provide them. That keeps the import
graph a tree: nothing in ``runtime.step`` imports ``runtime.service`` or
``runtime.dead_letters``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from runtime.admission import Refusal
from runtime.config import RetryPolicy, RouteConfig
from runtime.controls import ControlsRead
from runtime.proposers.base import Proposer, ToolDescription
from runtime.release_sets import StepRelease
from runtime.scheduling.scheduler import Item, Ops, Outcome
from runtime.tools.registry import ToolSpec


class CatalogReads(Protocol):
    """Config lookups: which proposer, a tool's timeout, cost and state, retry policies."""

    def proposer_for(self, model_name: str) -> Proposer: ...

    def tool_timeout(self, spec: ToolSpec, route: str | None = None) -> float: ...

    def retry_policy(self, route: str, tool: str | None = None) -> RetryPolicy | None: ...

    def tool_cost_micro(self, name: str) -> int: ...

    def tool_enabled(self, name: str, disabled_live: frozenset[str] = frozenset()) -> bool: ...

    def tool_descriptions(
        self, route: str, disabled_live: frozenset[str]
    ) -> list[ToolDescription]: ...


class LiveControls(Protocol):
    """The switches: a run cancelled or paused, a route stopped, tools disabled."""

    def live_controls(self, run_id: str, route: str, tools: list[str]) -> ControlsRead: ...

    def control_keys(self, run_id: str, route: str, tools: list[str]) -> list[str]: ...

    def parse_controls(self, values: list[Any], tools: list[str]) -> ControlsRead: ...

    def cancelled_by(self, run_id: str) -> str | None: ...

    def pause_key(self, run_id: str) -> str: ...


class ReleaseRouting(Protocol):
    """A run's release as its step sees it (``runtime.releases.live``)."""

    def read_key(self, route: str) -> str | None: ...

    def for_step(self, run: dict[str, Any], route: RouteConfig, read: Any) -> StepRelease: ...


class Scheduling(Protocol):
    """Scheduler operations whose dispatched steps are published, and publishing."""

    def schedule(self, ops: Ops) -> Outcome: ...

    def publish(self, items: list[Item]) -> None: ...


class DeadLettering(Protocol):
    """The dead-letter queue and the attempt history of a failing call."""

    def record_failure(
        self,
        run_id: str,
        step_no: int,
        kind: str,
        error_type: str,
        error: str | None,
        worker: str | None = None,
    ) -> None: ...

    def dead_letter_step(
        self,
        run_id: str,
        step_no: int,
        dl_class: str,
        *,
        error_type: str,
        error: str | None = None,
    ) -> str | None: ...


class ChildRuns(Protocol):
    """Child runs (``delegate``): a run's fan-out so far, and a new child's row."""

    def child_count(self, run_id: str, tenant_id: str) -> int: ...

    def child_row(
        self,
        parent: Mapping[str, Any],
        route: str,
        goal: str,
        run_input: dict[str, Any],
        step_no: int,
        depth: int,
        budget: dict[str, int],
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | Refusal: ...


#: what follows a run that failed or was dead-lettered (compensation, if its route asks)
AfterFailure = Callable[[dict[str, Any]], None]
#: what follows a run a cancel ended, when the cancel asked for compensation (its run id)
AfterCancel = Callable[[str], Any]
#: a step ended its run (the run's row as the step loaded it); never raises
AfterTerminal = Callable[[Mapping[str, Any]], None]
