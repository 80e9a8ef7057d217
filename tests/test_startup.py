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
