"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis):
every operation, with requests that fit the schema and requests that break it, under a
tenant key and a cross-tenant ``ops:admin`` key, against a real uvicorn server over a
deployment with a real worker (SQLite and PostgreSQL). No answer is a 5xx, and every error
is an RFC 9457 problem document with a reason.

Bounded for CI (about half a minute per backend): ``EXAMPLES`` cases per operation, generation
mode and key."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.api_support import ALL_SCOPES, Api, serve
from tests.conftest import TEST_CONFIG, _database_url
from tests.support import Deployment

#: cases per operation, generation mode and key (~25 operations x 2 modes x 2 keys); a
#: longer hunt: AGENTRT_TEST_FUZZ_EXAMPLES=200
EXAMPLES = int(os.environ.get("AGENTRT_TEST_FUZZ_EXAMPLES", "25"))
PROBLEM_FIELDS = {"type", "title", "status", "detail", "reason"}


@pytest.fixture(scope="module")
def target(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Api]:
    """A private deployment (the fuzzer creates, cancels and purges at will) with a worker."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{backend}")
    dep = Deployment.create(
        name=f"z{backend[:2]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=TEST_CONFIG,
        home=tmp,
    )
    try:
        dep.start_worker(concurrency=1)
        with serve(dep) as api:
            yield api
    finally:
        dep.close()


def problem_of(case: Case[Any], status: int, content_type: str, text: str) -> list[str]:
    """What is wrong with one answer (empty: nothing)."""
    sent = {"path": case.path_parameters, "query": case.query, "body": case.body}
    where = f"{case.method} {case.formatted_path} {str(sent)[:300]} -> {status}"
    if status >= 500:
        return [f"{where}: server error {text[:300]}"]
    if status < 400:
        return []
    if not content_type.startswith("application/problem+json"):
        return [f"{where}: error is {content_type!r}, not a problem document: {text[:300]}"]
    try:
        body: Any = json.loads(text)
    except ValueError:
        return [f"{where}: problem body is not JSON: {text[:300]}"]
    if not isinstance(body, dict) or not set(body) >= PROBLEM_FIELDS:
        return [f"{where}: problem lacks {PROBLEM_FIELDS - set(body or {})}: {text[:300]}"]
    if body["status"] != status:
        return [f"{where}: problem says status {body['status']}"]
    return []


def fuzz_operation(api: Api, operation: Any, key: str, mode: Any) -> list[str]:
    found: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # a failure is reported as found: shrinking would cost the time budget
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Case[Any]) -> None:
        response = case.call(
            base_url=api.base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        content_type = (response.headers.get("content-type") or [""])[0]
        found.extend(problem_of(case, response.status_code, content_type, response.text))

    # Unsatisfiable: nothing in this operation to break (no parameters, no body)
    with contextlib.suppress(Unsatisfiable):
        run()
    return found


@pytest.mark.slow
def test_fuzz_the_whole_api_from_its_openapi_document(target: Api) -> None:
    api = target
    keys = {"tenant": api.key("t1", ALL_SCOPES), "admin": api.key("*", ["ops:admin"])}
    schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json")
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        # an operation the document describes wrongly is a finding too
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 20, [op.label for op in operations]
    for operation in operations:
        for key in keys.values():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += fuzz_operation(api, operation, key, mode)
    unique = sorted(set(failures))
    assert not unique, "\n".join(unique[:40])
