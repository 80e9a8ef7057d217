"""What a step's record says: its kind, its outcome, and the run's ``workflow_step``.

Closed value sets of the run contract, kept apart from the step loop (plain Python, no
pydantic) because proposers, the CLI and the demo read them back from stored rows. They are
``StrEnum``s: a member *is* its string, so what is stored, traced and compared stays the same
text it always was.

Step kind (``steps.kind``)
    what the step did: ``tool_call``, ``proposed``, ``reply``, ``stop``, ``refused``,
    ``waiting``, ``deferred``, ``stopped``, ``failed``, ``plan`` (``StepKind``).

Step outcome (``steps.outcome``)
    ``<outcome>`` or ``<outcome>:<detail>``; ``StepOutcome`` lists every ``<outcome>`` and
    what its detail is (``StepOutcome.X.of(detail)`` builds one, ``outcome_of`` reads the
    head back).

``workflow_step`` (a column of the run row, shown by ``agentrt runs show``)
    where the run is in its workflow, one grammar::

        workflow_step := <state> | <state> ":" <subject>

    ``<state>`` is one of ``WorkflowStep``; ``<subject>`` is free text whose meaning the
    state gives (a tool name, a lock name, a limiter ``tool:<name>``, ``step:<n>``...). The
    whole value is at most ``WORKFLOW_STEP_CHARS`` characters: a longer one is cut and ends
    in ``...`` (a lock name is rendered from the model's arguments: shown, not an identity).
    ``workflow_step()`` builds it, ``parse_workflow_step()`` reads it back.
"""

from __future__ import annotations

import enum

#: the run row's workflow_step column
WORKFLOW_STEP_CHARS = 200


class StepKind(enum.StrEnum):
    """What a step did (the ``kind`` of its row)."""

    #: a tool call was executed (or replayed), whatever its result
    TOOL_CALL = "tool_call"
    #: a tool call recorded as a proposal and never executed (autonomy level ``advisory``)
    PROPOSED = "proposed"
    #: the model replied: the run succeeded
    REPLY = "reply"
    #: the model stopped: the run succeeded
    STOP = "stop"
    #: the proposal was invalid or denied by policy; fed back to the model
    REFUSED = "refused"
    #: the call needs approval or was escalated, or the run's budget asks for an
    #: extension: the run waits
    WAITING = "waiting"
    #: nothing ran; the same call runs again later (rate limit, breaker, bulkhead, lock)
    DEFERRED = "deferred"
    #: a guard stopped the run before anything was spent (cancel, deadline, step limit,
    #: budget)
    STOPPED = "stopped"
    #: a proposer or tool call failed, or the step failed outside the loop
    FAILED = "failed"
    #: a retrieval query was searched; its results were shown as evidence
    RETRIEVAL = "retrieval"
    #: an accepted memory write (``runtime.step.memory``), stored with the checkpoint
    MEMORY_WRITE = "memory_write"
    #: the model proposed a plan and the runtime accepted it (``runtime.step.plan``)
    PLAN = "plan"
    #: a child run the run started (``delegate``) ended: its result is the observation
    DELEGATION = "delegation"


class StepOutcome(enum.StrEnum):
    """The head of a step's outcome; the comment says what follows ``:`` if anything."""

    #: the model replied or stopped
    COMPLETED = "completed"
    TOOL_SUCCEEDED = "tool_succeeded"
    #: ``:<count>``: a retrieval query was searched, ``count`` results shown
    RETRIEVED = "retrieved"
    #: ``:<namespace>``: a memory write was accepted and stored
    MEMORY_WRITTEN = "memory_written"
    #: a plan was checked and recorded (it replaced the run's earlier plan, if any)
    PLAN_ACCEPTED = "plan_accepted"
    #: the call was recorded as a proposal, not run (autonomy level ``advisory``)
    PROPOSED = "proposed"
    #: an irreversible call's earlier attempt died mid-call: not repeated
    SIDE_EFFECT_UNKNOWN = "side_effect_unknown"
    CANCELLED = "cancelled"
    #: ``:<actor>``: an operator paused the run before this step could start
    PAUSED = "paused"
    ROUTE_STOPPED = "route_stopped"
    TIMED_OUT = "timed_out"
    STEP_LIMIT = "step_limit"
    #: a kept call's secret arguments are gone: never run without them
    PENDING_SECRETS_LOST = "pending_secrets_lost"
    #: the config no longer has the run's route
    ROUTE_REMOVED = "route_removed"
    #: the run's release (or its route's live release state) names a release the config
    #: does not define: never run under it
    UNKNOWN_RELEASE = "unknown_release"
    LOCK_BUSY = "lock_busy"
    LOCK_TIMEOUT = "lock_timeout"
    #: ``:<dimension>``
    BUDGET_EXHAUSTED = "budget_exhausted"
    #: ``:model`` or ``:tool:<name>``
    RATE_LIMITED = "rate_limited"
    #: ``:model:<name>`` or ``:tool:<name>``
    BREAKER_OPEN = "breaker_open"
    #: ``:tool:<name>``
    BULKHEAD_FULL = "bulkhead_full"
    #: ``:<error code>``; fed back, or the run failed
    TOOL_FAILED = "tool_failed"
    PROPOSER_FAILED = "proposer_failed"
    #: ``:<error code>``; the same call is tried again after a backoff
    TOOL_RETRY = "tool_retry"
    PROPOSER_RETRY = "proposer_retry"
    #: ``:<rule>`` (``autonomy:<level>`` when the run's autonomy level decided)
    POLICY_DENIED = "policy_denied"
    #: ``:<rule>`` as above, or ``:budget_extension`` (the run's budget asks for more)
    NEEDS_APPROVAL = "needs_approval"
    ESCALATED = "escalated"
    #: ``:<actor>``: a reviewer denied the kept call; told to the model as its error
    APPROVAL_DENIED = "approval_denied"
    #: ``:<code>``: the invalid proposal ended the run
    INVALID_PROPOSAL = "invalid_proposal"
    #: ``:<code>``: the invalid proposal was fed back
    REFUSED = "refused"
    #: ``:<child run id>``: a child run started; the run waits for it
    DELEGATED = "delegated"
    #: ``:<child status>``: the child run ended; its result was fed back
    CHILD_ENDED = "child_ended"

    def of(self, *detail: str) -> str:
        """``<outcome>:<detail>[:<detail>...]``."""
        return ":".join((self.value, *detail))


