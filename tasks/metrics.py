"""A worker's Prometheus port (``agentrt worker --metrics-port N``, ``AGENTRT_METRICS_PORT``).

Served by the worker's main process only: the HTTP server is a thread started at
``worker_ready``, after the prefork pool forked, and a forked child never runs its
parent's threads. The values are read from the shared state at each scrape
(``runtime.metrics``), so which process or host serves them does not matter and no
``PROMETHEUS_MULTIPROC_DIR`` is needed. Off by default."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import signals

from runtime.service import RuntimeService
from runtime.wiring import build_metric_sources
from tasks.host import RuntimeHost

if TYPE_CHECKING:
    from runtime.metrics import MetricSources

log = logging.getLogger("agentrt.metrics")


def register(app: RuntimeHost) -> None:
    servers: list[Any] = []
    cache: dict[int, MetricSources] = {}

    def current() -> MetricSources:
        # the main process's service: a newly applied config replaces it (the pump reloads)
        svc: RuntimeService = app.runtime_service()
        if id(svc) not in cache:
            cache.clear()
            cache[id(svc)] = build_metric_sources(svc)
        return cache[id(svc)]

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        settings = app.agentrt_settings
        if getattr(sender, "app", None) is not app or settings.metrics_port is None:
            return
        # imported here: prometheus_client only in a worker that serves metrics
        from prometheus_client import start_http_server

        from runtime import metrics

        try:
            server, _thread = start_http_server(
                settings.metrics_port,
                addr=settings.metrics_host,
                registry=metrics.registry(current),
            )
        except OSError as exc:  # the port is taken: the worker runs steps, without metrics
            log.critical(
                "metrics port %s:%d not served: %s",
                settings.metrics_host,
                settings.metrics_port,
                exc,
            )
            return
        servers.append(server)
        log.warning("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    @signals.worker_shutting_down.connect(weak=False)
    def _stop(**_: Any) -> None:
        for server in servers:
            server.shutdown()
            server.server_close()
        servers.clear()
