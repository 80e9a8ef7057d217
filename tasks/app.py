"""The Celery app: the only place agentrt touches Celery's configuration.

``celery -A tasks.app worker`` (or ``agentrt worker``) builds the app from ``AGENTRT_*``
settings. Choices, with reasons (see ../shared/reference/celery-redis.md):

* JSON only: a broker message is never unpickled.
* ``acks_late`` + prefetch 1: a step whose worker dies is delivered again, and a worker
  holds at most one unstarted step per process.
* no ``task_retry_on_worker_lost``: a SIGKILLed/OOM-killed pool child's step is re-sent
  by the scheduler's hand-back alone, which counts its deaths and dead-letters it on the
  (AGENTRT_WORKER_LOST_RETRIES + 1)th (``tasks.steps``); a second, Celery-side re-send
  would bring two copies back per death and count them apart.
* the visibility timeout must exceed the longest step (checked here), or kombu would hand
  a still-running step to a second worker.
* kombu's restore of a dead worker's unacked messages runs under a Redis mutex that a
  worker SIGKILLed while holding it leaves locked for ``unacked_mutex_expire`` (kombu's
  default 300 s): no message comes back for that long. A short expiry bounds the stall;
  two restorers at once are safe (each restore is a WATCHed transaction).
* broker keys live under the namespace (``global_keyprefix``) so deployments can share a
  Redis; one small fixed queue, fairness is ours (scheduling issue), not per-tenant queues.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from kombu import Queue  # type: ignore[attr-defined]

from runtime import deployment, telemetry
from runtime.config import RuntimeConfig, load_config
from runtime.errors import SettingsError
from runtime.keys import Keys
from runtime.service import RuntimeService
from runtime.settings import Settings
from runtime.wiring import Endpoints, build_service, load_registry, resolve_endpoints
from tasks import broker_faults, metrics, poison, pump, schedules, steps
from tasks.messages import STEP_QUEUE, STEP_TASK
from tasks.publish import CeleryPublisher

__all__ = ["STEP_QUEUE", "STEP_TASK", "AgentrtCelery", "celery_config", "create_app"]

log = logging.getLogger("agentrt.tasks")
#: longest countdown the runtime itself schedules (a deferred step)
MAX_COUNTDOWN_S = 30.0


def restore_mutex_expire_s(settings: Settings) -> int:
    """How long a dead restorer can block the next restore (see the module docstring)."""
    return int(max(30.0, 3 * settings.unacked_restore_interval_s))


def min_visibility_timeout(config: RuntimeConfig) -> float:
    return config.lease_ttl_s() + MAX_COUNTDOWN_S


def celery_config(
    settings: Settings, config: RuntimeConfig, endpoints: Endpoints
) -> dict[str, Any]:
    needed = min_visibility_timeout(config)
    if settings.visibility_timeout_s <= needed:
        raise SettingsError(
            f"AGENTRT_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} must exceed the longest "
            f"step ({config.max_step_timeout_s():g}s) plus its hard-limit grace, chain window, "
            "lease margin and deferral "
            f"(> {needed:g}s), or a running step would be handed to a second worker"
        )
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": restore_mutex_expire_s(settings),
        "global_keyprefix": Keys(settings.namespace).broker_prefix(),
        "priority_steps": [0],
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
    return {
        "broker_url": endpoints.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_retry_on_worker_lost": False,
        "task_acks_on_failure": True,
        "task_acks_on_timeout": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [Queue(STEP_QUEUE)],
        "task_default_queue": STEP_QUEUE,
        "task_create_missing_queues": False,
        "worker_send_task_events": settings.task_events,
        # "sent" events would cost every step a second publish (workers send the next step);
        # Flower shows a step from the moment a worker receives it
        "task_send_sent_event": False,
        "worker_soft_shutdown_timeout": 10.0,
        "worker_hijack_root_logger": False,
    }


class AgentrtCelery(Celery):  # type: ignore[misc]
    """A Celery app that knows its runtime settings and builds the service per process."""

    agentrt_settings: Settings
    agentrt_config: RuntimeConfig
    agentrt_endpoints: Endpoints
    _agentrt_service: RuntimeService | None = None
    _agentrt_pid: int = 0

    def runtime_service(self) -> RuntimeService:
        # one per process, built lazily: a prefork child never uses connections (Redis,
        # SQL) its parent opened, even when the pool forks children after the parent
        # built its own service (the scheduler pump runs in the main process)
        if self._agentrt_service is None or self._agentrt_pid != os.getpid():
            self._agentrt_pid = os.getpid()
            self._agentrt_service = build_service(
                self.agentrt_settings,
                self.agentrt_config,
                endpoints=self.agentrt_endpoints,
                registry=load_registry(self.agentrt_config, str(self.agentrt_settings.config)),
                publisher=CeleryPublisher(self),
            )
        return self._agentrt_service

    def reload_runtime(self) -> RuntimeService:
        """Switch this process to the config the deployment enforces now (one was applied
        while it ran); the next steps run under it. Raises ConfigError if this process
        cannot load it (a tool module it names is missing here)."""
        current = self.runtime_service()
        applied = current.deployments.applied()
        if applied is None or applied.digest == current.config_digest:
            return current
        config = deployment.load_applied(applied)
        load_registry(config, f"applied config {applied.version}")
        log.warning(
            "the deployment now enforces config %s (%s): switching to it",
            applied.version,
            applied.digest[:12],
        )
        self.agentrt_config = config
        current.close()
        self._agentrt_service = None
        return self.runtime_service()


def create_app(
    settings: Settings | None = None, endpoints: Endpoints | None = None
) -> AgentrtCelery:
    settings = settings or Settings()
    config = load_config(settings.config)
    # every start-up check (tool modules, manifest, rules) before a worker takes a task
    load_registry(config, str(settings.config))
    endpoints = endpoints or resolve_endpoints(settings)
    app = AgentrtCelery("agentrt", set_as_current=False)
    app.conf.update(celery_config(settings, config, endpoints))
    app.agentrt_settings = settings
    app.agentrt_config = config
    app.agentrt_endpoints = endpoints
    broker_faults.guard_closed_connections()
    steps.register(app)
    pump.register(app)
    poison.register(app)
    schedules.register(app)
    metrics.register(app)
    return app


_default_app: AgentrtCelery | None = None


def default_app() -> AgentrtCelery:
    global _default_app
    if _default_app is None:
        _default_app = create_app()
    return _default_app


def __getattr__(name: str) -> Any:
    # `celery -A tasks.app` looks up `app`; build it on first use, not at import
    if name in ("app", "celery"):
        return default_app()
    raise AttributeError(name)


#: pools whose tasks run on threads or greenlets: a call that outlives its timeout cannot be
#: stopped there, so it would keep running after its slot, lock and bulkhead place are given
#: back (a bulkhead of 1 let 3 calls run at once)
UNSTOPPABLE_POOLS = {"thread": "threads", "gevent": "gevent", "eventlet": "eventlet"}


def unstoppable_pool(pool_cls: Any) -> str | None:
    """The pool's name if its tasks cannot be interrupted, else None."""
    module = str(getattr(pool_cls, "__module__", pool_cls) or "")
    return UNSTOPPABLE_POOLS.get(module.rsplit(".", 1)[-1])