def outcome_of(outcome: str) -> StepOutcome | None:
    """The head of a stored outcome; None for one this version does not know."""
    try:
        return StepOutcome(outcome.split(":", 1)[0])
    except ValueError:
        return None


class WorkflowStep(enum.StrEnum):
    """The ``<state>`` of ``workflow_step``; the comment says what its subject is."""

    #: admitted, its first step queued
    QUEUED = "queued"
    #: admission refused the request
    REFUSED = "refused"
    #: its first step started
    STARTED = "started"
    #: terminal
    FINISHED = "finished"
    #: ``:<tool>``: a tool call ran
    AFTER = "after"
    #: ``:<tool>``: a call waits for approval (or a human, once escalated)
    AWAITING = "awaiting"
    #: ``:<tool>``: a human approved the kept call; the step that runs it is queued
    APPROVED = "approved"
    #: ``:<tool>``: a human denied the kept call; the model is told next
    DENIED = "denied"
    #: ``:<dimension>``: the run's budget ran out; it waits for an approved extension
    AWAITING_BUDGET = "awaiting_budget"
    #: ``:<tool>``: the last call was recorded as a proposal, not run (``advisory``)
    PROPOSED = "proposed"
    #: ``:tool|proposer``: a failed call is tried again after a backoff
    RETRY = "retry"
    #: the model's token or request rate is used up
    WAITING_RATE_LIMIT = "waiting_rate_limit"
    #: every breaker of the route's models is open
    WAITING_BREAKER = "waiting_breaker"
    #: ``:<lock name>``
    WAITING_LOCK = "waiting_lock"
    #: ``:tool:<name>``: a tool's rate limit, breaker or bulkhead holds the call back
    RATE_LIMITED = "rate_limited"
    BREAKER_OPEN = "breaker_open"
    BULKHEAD_FULL = "bulkhead_full"
    #: retries exhausted (no subject), or ``:step:<n>`` once the entry is stored
    DEAD_LETTERED = "dead_lettered"
    #: an operator retried it from the dead-letter queue
    RETRIED_FROM_DEAD_LETTER = "retried_from_dead_letter"
    #: ``:<mode>[+compensate]``: a cancel was requested (status ``cancel_requested``)
    CANCELLING = "cancelling"
    #: ``:<child run id>``: the run waits for a child run it started (``delegate``)
    AWAITING_CHILD = "awaiting_child"
    #: ``:<actor>``: an operator paused the run (status ``waiting``)
    PAUSED = "paused"
    #: ``:<actor>``: an operator resumed the paused run
    RESUMED = "resumed"
    #: ``:<source>``: an event run waits for the earlier runs of its ordering key
    ORDERED = "ordered"
    #: ``:<source>``: the runs before it ended; its first step is queued
    RELEASED = "released"


def workflow_step(state: WorkflowStep, subject: str | None = None) -> str:
    """The one way to build a ``workflow_step`` value (bounded, see the module doc)."""
    value = f"{state.value}:{subject}" if subject else state.value
    if len(value) > WORKFLOW_STEP_CHARS:
        return value[: WORKFLOW_STEP_CHARS - 3] + "..."
    return value


def parse_workflow_step(value: str | None) -> tuple[WorkflowStep | None, str | None]:
    """(state, subject) of a stored value; (None, None) for none, or for one this version
    does not know (written by hand or by another version), never an error."""
    state, _, subject = (value or "").partition(":")
    try:
        return WorkflowStep(state), subject or None
    except ValueError:
        return None, None
