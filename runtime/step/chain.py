"""Chaining: a task that finished its step runs the next step the scheduler dispatches
into the slot it frees, itself, instead of publishing it to Celery and waiting for a worker
to fetch it.

The scheduler still decides: the step kept is the one its own dispatch (weighted-fair
choice, max-wait ageing, route and tenant slots) picked for that slot, whatever run it
belongs to; chaining only saves the broker round trip and Celery's per-task cost. A chain
is bounded:

* by time: a step joins only while the task's limits (``RuntimeConfig.hard_limit_s`` of the
  route its message named, which include ``scheduling.chain_window_s``) leave it at least
  its own timeout and grace and no more than its leases cover (``RuntimeConfig.chain_fits``);
* by length: ``scheduling.chain_max_steps`` steps per task;
* by order: with ``scheduling.dispatch_headroom`` above 0, never ahead of a step dispatched
  earlier and still waiting in Celery (see ``Chain.may_keep``).

A chained step is a step like any other: it takes the run lease and its slot (recording
this process instance as its owner, so a SIGKILL hands it back), checkpoints, and its trace
says ``chained``. The task names the step it runs now in its request (so a failure or a
retry is the chained step's) and, in Redis, under ``Keys.chain_cursor`` (a hard time limit
is reported by the worker's main process, which only knows the message).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from runtime.config import RuntimeConfig
from runtime.scheduling.scheduler import Item

#: Celery's time-limit timers start a moment before the task body does
CLOCK_SLACK_S = 0.25


@dataclass
class Chain:
    """The steps one task runs: its message's step, then the ones it kept."""

    #: the Celery task id (the first step's); names the chain cursor
    task_id: str
    #: the route of the message's step: the task's limits are that route's
    first_route: str
    max_steps: int
    started: float = field(default_factory=time.monotonic)
    steps: list[Item] = field(default_factory=list)

    @property
    def position(self) -> int:
        """0 for the message's own step, n for the nth step chained after it."""
        return max(len(self.steps) - 1, 0)

    def remaining_s(self, config: RuntimeConfig) -> float:
        """Until the task's hard time limit (at most)."""
        return config.hard_limit_s(self.first_route) - (time.monotonic() - self.started)

    def may_keep(self, config: RuntimeConfig, item: Item, waiting: int = 0) -> bool:
        """May this task run ``item`` next, instead of publishing it? ``waiting``: steps
        the scheduler dispatched earlier that have not started."""
        if len(self.steps) >= self.max_steps:
            return False
        if waiting > 0 and config.scheduling.headroom() > 0:
            # with headroom, a step dispatched earlier may wait in Celery for a process:
            # running this one here would overtake it. Without headroom the dispatcher never
            # has more steps in flight than processes, so each one waiting has a process
            # that is free (or about to be: the task that published it ended) - keeping
            # overtakes nobody, and publishing instead would end this chain and the next
            # ones, each in turn meeting a step in flight to a free process
            return False
        elapsed = time.monotonic() - self.started + CLOCK_SLACK_S
        return config.chain_fits(self.first_route, item.route, elapsed)


def new_chain(config: RuntimeConfig, task_id: str, first: Item) -> Chain | None:
    """A chain for a task whose message names ``first``; None when chaining is off."""
    if config.scheduling.chain_window_s <= 0 or first.route not in config.routes:
        return None
    return Chain(task_id, first.route, config.scheduling.chain_max_steps)
