"""One stop-reason taxonomy; the run status follows from the reason.

A stop reason is ``<kind>`` or ``<kind>:<detail>``:

============================  ===========  ==============================================
reason                        status       meaning
============================  ===========  ==============================================
completed                     succeeded    the model replied or stopped
refused:<code>                refused      admission refused the request
policy_denied:<rule>          refused      a policy rule (or a built-in check) denied a call
invalid_proposal:<code>       refused      the model kept proposing invalid actions
budget_exhausted:<dimension>  failed       a reservation could not be made
step_limit                    failed       the route's max_steps was reached
timed_out                     failed       the run's wall-clock deadline passed
failed:<class>                failed       a tool or proposer failure the run cannot absorb
dead_lettered:<class>         failed       the step went to the dead-letter queue
cancelled:<actor>             cancelled    an operator or the caller cancelled the run
needs_approval:<rule>         waiting      a call requires approval (the run waits); the
                                           rule is ``autonomy:<level>`` when the route's
                                           autonomy level asked for it
needs_approval:budget_ext...  waiting      ``needs_approval:budget_extension``: the run's
                                           own budget ran out and its route says
                                           ``on_budget_exhausted: ask``
escalated:<rule>              waiting      policy escalated the call to a human
paused:<actor>                waiting      an operator paused the run (resume goes on)
ordered:<source>              waiting      an event run waits for the earlier runs of its
                                           ordering key (``runtime.event_ordering``)
delegated:<child run id>      waiting      the run waits for a child run it started
approval_denied               refused      a reviewer denied the action
approval_expired              failed       nobody decided in time
============================  ===========  ==============================================
"""

from __future__ import annotations

from runtime.statuses import RunStatus

_STATUS_BY_KIND: dict[str, RunStatus] = {
    "completed": RunStatus.SUCCEEDED,
    "refused": RunStatus.REFUSED,
    "policy_denied": RunStatus.REFUSED,
    "invalid_proposal": RunStatus.REFUSED,
    "approval_denied": RunStatus.REFUSED,
    "budget_exhausted": RunStatus.FAILED,
    "step_limit": RunStatus.FAILED,
    "timed_out": RunStatus.FAILED,
    "failed": RunStatus.FAILED,
    "dead_lettered": RunStatus.FAILED,
    "approval_expired": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "needs_approval": RunStatus.WAITING,
    "escalated": RunStatus.WAITING,
    "paused": RunStatus.WAITING,
    "ordered": RunStatus.WAITING,
    "delegated": RunStatus.WAITING,
}

KINDS = frozenset(_STATUS_BY_KIND)

#: a run that waits for an approved budget extension
BUDGET_EXTENSION = "needs_approval:budget_extension"


def kind_of(reason: str) -> str:
    return reason.split(":", 1)[0]


def status_for(reason: str) -> RunStatus:
    """The run status a stop reason implies; an unknown kind is a programming error."""
    try:
        return _STATUS_BY_KIND[kind_of(reason)]
    except KeyError:
        raise ValueError(f"unknown stop reason {reason!r}; kinds: {sorted(KINDS)}") from None


def make(kind: str, detail: str | None = None) -> str:
    if kind not in _STATUS_BY_KIND:
        raise ValueError(f"unknown stop reason kind {kind!r}")
    return f"{kind}:{detail}" if detail else kind


def awaits_child(reason: str | None) -> bool:
    """Whether a waiting run waits for a child run it delegated to (no person is needed:
    the child's end resumes it), not for an approval or a budget extension."""
    return reason is not None and kind_of(reason) == "delegated"
