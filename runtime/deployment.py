"""One config for the whole deployment: applied by its owner, enforced by every process.

``agentrt config apply`` (or a worker started with ``--apply-config``, or the first worker
of a new deployment) validates a deployment file, records it in SQL and publishes its
scheduling limits to Redis with its digest. Every other process compares its own file
with the applied one: a web app or CLI command whose file differs says so and enforces the
applied config; a worker whose file differs refuses to start unless told to take over; a
running worker notices a newly applied config at its next step and switches to it.
Nothing but the owner ever writes the published limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import RuntimeConfig, config_digest, config_document, parse_config
from runtime.scheduling.scheduler import Scheduler
from runtime.store.deployment import AppliedConfig, DeploymentStore


@dataclass(frozen=True)
class ConfigChange:
    """What ``apply`` did."""

    version: str
    digest: str
    #: the config applied before (None: this is the first)
    previous: AppliedConfig | None

    @property
    def changed(self) -> bool:
        return self.previous is None or self.previous.digest != self.digest


@dataclass(frozen=True)
class Drift:
    """A process's own file differs from the applied config."""

    file_version: str
    file_digest: str
    applied: AppliedConfig

    def describe(self, source: str) -> str:
        return (
            f"{source} is version {self.file_version} ({self.file_digest[:12]}) but the "
            f"deployment enforces version {self.applied.version} "
            f"({self.applied.digest[:12]}, applied by {self.applied.actor} at "
            f"{self.applied.applied_at:%Y-%m-%d %H:%M:%S} UTC)"
        )


def apply(
    scheduler: Scheduler, deployments: DeploymentStore, *, source: str, actor: str
) -> ConfigChange:
    """Record the scheduler's config as the applied one (if it is new) and publish its
    limits. The caller validated it (``load_config`` + ``load_registry``)."""
    config = scheduler.config
    digest = config_digest(config)
    previous = deployments.applied()
    if previous is None or previous.digest != digest:
        deployments.record(digest, config.version, config_document(config), source, actor)
    scheduler.publish_config(config.version, digest)
    return ConfigChange(config.version, digest, previous)


def drift(config: RuntimeConfig, deployments: DeploymentStore) -> Drift | None:
    """How ``config`` (a process's own file) differs from the applied config, if it does."""
    applied = deployments.applied()
    digest = config_digest(config)
    if applied is None or applied.digest == digest:
        return None
    return Drift(config.version, digest, applied)


def load_applied(applied: AppliedConfig) -> RuntimeConfig:
    """The applied config, validated again as it is loaded (a row edited by hand fails)."""
    return parse_config(applied.document, f"applied config {applied.version}")
