"""A deployment file with schedules and execution modes, for the schedule and mode tests."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, Deployment, pg_schema_url

TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
REPLY = {"type": "reply", "text": "done", "usage": {"input_tokens": 10, "output_tokens": 5}}


def base_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TEST_CONFIG.read_text())
    return data


def schedule_config(schedules: dict[str, Any] | None = None) -> dict[str, Any]:
    """The test file plus ``r.sched`` (async_job; a request may ask for durable_workflow
    or sync) and the given schedules (default: ``hourly``, one of ``r.sched`` for t1)."""
    data = base_config()
    sched = copy.deepcopy(data["routes"]["r.basic"])
    sched.update(
        execution_mode="async_job",
        execution_modes_allowed=["durable_workflow", "sync"],
        sync_timeout_s=5,
    )
    data["routes"]["r.sched"] = sched
    data["schedules"] = (
        schedules
        if schedules is not None
        else {
            "hourly": {
                "cron": "0 * * * *",
                "tenant": "t1",
                "route": "r.sched",
                "goal": "hourly report",
                "input": {"script": [REPLY]},
            }
        }
    )
    return data


def write_config(data: dict[str, Any], directory: Path) -> Path:
    path = directory / f"runtime-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def schedule_deployment(
    request: pytest.FixtureRequest,
    backend: str,
    redis_url: str,
    tmp_path: Path,
    data: dict[str, Any] | None = None,
) -> Iterator[Deployment]:
    """A private deployment on ``backend`` whose file is ``data`` (``schedule_config()``)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'agentrt.db'}"
    else:
        base = request.getfixturevalue("pg_base_url")
        url = pg_schema_url(base, f"agentrt_t_{uuid.uuid4().hex[:10]}")
    dep = Deployment.create(
        name=f"c{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=url,
        config=write_config(data or schedule_config(), tmp_path),
        home=tmp_path,
    )
    try:
        yield dep
    finally:
        dep.close()
