"""The scheduler pump: a thread in each worker's main process.

Every ``PUMP_INTERVAL_S`` it reports the worker's capacity (pool processes), promotes
delayed steps whose time came, expires slot leases of dead workers and dispatches what may
run now. Step completions and submissions dispatch too; the pump covers time passing.

The worker's identity is its main process's instance id (``runtime.locks.identity``): the
capacity it reports is keyed by it, so two workers started with one node name (containers
sharing a host name) are counted apart. The main process also vouches for its pool
processes' heartbeats: they stay alive while their pids do, and one that exited is declared
dead at once, so the steps and locks it held are taken over without waiting for its ttl.

Every ``RECONCILE_INTERVAL_S`` it also offers a reconciler round (``runtime.reconciler``):
expired budget holds, runs whose step was lost, dead-letter retention. A Redis lock makes
that one round per interval across all workers, whichever worker gets it.

When a round finds Redis's state unknown (Redis lost its data, or was restored from an old
snapshot: ``runtime.state``), the pump runs recovery itself: the first worker to take the
recovery lock waits for steps in flight, rebuilds the ledger and the queues from SQL and
lets dispatching go on; no operator is needed. It also follows the deployment's config: a
newly applied one is loaded at the next reconcile interval (steps switch at their next
step).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

from runtime.reconciler import Reconciler
from runtime.service import RuntimeService
from runtime.wiring import build_reconciler
from tasks.host import RuntimeHost

log = logging.getLogger("agentrt.pump")

PUMP_INTERVAL_S = 0.2
#: how often a worker that found Redis's state unknown tries to (or waits for another to)
#: rebuild it
RECOVERY_RETRY_S = 2.0
#: how often a worker offers a reconciler round (also the round's lock ttl)
RECONCILE_INTERVAL_S = 5.0


class Pump:
    def __init__(
        self,
        app: RuntimeHost,
        worker: str,
        processes: int,
        reconcile_interval_s: float = RECONCILE_INTERVAL_S,
    ) -> None:
        self.app = app
        self.worker = worker
        self.processes = processes
        self.reconcile_interval_s = reconcile_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentrt-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        svc = self.app.runtime_service()
        reconciler = build_reconciler(svc, interval_s=self.reconcile_interval_s)
        next_reconcile = time.monotonic()
        next_recovery = time.monotonic()
        while not self._stop.is_set():
            known = True
            try:
                outcome = svc.pump(self.worker, self.processes)
                known = outcome.state_known
                for item in outcome.expired:
                    log.warning("slot lease of %s step %s expired: queued again", item.run_id,
                                item.step_no)  # fmt: skip
                dead = " ".join(outcome.dead_instances)
                for item in outcome.handed_back:
                    log.warning("step %s/%s handed back: its owner instance is dead (%s)",
                                item.run_id, item.step_no, dead)  # fmt: skip
            except Exception:  # keep pumping through Redis hiccups; each round is atomic
                log.exception("scheduler pump round failed")
            if not known and time.monotonic() >= next_recovery:
                next_recovery = time.monotonic() + RECOVERY_RETRY_S
                self._recover(svc)
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.reconcile_interval_s
                fresh = self._follow_config(svc)
                if fresh is not svc:
                    svc = fresh
                    reconciler = build_reconciler(fresh, interval_s=self.reconcile_interval_s)
                self._reconcile(reconciler)
            self._stop.wait(PUMP_INTERVAL_S)

    def _recover(self, svc: RuntimeService) -> None:
        """Rebuild Redis's state from SQL unless another worker is at it (blocks this
        worker's pump for the in-flight wait; the other workers keep heartbeating)."""
        try:
            svc.recovery.ensure(f"auto:{self.worker}")
        except Exception:
            log.exception("automatic recovery failed; retrying in %.0fs", RECOVERY_RETRY_S)

    def _follow_config(self, svc: RuntimeService) -> RuntimeService:
        try:
            published = svc.scheduler.published()
            if published is not None and published[1] != svc.config_digest:
                return self.app.reload_runtime()
        except Exception:
            log.exception("could not switch to the newly applied config")
        return svc

    @staticmethod
    def _reconcile(reconciler: Reconciler) -> None:
        """One reconciler round; whatever it raises is logged, never ends the pump."""
        try:
            reconciler.reconcile()
        except Exception:
            log.exception("reconciler round failed")


def register(app: RuntimeHost) -> None:
    pumps: dict[str, Pump] = {}

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        processes = int(getattr(sender.controller, "concurrency", 0) or 1)
        liveness = app.runtime_service().leases.liveness
        pool = getattr(sender.controller, "pool", None)
        liveness.vouch_for(lambda: pool_pids(pool))
        pump = Pump(app, f"{sender.hostname}#{liveness.instance()}", processes)
        pumps[pump.worker] = pump
        pump.start()

    @signals.worker_shutting_down.connect(weak=False)
    def _stop(**_: Any) -> None:
        for pump in list(pumps.values()):
            pump.stop()
        pumps.clear()


def pool_pids(pool: Any) -> set[int] | None:
    """The pids of a prefork pool's processes (Celery's own ``pool.info``); None when the
    pool has no processes of its own or cannot tell (stopping)."""
    try:
        procs = pool.info.get("processes") if pool is not None else None
    except Exception:
        return None
    if not isinstance(procs, list):
        return None
    return {p for p in procs if isinstance(p, int)}
