"""Fixtures: a real Redis server, real SQL (SQLite and PostgreSQL), real Celery workers.

Nothing here fakes a component: workers are ``celery worker`` subprocesses (prefork), Redis
is a real server, the store is SQLite (WAL) or PostgreSQL (a schema per session).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# the user's AGENTRT_* environment must not leak into tests
for _name in [
    n for n in os.environ if n.startswith("AGENTRT_") and not n.startswith("AGENTRT_TEST_")
]:
    del os.environ[_name]

from runtime import report_context  # noqa: E402
from runtime.embedded_redis import start_server  # noqa: E402
from tests import services  # noqa: E402
from tests.support import Deployment, pg_schema_url  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"


@pytest.fixture(autouse=True)
def _clean_report_notes() -> None:
    """A step a test runs in its own thread and lets raise keeps its error-report notes
    on the thread (by design: a worker reports the exception after the step); every test
    starts clean, whatever ran before it."""
    report_context.clear()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("AGENTRT_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = start_server(tmp_path_factory.mktemp("redis"), persistent=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    reason = services.pg_reachable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {reason}")
        pytest.skip(f"PostgreSQL unreachable at {services.pg_url()}: {reason}")
    return services.pg_url()


def _database_url(backend: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'agentrt.db'}"
    base = request.getfixturevalue("pg_base_url")
    return pg_schema_url(base, f"agentrt_t_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_base_url")
    return str(request.param)


@pytest.fixture(scope="session")
def deployment(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    """A deployment on ``backend`` with one prefork worker (2 processes), shared by tests."""
    tmp = tmp_path_factory.mktemp(f"dep-{backend}")
    dep = Deployment.create(
        name=f"s{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=TEST_CONFIG,
        home=tmp,
    )
    dep.start_worker(concurrency=2)
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def fresh_deployment(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """A private deployment (own namespace, SQLite) whose workers a test may kill."""
    dep = Deployment.create(
        name=f"f{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentrt.db'}",
        config=TEST_CONFIG,
        home=tmp_path,
    )
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def fresh_deployment_on(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """Like ``fresh_deployment`` but on each SQL backend."""
    dep = Deployment.create(
        name=f"f{uuid.uuid4().hex[:6]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp_path),
        config=TEST_CONFIG,
        home=tmp_path,
    )
    try:
        yield dep
    finally:
        dep.close()
