"""Route execution modes: validated at load (names the bad key), recorded by submit."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.config import parse_config
from runtime.errors import AdmissionRefused, ConfigError
from runtime.wiring import load_registry
from tests.schedule_tools import REPLY, schedule_config, schedule_deployment
from tests.support import Deployment


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_registry(parse_config(data, "modes.yaml"), "modes.yaml")
    return info.value.problems


def parse_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "modes.yaml")
    return info.value.problems


def test_the_default_mode_is_durable_workflow_and_a_route_names_what_it_allows() -> None:
    config = parse_config(schedule_config(), "modes.yaml")
    assert config.routes["r.basic"].execution_mode == "durable_workflow"
    assert config.routes["r.basic"].modes() == ("durable_workflow",)
    assert config.routes["r.basic"].sync_timeout_s == 10
    assert config.routes["r.sched"].modes() == ("async_job", "durable_workflow", "sync")
    load_registry(config, "modes.yaml")  # sync with no irreversible tool: accepted


def test_a_sync_route_may_not_allow_an_irreversible_tool() -> None:
    data = schedule_config()
    data["routes"]["r.refunds"]["execution_mode"] = "sync"
    assert problems(data) == [
        "routes.r.refunds.execution_mode: a route that may run sync cannot allow the "
        "irreversible tool 'payments.refund' (allowed_tools); make it durable_workflow or "
        "async_job, or remove the tool"
    ]
    # a request allowed to ask for sync is the same risk
    data = schedule_config()
    data["routes"]["r.refunds"]["execution_modes_allowed"] = ["sync"]
    (problem,) = problems(data)
    assert problem.startswith("routes.r.refunds.execution_modes_allowed: ")
    assert "'payments.refund'" in problem


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"execution_mode": "batch"}, "routes.r.sched.execution_mode: Input should be"),
        (
            {"execution_modes_allowed": ["sync", "sync"]},
            "routes.r.sched: execution_modes_allowed names sync twice",
        ),
        ({"execution_modes_allowed": ["later"]}, "routes.r.sched.execution_modes_allowed.0: "),
        ({"sync_timeout_s": 0}, "routes.r.sched.sync_timeout_s: Input should be greater than 0"),
        ({"sync_timeout_s": 121}, "routes.r.sched.sync_timeout_s: Input should be less than"),
    ],
)
def test_bad_mode_settings_name_their_key(change: dict[str, Any], expected: str) -> None:
    data = schedule_config()
    data["routes"]["r.sched"].update(change)
    found = parse_problems(data)
    assert any(p.startswith(expected) for p in found), found


def submit(dep: Deployment, **kw: Any) -> Any:
    return dep.svc.submit(
        "t1",
        kw.pop("route", "r.sched"),
        "mode test",
        {"script": [REPLY]},
        actor="tester",
        request_id=kw.pop("request_id", uuid.uuid4().hex),
        **kw,
    )


def test_runs_record_their_routes_mode_or_an_allowed_override(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with schedule_deployment(request, backend, redis_url, tmp_path) as dep:
        plain = submit(dep)
        asked = submit(dep, execution_mode="durable_workflow")
        default = submit(dep, route="r.basic")
        assert [plain.execution_mode, asked.execution_mode, default.execution_mode] == [
            "async_job",
            "durable_workflow",
            "durable_workflow",
        ]
        assert [plain.status, asked.status] == ["queued", "queued"]
        stored = dep.svc.get(asked.run_id)
        assert stored.execution_mode == "durable_workflow"

        denied = submit(dep, route="r.basic", execution_mode="sync")
        assert denied.status == "refused"
        assert denied.stop_reason == "refused:execution_mode_not_allowed"
        assert denied.execution_mode == "durable_workflow"
        assert "route 'r.basic' runs as durable_workflow; not sync" in str(denied.output)
        bogus = submit(dep, execution_mode="batch")
        assert bogus.stop_reason == "refused:invalid_execution_mode"

        # the mode asked for is part of the payload: a repeat must ask for the same one
        rid = uuid.uuid4().hex
        first = submit(dep, request_id=rid, execution_mode="sync")
        assert first.execution_mode == "sync"
        assert submit(dep, request_id=rid, execution_mode="sync").run_id == first.run_id
        with pytest.raises(AdmissionRefused) as info:
            submit(dep, request_id=rid)
        assert info.value.code == "idempotency_conflict"
        assert info.value.fields == ("execution_mode",)
        # and a request naming no mode repeats as it always did
        rid = uuid.uuid4().hex
        assert submit(dep, request_id=rid).run_id == submit(dep, request_id=rid).run_id


def test_the_cli_asks_for_a_mode(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from runtime.cli.main import app

    with schedule_deployment(request, "sqlite", redis_url, tmp_path) as dep:
        for name, value in dep.env.items():
            monkeypatch.setenv(name, value)
        base = ["submit", "--tenant", "t1", "--goal", "g", "-i", json.dumps({"script": [REPLY]})]
        ok = CliRunner().invoke(
            app, [*base, "--route", "r.sched", "--execution-mode", "sync", "--json"]
        )
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["executionMode"] == "sync"
        refused = CliRunner().invoke(app, [*base, "--route", "r.basic", "--execution-mode", "sync"])
        assert refused.exit_code == 2
        assert "refused:execution_mode_not_allowed" in refused.stderr
        bad = CliRunner().invoke(app, [*base, "--route", "r.basic", "--execution-mode", "batch"])
        assert bad.exit_code == 2 and "--execution-mode" in bad.stderr
