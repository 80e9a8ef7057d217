"""Recovery racing other processes: a process that still caches the old state generation,
and two workers that both found the state unknown.

The interleavings are forced through the recovery's own seams (a wrapped step of the real
``Recovery`` on a real deployment): real Redis scripts and real SQL decide the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runtime.budgets.ledger import BudgetLedger
from runtime.errors import StateUnknown
from tests.support import Deployment


def forget_state(dep: Deployment) -> None:
    """Both markers gone: the state is unknown, as after a flush."""
    dep.svc.redis.delete(dep.svc.keys.sched_state(), dep.svc.keys.ledger_state())


def test_a_process_on_the_old_generation_cannot_reserve_while_the_ledger_is_rebuilt(
    fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process reads SQL's generation at most once a second: until it reads the new one,
    the old marker must not let it reserve into scopes the rebuild is about to overwrite."""
    svc = fresh_deployment.svc
    old = svc.generation.refresh()
    stale = BudgetLedger(svc.redis, svc.keys, generation=lambda: old)
    scope = stale.tenant_day_scope("tday", {"tool_calls": 20})
    outcomes: list[str] = []
    rebuild = svc.recovery._rebuild_ledger

    def reserve_then_rebuild(*args: Any) -> None:
        try:
            stale.reserve("run-stale", 0, [scope], {"tool_calls": 1}, 60_000)
            outcomes.append("reserved")
        except StateUnknown:
            outcomes.append("state_unknown")
        rebuild(*args)

    monkeypatch.setattr(svc.recovery, "_rebuild_ledger", reserve_then_rebuild)
    report = svc.recovery.recover("ops:test", inflight_wait_s=0)
    # Then the reservation was refused (fail closed), nothing is held, and the rebuilt
    # ledger is known again at the new generation
    assert outcomes == ["state_unknown"]
    assert report.generation == old + 1
    assert svc.ledger.balance(scope.key)["tool_calls"] == {"used": 0, "reserved": 0}
    assert svc.markers.known(report.generation)
    fresh = BudgetLedger(svc.redis, svc.keys, generation=svc.generation.refresh)
    assert fresh.reserve("run-fresh", 0, [scope], {"tool_calls": 1}, 60_000).state == "new"


def test_a_worker_that_takes_the_lock_after_another_rebuilt_the_state_does_not_again(
    fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers see the state unknown; the first rebuilds it and lets go of the lock
    just before the second takes it: the second finds the state known and does nothing
    (a second rebuild would pause dispatching and wait for steps in flight again)."""
    dep, svc = fresh_deployment, fresh_deployment.svc
    forget_state(dep)
    first = svc.recovery.recover("auto:first", inflight_wait_s=0)
    seen: list[bool] = []
    known = svc.markers.known

    def saw_unknown_first(generation: int) -> bool:
        # the second worker's first look happened before the first worker's rebuild ended
        seen.append(known(generation) if seen else False)
        return seen[-1]

    monkeypatch.setattr(svc.markers, "known", saw_unknown_first)
    assert svc.recovery.ensure("auto:second") is True
    assert seen == [False, True]
    assert svc.deployments.generation() == first.generation  # no second rebuild
    assert not svc.redis.exists(svc.keys.recovery_lock())


def test_a_recovery_that_outlived_its_lock_leaves_the_next_holder_s_lock(
    fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep, svc = fresh_deployment, fresh_deployment.svc
    forget_state(dep)
    lock = svc.keys.recovery_lock()
    recover: Callable[..., Any] = svc.recovery.recover

    def lock_expires_and_is_taken(actor: str, **kw: Any) -> Any:
        svc.redis.set(lock, "auto:other")  # our ttl ran out; another worker took it
        return recover(actor, **kw)

    monkeypatch.setattr(svc.recovery, "recover", lock_expires_and_is_taken)
    assert svc.recovery.ensure("auto:slow") is True
    assert svc.redis.get(lock) in (b"auto:other", "auto:other")
    svc.redis.delete(lock)