@signals.worker_init.connect
def _init_error_reporting(sender: Any = None, **_: Any) -> None:
    # in the worker's main process, before the pool forks: the Celery integration patches
    # Celery's tracer at init, so it must run before any task, and children inherit it
    # (the SDK restarts its sender thread in each child). No DSN: sentry_sdk is not imported.
    app = getattr(sender, "app", None)
    if not isinstance(app, AgentrtCelery) or app.agentrt_settings.sentry_dsn is None:
        return
    from sentry_sdk.integrations.celery import CeleryIntegration

    from runtime.error_reporting import init_sentry

    # beat schedules are ours (tasks.schedules), not Sentry crons; the step's own spans
    # would only repeat the runtime's trace
    init_sentry(
        app.agentrt_settings,
        integrations=[CeleryIntegration(monitor_beat_tasks=False, propagate_traces=False)],
    )


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_spans(**_: Any) -> None:
    # the batch exporter holds the last spans of a process about to exit (no-op: no spans)
    telemetry.flush()


@signals.worker_init.connect
def _refuse_unstoppable_pools(sender: Any = None, **_: Any) -> None:
    if not isinstance(getattr(sender, "app", None), AgentrtCelery):
        return
    name = unstoppable_pool(getattr(sender, "pool_cls", None))
    if name is not None:
        log.critical(
            "the %s pool cannot stop a tool call that outlives its timeout (the call would go "
            "on after its slot, lock and bulkhead place were given back): run the worker with "
            "-P prefork (default) or -P solo",
            name,
        )
        raise SystemExit(2)


#: set (to 1) by ``agentrt worker --apply-config``: this worker's file becomes the deployment's
APPLY_CONFIG_ENV = "AGENTRT_APPLY_CONFIG"


@signals.worker_init.connect
def _prepare_deployment(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if not isinstance(app, AgentrtCelery):
        return
    # once, in the main process before forking; children open their own engines
    svc = app.runtime_service()
    try:
        try:
            svc.store.create_schema()
        except SettingsError as exc:  # an older schema (SchemaOutOfDate), an unknown one
            # a worker_init receiver's Exception is only logged by Celery: exit instead
            log.critical("%s", exc)
            raise SystemExit(2) from exc
        worker = str(getattr(sender, "hostname", None) or "worker")
        gap = deployment.drift(app.agentrt_config, svc.deployments)
        if gap is not None and os.environ.get(APPLY_CONFIG_ENV) != "1":
            log.critical(
                "config drift: %s. A worker enforces the deployment's config only: deploy the "
                "applied file here, or start this worker with --apply-config to make this file "
                "the deployment's (agentrt config apply does the same without a worker)",
                gap.describe(str(app.agentrt_settings.config)),
            )
            raise SystemExit(2)
        # the first worker of a deployment applies its file; later ones confirm the same
        # config (and build Redis's state from SQL if there is nothing to wait for)
        change = svc.apply_config(f"worker:{worker}")
        if change.changed:
            log.warning(
                "applied config %s (%s) to the deployment%s",
                change.version,
                change.digest[:12],
                f" (was {change.previous.version})" if change.previous else "",
            )
    finally:
        svc.close()
        app._agentrt_service = None
