"""The scheduler pump: a thread in each worker's main process.

Every ``PUMP_INTERVAL_S`` it reports the worker's capacity (pool processes), promotes
delayed steps whose time came, expires slot leases of dead workers and dispatches what may
run now. Step completions and submissions dispatch too; the pump covers time passing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import signals

if TYPE_CHECKING:
    from tasks.app import AgentrtCelery

log = logging.getLogger("agentrt.pump")

PUMP_INTERVAL_S = 0.2


class Pump:
    def __init__(self, app: AgentrtCelery, worker: str, processes: int) -> None:
        self.app = app
        self.worker = worker
        self.processes = processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentrt-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        svc = self.app.runtime_service()
        while not self._stop.is_set():
            try:
                outcome = svc.pump(self.worker, self.processes)
                for item in outcome.expired:
                    log.warning("slot lease of %s step %s expired: queued again", item.run_id,
                                item.step_no)  # fmt: skip
            except Exception:  # keep pumping through Redis hiccups; each round is atomic
                log.exception("scheduler pump round failed")
            self._stop.wait(PUMP_INTERVAL_S)


def register(app: AgentrtCelery) -> None:
    pumps: dict[str, Pump] = {}

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        processes = int(getattr(sender.controller, "concurrency", 0) or 1)
        pump = Pump(app, str(sender.hostname), processes)
        pumps[pump.worker] = pump
        pump.start()

    @signals.worker_shutting_down.connect(weak=False)
    def _stop(**_: Any) -> None:
        for pump in list(pumps.values()):
            pump.stop()
        pumps.clear()
