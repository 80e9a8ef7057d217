"""Start-up refuses what would fail later: a bad config file, an evicting ledger Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from runtime.embedded_redis import start_server
from runtime.errors import SettingsError
from runtime.scheduling.scheduler import Ops
from runtime.settings import Settings
from runtime.wiring import Runtime
from tests.support import ROOT


def test_worker_with_a_bad_config_exits_naming_the_key(tmp_path: Path, redis_url: str) -> None:
    bad = (ROOT / "tests" / "config" / "runtime.yaml").read_text()
    bad = bad.replace(
        "proposer: scripted\n    allowed_tools: [kb.search]\n    budget_policy: tiny",
        "proposer: gpt-9\n    allowed_tools: [kb.search]\n    budget_policy: tiny",
    )
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    env = {
        **os.environ,
        "AGENTRT_CONFIG": str(path),
        "AGENTRT_REDIS_URL": redis_url,
        "AGENTRT_HOME": str(tmp_path),
        "AGENTRT_VISIBILITY_TIMEOUT_S": "60",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-P", "solo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "routes.r.tiny.proposer: unknown model 'gpt-9'" in proc.stdout + proc.stderr


def test_evicting_redis_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "lru", persistent=False)
    try:
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        settings = Settings(
            redis_url=server.url,
            database_url=f"sqlite:///{tmp_path / 'db'}",
            config=ROOT / "tests" / "config" / "runtime.yaml",
        )
        with pytest.raises(SettingsError, match="maxmemory-policy='allkeys-lru'"):
            Runtime.from_settings(settings)
        # an explicit, named opt-out exists for managed Redis that hides CONFIG
        svc = Runtime.from_settings(settings.model_copy(update={"allow_evicting_redis": True}))
        svc.close()
    finally:
        server.stop()


def test_visibility_timeout_below_the_longest_step_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    from tasks.app import create_app

    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'db'}",
        config=ROOT / "tests" / "config" / "runtime.yaml",
        visibility_timeout_s=30,
    )
    with pytest.raises(SettingsError, match="VISIBILITY_TIMEOUT_S=30 must exceed"):
        create_app(settings)


class RecordingPublisher:
    """A publisher named by AGENTRT_PUBLISHER in the tests below: it keeps what it is given."""

    built: list[tuple[str, str]] = []

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.items: list[object] = []

    def publish(self, item: object) -> None:
        self.items.append(item)

    def redeclare(self) -> None:
        pass


def recording_publisher(settings: Settings, endpoints: object) -> RecordingPublisher:
    RecordingPublisher.built.append((settings.namespace, type(endpoints).__name__))
    return RecordingPublisher(settings.namespace)


def test_the_publisher_is_the_one_the_setting_names(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'db'}",
        config=ROOT / "tests" / "config" / "runtime.yaml",
        namespace=f"pub{os.getpid()}",
        publisher="tests.test_startup:recording_publisher",
    )
    RecordingPublisher.built.clear()
    svc = Runtime.from_settings(settings)
    try:
        # built on first use only: a process that never dispatches builds none
        assert RecordingPublisher.built == []
        svc.apply_config("test")  # (its first recovery re-declares the broker queue)
        view = svc.submit("t1", "r.basic", "g", {"script": []}, actor="test")
        assert RecordingPublisher.built == [(settings.namespace, "Endpoints")]
        # a worker reports capacity: the queued step is dispatched and published
        svc.schedule(Ops().heartbeat("w-test", 1, 60_000).dispatch(1))
        publisher = svc.publisher
        assert isinstance(publisher, RecordingPublisher)
        assert [item.run_id for item in publisher.items] == [view.run_id]  # type: ignore[attr-defined]
    finally:
        svc.close()


def test_a_publisher_setting_that_names_nothing_is_refused_naming_it(
    tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'db'}",
        config=ROOT / "tests" / "config" / "runtime.yaml",
        publisher="tests.test_startup:no_such_factory",
    )
    with pytest.raises(SettingsError, match="AGENTRT_PUBLISHER="):
        Runtime.from_settings(settings)


def test_the_domain_never_imports_the_celery_edge() -> None:
    # the façade and every component build without tasks/ or Celery in the process
    code = (
        "import sys\n"
        "import runtime.service, runtime.step.runner, runtime.dispatch, runtime.recovery\n"
        "import runtime.reconciler, runtime.dead_letters, runtime.compensation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tasks', 'celery', 'kombu')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
