"""Process settings from ``AGENTRT_*`` environment variables.

Built once in an entry point (CLI, Celery app, web app) and passed down; nothing under
``runtime/`` reads the environment by itself. The defaults of where state lives are
``runtime.locations``'s (the CLI's views for people read those settings without
pydantic-settings).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.locations import DEFAULT_CONFIG, DEFAULT_HOME, ENV_PREFIX

#: ``<scheme>://<public key>[:<secret>]@<host>[:<port>]/[<path>/]<project id>``
_DSN = re.compile(
    r"^https?://[A-Za-z0-9]+(:[A-Za-z0-9]+)?@[A-Za-z0-9.\-]+(:[0-9]{1,5})?/([^/?#\s]+/)*[0-9]+$"
)


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value may be a credential (a DSN, a URL with a password)
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True
    )

    #: Redis for coordination (ledger, leases, locks). Unset: start an embedded server.
    redis_url: str | None = None
    #: Redis the tools' own state and effect journals live in (``ctx.redis``); defaults to
    #: ``redis_url``. Keep it apart so losing the runtime's Redis does not lose tool state.
    tool_redis_url: str | None = None
    #: Celery broker; defaults to ``redis_url``.
    broker_url: str | None = None
    #: SQLAlchemy URL of the source of truth. Unset: SQLite (WAL) under ``home``.
    database_url: str | None = None
    #: the deployment file: tenants, routes, tools, budgets, policy.
    config: Path = DEFAULT_CONFIG
    #: where embedded state lives (SQLite file, embedded Redis data and pid file).
    home: Path = DEFAULT_HOME
    #: prefix of every Redis key (and of the Celery broker keys).
    namespace: str = "agentrt"
    #: Celery visibility timeout; must exceed the longest step (checked at start-up).
    visibility_timeout_s: int = 3600
    #: how often kombu restores unacked messages of dead workers (seconds).
    unacked_restore_interval_s: float = 10.0
    #: bounded re-delivery of a step whose worker process died.
    worker_lost_retries: int = 3
    #: seconds before a step whose worker died is sent again.
    worker_lost_retry_delay_s: float = 1.0
    #: accept a ledger Redis whose maxmemory-policy may evict keys (never in production).
    allow_evicting_redis: bool = False
    #: Sentry DSN (``https://<public key>@<host>/<project id>``); unset disables Sentry.
    #: A secret: kept as ``SecretStr`` so no repr or log of the settings shows it.
    sentry_dsn: SecretStr | None = Field(default=None, repr=False)
    #: the ``environment`` Sentry files events under (production, staging, ...)
    sentry_environment: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    #: share of transactions (performance traces) sent to Sentry; errors are always sent
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: where operators open Flower: the dashboard links a step's Celery task there
    flower_url: str = Field(
        default="http://127.0.0.1:5555", max_length=500, pattern=r"^https?://[^\s\"'<>]+$"
    )
    #: OTLP/HTTP base URL for OpenTelemetry spans (``/v1/traces`` is added); unset: the
    #: standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` if set, else no spans (``runtime.telemetry``)
    otel_endpoint: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
    )
    #: send Celery task events (Flower needs them; costs ~30% of raw throughput).
    task_events: bool = True
    log_level: str = Field(default="INFO")
    #: ``module:callable`` building the step publisher from (settings, endpoints); the
    #: domain never imports the Celery edge, the composition root loads this by name
    publisher: str = "tasks.producer:publisher_for"
    #: ``module:object`` naming the workers' queue, task names and message format
    #: (``runtime.ports.StepMessages``) that dead-letter entries record
    step_messages: str = "tasks.messages:STEP_MESSAGES"
    #: the HTTP API's largest request body (bytes); larger is refused with 413 unread
    api_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: a worker's Prometheus port (``agentrt worker --metrics-port``): served by its main
    #: process only; unset, the worker serves no metrics
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: the address a worker's metrics port listens on
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\-\[\]]+$"
    )
    #: seconds between the SSE stream's polls of a run's trace
    api_events_poll_s: float = Field(default=0.25, gt=0, le=10)

    @field_validator("otel_endpoint", mode="before")
    @classmethod
    def _empty_otel_endpoint(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("sentry_dsn", mode="before")
    @classmethod
    def _check_sentry_dsn(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or text == "":
            return None
        # the message never repeats the value: a DSN's key is a credential
        if not isinstance(text, str) or not _DSN.match(text):
            raise ValueError(
                "AGENTRT_SENTRY_DSN is not a Sentry DSN "
                "(expected http(s)://<public key>@<host>[:<port>]/<project id>)"
            )
        return text
