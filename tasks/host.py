"""The Celery app as the task modules see it: they are handed the app (``tasks.app``
builds it and registers them), never import it, so ``tasks/`` has no import cycle."""

from __future__ import annotations

from typing import Any, Protocol

from runtime.config import RuntimeConfig
from runtime.service import RuntimeService
from runtime.settings import Settings


class RuntimeHost(Protocol):
    """What ``tasks.app.AgentrtCelery`` offers the task modules."""

    conf: Any
    agentrt_settings: Settings
    agentrt_config: RuntimeConfig

    def task(self, *args: Any, **kwargs: Any) -> Any: ...

    def runtime_service(self) -> RuntimeService:
        """This process's service (built lazily, one per process)."""
        ...

    def reload_runtime(self) -> RuntimeService:
        """Switch this process to the config the deployment enforces now."""
        ...
