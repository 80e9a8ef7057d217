"""The default step publisher (``AGENTRT_PUBLISHER=tasks.producer:publisher_for``): a
producer-only Celery app for processes that submit runs but run no worker (web apps
through ``Runtime.from_env()``, the CLI)."""

from __future__ import annotations

from runtime.endpoints import Endpoints
from runtime.settings import Settings
from tasks.app import create_app
from tasks.publish import CeleryPublisher


def publisher_for(settings: Settings, endpoints: Endpoints) -> CeleryPublisher:
    return CeleryPublisher(create_app(settings, endpoints))
