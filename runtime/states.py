"""Run status transitions, enforced by the store as conditional updates.

```mermaid
stateDiagram-v2
    [*] --> queued: admitted
    [*] --> refused: admission refused
    queued --> running: first step starts
    queued --> cancelled
    running --> running: step checkpointed
    running --> waiting: needs approval / escalated / paused
    waiting --> running: approved / resumed
    running --> succeeded
    running --> failed
    running --> refused: policy denied
    running --> cancelled
    waiting --> cancelled
    queued --> cancel_requested: cancel (a step may be in flight)
    running --> cancel_requested
    cancel_requested --> cancelled: the step in flight ends, or none was
    waiting --> failed: approval expired
    waiting --> refused: approval denied
```
"""

from __future__ import annotations

from runtime.contract import RunStatus

S = RunStatus

#: for each target status, the statuses a run may be in before it
ALLOWED_FROM: dict[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset(),
    S.RUNNING: frozenset({S.QUEUED, S.RUNNING, S.WAITING}),
    S.WAITING: frozenset({S.QUEUED, S.RUNNING}),
    S.SUCCEEDED: frozenset({S.QUEUED, S.RUNNING}),
    S.FAILED: frozenset({S.QUEUED, S.RUNNING, S.WAITING}),
    S.REFUSED: frozenset({S.QUEUED, S.RUNNING, S.WAITING}),
    S.CANCELLED: frozenset({S.QUEUED, S.RUNNING, S.WAITING, S.CANCEL_REQUESTED}),
    S.CANCEL_REQUESTED: frozenset({S.QUEUED, S.RUNNING}),
}
