"""Chaining (``runtime.step.chain``): a task that finished its step runs the step the
scheduler dispatched into the slot it freed, itself, within the task's time limits and a
length cap; a chained step is a whole step (lease, slot owner, checkpoint, trace), and a
failure in it is that step's, not the message's."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.config import load_config, parse_config
from runtime.scheduling.scheduler import Item
from runtime.step.chain import Chain, new_chain
from runtime.store.dead_letters import DeadLetterFilter
from tasks.app import min_visibility_timeout
from tests.support import ROOT, Deployment

TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
REPLY = {"type": "reply", "text": "done"}
#: a window wide enough that a slow machine still chains (the default is 2 s)
WINDOW_S = 20
MAX_STEPS = 3


def chain_config(tmp_path: Path, **scheduling: Any) -> Path:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["scheduling"].update(scheduling)
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def chain_deployment(redis_url: str, tmp_path: Path, **scheduling: Any) -> Deployment:
    config = chain_config(tmp_path, **scheduling)
    visibility = math.floor(min_visibility_timeout(load_config(config))) + 1
    return Deployment.create(
        name=f"c{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=config,
        home=tmp_path,
        extra_env={"AGENTRT_VISIBILITY_TIMEOUT_S": str(visibility)},
    )


# --- the bounds, without workers ----------------------------------------------------------


def _config(**scheduling: Any) -> Any:
    data = yaml.safe_load(TEST_CONFIG.read_text())
    data["scheduling"].update(scheduling)
    return parse_config(data)


def test_a_chained_step_keeps_its_whole_time_and_stays_within_its_leases() -> None:
    config = _config(chain_window_s=2)
    timeout = {name: r.step_timeout_s for name, r in config.routes.items()}
    assert timeout["r.basic"] == 10 and timeout["r.hang"] == 2 and timeout["r.held"] == 20
    # same route: within the window after the task started
    assert config.chain_fits("r.basic", "r.basic", 0.0)
    assert config.chain_fits("r.basic", "r.basic", 2.0)
    assert not config.chain_fits("r.basic", "r.basic", 2.01)
    # a longer route never fits into a task begun by a shorter one early on: its own hard
    # limit would come after the task's
    assert not config.chain_fits("r.basic", "r.held", 0.0)
    # a shorter route fits only once the task's limit left it no more than its leases cover
    assert not config.chain_fits("r.basic", "r.hang", 7.9)
    assert config.chain_fits("r.basic", "r.hang", 8.0)
    assert config.chain_fits("r.basic", "r.hang", 10.0)
    assert not config.chain_fits("r.basic", "r.hang", 10.01)
    # the task's limits grow by the window; the soft limit stays half way through the grace
    grace = config.scheduling.hard_limit_grace_s
    assert config.hard_limit_s("r.basic") == 10 + grace + 2
    assert config.soft_limit_s("r.basic") == 10 + grace / 2 + 2
    assert config.lease_ttl_s() == 20 + grace + 2 + config.scheduling.lease_margin_s
    # an unknown route (a config change) never chains
    assert not config.chain_fits("r.basic", "r.gone", 0.0)


def test_the_cap_and_a_zero_window_end_chaining() -> None:
    item = Item("a" * 32, 0, "t1", "r.basic")
    assert new_chain(_config(chain_window_s=0), "task", item) is None
    config = _config(chain_window_s=5, chain_max_steps=2)
    chain = new_chain(config, "task", item)
    assert isinstance(chain, Chain)
    chain.steps.append(item)
    assert chain.may_keep(config, Item("b" * 32, 1, "t2", "r.basic"))
    chain.steps.append(Item("b" * 32, 1, "t2", "r.basic"))
    assert not chain.may_keep(config, Item("c" * 32, 0, "t1", "r.basic"))


def test_a_step_waiting_in_celery_stops_a_chain_only_when_steps_may_wait_for_a_process() -> None:
    item, nxt = Item("a" * 32, 0, "t1", "r.basic"), Item("b" * 32, 1, "t2", "r.basic")
    # no headroom (the default with chaining): a step dispatched earlier has a free process
    config = _config(chain_window_s=5, dispatch_headroom=0)
    chain = new_chain(config, "task", item)
    assert isinstance(chain, Chain)
    chain.steps.append(item)
    assert chain.may_keep(config, nxt, waiting=0)
    assert chain.may_keep(config, nxt, waiting=1)
    # with headroom a step may wait in Celery for a process: keeping would overtake it
    config = _config(chain_window_s=5, dispatch_headroom=0.5)
    assert chain.may_keep(config, nxt, waiting=0)
    assert not chain.may_keep(config, nxt, waiting=1)


# --- with a real worker -------------------------------------------------------------------


@pytest.mark.slow
def test_a_task_runs_the_steps_the_scheduler_dispatches_next_up_to_the_cap(
    redis_url: str, tmp_path: Path
) -> None:
    dep = chain_deployment(redis_url, tmp_path, chain_window_s=WINDOW_S, chain_max_steps=MAX_STEPS)
    try:
        # Given runs of four steps queued before any worker runs
        search = {"type": "tool_call", "tool": "kb.search", "args": {"query": "q"}}
        runs = [dep.submit_script([search, search, search, REPLY]) for _ in range(4)]
        run_ids = [r.run_id for r in runs]
        # When one worker process runs them
        worker = dep.start_worker(concurrency=1)
        done = dep.wait_all(run_ids, timeout=120)
        assert {v.status.value for v in done.values()} == {"succeeded"}

        # Then steps ran chained in tasks begun by other steps, never more than the cap per
        # task, each step once, and each chained step says so in its trace
        started: list[dict[str, Any]] = []
        for run_id in run_ids:
            events = dep.svc.trace(run_id)
            started += [{"step": e.step, **e.data} for e in events if e.kind == "step_started"]
            steps = [e.step for e in events if e.kind == "checkpoint"]
            assert steps == [0, 1, 2, 3], steps
        chained = [e for e in started if e.get("chained")]
        assert chained, started
        assert max(e["chained"] for e in chained) <= MAX_STEPS - 1
        per_task = Counter(e["task"] for e in chained)
        assert max(per_task.values()) <= MAX_STEPS - 1
        # ...and the task's result (what Flower shows) lists the steps it ran
        assert "'chained': [" in worker.log()
    finally:
        dep.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_chained_step_past_the_tasks_hard_limit_is_dead_lettered_at_its_own_step(
    redis_url: str, tmp_path: Path
) -> None:
    dep = chain_deployment(redis_url, tmp_path, chain_window_s=WINDOW_S)
    try:
        # Given a run whose first step is quick and whose second step outlasts any limit (only
        # a hard time limit ends it; r.hang's task limit: 2 + grace 4 + window 20 s)
        quick = {"type": "tool_call", "tool": "probe.hang", "args": {"ms": 1}}
        hang = {"type": "tool_call", "tool": "probe.hang", "args": {"ms": 60_000}}
        run = dep.submit_script([quick, hang, REPLY], route="r.hang")
        dep.start_worker(concurrency=1)
        # When the second step ran chained in the first step's task and was killed
        view = dep.svc.wait(run.run_id, timeout=180)
        # Then the killed step is dead-lettered as a timeout, at its own step: not the
        # message's step (done long before), not a worker death counted by the hand-back
        assert view.stop_reason == "dead_lettered:timeout", view.stop_reason
        (entry,) = dep.svc.dead_letters.find(DeadLetterFilter(run_id=run.run_id), limit=None)
        assert entry["step_no"] == 1 and entry["error_type"] == "TimeLimitExceeded", entry
        # ...by the task that ran it chained (the message of step 0): not by a copy of
        # step 1 sent again after the kill, which would be killed again, later
        assert entry["task_id"] == f"{run.run_id}-0", entry
        # (the killed step's start is in the trace: its read's decision, and the events
        # before it, commit before the tool runs; no second start of step 1 follows)
        started = [e for e in dep.svc.trace(run.run_id) if e.kind == "step_started"]
        assert [(e.step, e.data.get("chained")) for e in started] == [(0, None), (1, 1)]
    finally:
        dep.close()
