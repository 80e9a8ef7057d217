"""The closed value sets a step records and the one grammar of ``workflow_step``."""

from __future__ import annotations

from runtime.step_record import (
    WORKFLOW_STEP_CHARS,
    StepKind,
    StepOutcome,
    WorkflowStep,
    outcome_of,
    parse_workflow_step,
    workflow_step,
)


def test_enum_members_are_the_stored_strings() -> None:
    assert StepKind.TOOL_CALL == "tool_call" and str(StepKind.DEFERRED) == "deferred"
    assert StepOutcome.TOOL_RETRY.of("timeout") == "tool_retry:timeout"
    assert StepOutcome.BREAKER_OPEN.of("model", "gpt") == "breaker_open:model:gpt"


def test_outcome_head_reads_back_and_an_unknown_one_is_none() -> None:
    assert outcome_of("rate_limited:tool:kb.search") is StepOutcome.RATE_LIMITED
    assert outcome_of("completed") is StepOutcome.COMPLETED
    assert outcome_of("written_by_hand:x") is None


def test_workflow_step_builds_parses_and_bounds() -> None:
    assert workflow_step(WorkflowStep.FINISHED) == "finished"
    built = workflow_step(WorkflowStep.RATE_LIMITED, "tool:kb.search")
    assert built == "rate_limited:tool:kb.search"
    assert parse_workflow_step(built) == (WorkflowStep.RATE_LIMITED, "tool:kb.search")
    assert parse_workflow_step("dead_lettered:step:3") == (WorkflowStep.DEAD_LETTERED, "step:3")
    # a lock name rendered from the model's arguments may be long: cut, marked, bounded
    long = workflow_step(WorkflowStep.WAITING_LOCK, "x" * 500)
    assert len(long) == WORKFLOW_STEP_CHARS and long.endswith("...")
    assert long.startswith("waiting_lock:xxx")
    # a value this version does not know, or none, never raises
    assert parse_workflow_step("edited:by hand") == (None, None)
    assert parse_workflow_step(None) == (None, None)
