"""One step of a run: the seed's runtime loop, idempotent under redelivery.

    lease -> load -> guards -> model call -> budget -> proposal -> tool call -> checkpoint
          -> settle -> next

One module per stage; each stage is handed only the collaborators it uses (``build``):

* ``runner``: leases and loads the step, runs the stages, hands their decision on;
* ``guards``: cancelled, route stopped, deadline, step limit - before anything is spent;
* ``model_call``: model choice (breakers, fallbacks), prompt, rate limits, the proposer;
* ``budget``: the step's worst case reserved before anything runs, and what it spent;
* ``proposal``: validation and policy; ``decisions``: the policy decision record;
* ``tool_call``: the gates of an allowed call (breaker, rate, bulkhead, lock) and its
  result; ``execution``: claim, replay or execute it once per idempotency key;
* ``pending``: a call kept for a later step; ``outcomes``: retries, errors, refusals;
* ``checkpoint``: the one place a decision (``state.Move``) is applied.

Guarantees:

* A step is addressed by (run_id, step_no). The run row's ``next_step`` says which step
  may checkpoint next; the checkpoint is a compare-and-set on it, so of two copies of one
  step only one commits and the other stops quietly.
* A run's steps hold a Redis lease while they execute, so a redelivered copy waits for a
  live one instead of racing it, and takes over only from an owner known dead (its process
  instance's heartbeat is gone: ``runtime.locks.identity``). The step records that owner
  on its scheduler slot when it starts, so a dead worker's steps are handed back within
  ``scheduling.worker_dead_after_s``.
* Side effects are claimed in SQL (idempotency key ``run:step:call``) together with their
  allow decision before the tool runs; a redelivered step reuses a recorded result instead
  of calling the tool again.

What a step records (kind, outcome, ``workflow_step``) is in ``runtime.step_record``.
"""
