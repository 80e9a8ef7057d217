"""Evals built from real runs (issue 13): runs made by a real Celery worker are captured as
fixtures and replayed through the real step code, in process, in an isolated Redis
namespace and scratch database (SQLite file / PostgreSQL schema); a candidate policy that
changes an outcome fails the gate; flaky cases are reported; capture rules capture once;
``policy diff`` re-decides stored proposals. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from runtime.cli.main import app
from runtime.config import PolicyConfig
from runtime.eval_config import CaptureRule, EvalsConfig
from runtime.evals import fixture as fx
from runtime.evals.capture import CaptureSweep, fixture_from_run, fixture_path, write_new
from runtime.evals.fixture import Fixture, ToolResult
from runtime.evals.gate import run_gate
from runtime.evals.policy_diff import policy_diff
from runtime.evals.replay import ReplayEngine, ResultHook
from runtime.evals.report import report_of
from runtime.store.db import utcnow
from runtime.store.evals import EvalStore
from tests.support import Deployment

REPLY = {"type": "reply", "text": "done"}
SEARCH = {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"}}


def flaky(key: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "probe.flaky", "args": {"key": key, "by": 2}}


def refund(amount: float) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "tool": "payments.refund",
        "args": {"customer_id": "cus_eval", "amount": amount},
        "usage": {"input_tokens": 40, "output_tokens": 10},
    }


def engine(
    dep: Deployment, tmp: Path, hook: ResultHook | None = None, policy: Any = None
) -> ReplayEngine:
    svc = dep.svc
    config = svc.config if policy is None else svc.config.model_copy(update={"policy": policy})
    return ReplayEngine(
        settings=svc.settings, endpoints=svc.endpoints, config=config, registry=svc.registry,
        result_hook=hook, scratch_dir=tmp,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(deployment: Deployment) -> dict[str, str]:
    """Two ended runs made by the deployment's worker: a dead letter (a write tool down
    for every attempt, after a read) and a refund the policy denied."""
    dep, svc = deployment, deployment.svc
    key = f"ev{uuid.uuid4().hex[:8]}"
    svc.tool_redis.set(svc.keys.demo(f"fail:{key}"), "1")
    dead = dep.submit_script([SEARCH, flaky(key), REPLY], route="r.retry")
    denied = dep.submit_script([refund(5000)], route="r.refunds")
    done = dep.wait_all([dead.run_id, denied.run_id])
    assert done[dead.run_id].stop_reason == "dead_lettered:exhausted"
    assert done[denied.run_id].stop_reason == "policy_denied:refund_cap"
    return {"dead": dead.run_id, "denied": denied.run_id, "key": key}


def test_a_captured_dead_letter_and_a_denied_run_replay_to_the_same_outcome(
    deployment: Deployment, runs: dict[str, str], tmp_path: Path
) -> None:
    svc = deployment.svc
    calls_before = int(svc.tool_redis.get(svc.keys.demo(f"flaky:{runs['key']}:calls")) or 0)
    dead = fixture_from_run(svc.store, runs["dead"], blocking=True)
    denied = fixture_from_run(svc.store, runs["denied"], name="refund-cap", blocking=True)

    # the fixture records the proposals, every execution's result and the outcome
    assert dead.format == 1 and dead.source.run_id == runs["dead"] and dead.case.route == "r.retry"
    assert dead.source.version_set["policy"] == "pol-test-1"
    assert [p["tool"] for p in dead.proposals] == ["kb.search", "probe.flaky"]
    assert [(r.tool, r.ok, r.error_code) for r in dead.tool_results] == [
        ("kb.search", True, None),
        *[("probe.flaky", False, "backend_unavailable")] * 3,
    ]
    assert dead.expected.executed == ["kb.search", "probe.flaky", "probe.flaky", "probe.flaky"]
    assert [(d.tool, d.effect) for d in dead.expected.decisions] == [
        ("kb.search", "allow"), *[("probe.flaky", "allow")] * 3,
    ]  # fmt: skip
    assert dead.expected.spend.tool_calls == 4
    assert denied.expected.decisions[0].rule == "refund_cap" and denied.expected.executed == []
    assert denied.expected.refused == ["payments.refund"]
    # a file round-trip (JSON and YAML) keeps it whole
    write_new(dead, fixture_path(tmp_path, dead.name))
    write_new(denied, fixture_path(tmp_path, denied.name, "yaml"))
    loaded = fx.load_dir(tmp_path)
    assert sorted(f.name for f in loaded) == sorted([dead.name, "refund-cap"])

    replays = engine(deployment, tmp_path).run(loaded, repeat=1)
    report = report_of(replays)
    assert [(c.name, c.verdict) for c in report.cases] == [(f.name, "pass") for f in loaded], [
        c.reasons for c in report.cases
    ]
    assert report.passed
    # the replays ran as new runs elsewhere: the deployment's store and the tool's backend
    # never saw them
    replay_ids = [r[0].run_id for r in replays]
    assert all(i and i not in (runs["dead"], runs["denied"]) for i in replay_ids)
    assert svc.store.statuses([i for i in replay_ids if i]) == {}
    assert int(svc.tool_redis.get(svc.keys.demo(f"flaky:{runs['key']}:calls")) or 0) == calls_before
    assert not list(svc.redis.scan_iter(match="eval*", count=1000))


def test_a_candidate_policy_that_changes_the_outcome_fails_the_gate(
    deployment: Deployment,
    runs: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = deployment.svc
    evals = tmp_path / "evals"
    fixture = fixture_from_run(svc.store, runs["denied"], name="refund-cap", blocking=True)
    write_new(fixture, fixture_path(evals, fixture.name))
    # the candidate drops the refund cap: the refund would now run (there is no recorded
    # result for it, so the replay tool refuses to call the real one), and the run's
    # outcome changes
    rules = [r.model_dump(mode="json", by_alias=True, exclude_none=True)
             for r in svc.config.policy.rules if r.id != "refund_cap"]  # fmt: skip
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump({"version": "pol-candidate", "rules": rules}))
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    junit = tmp_path / "evals.xml"

    passing = CliRunner().invoke(
        app, ["evals", "run", "--gate", "--repeat", "1", "--dir", str(evals)]
    )
    assert passing.exit_code == 0, passing.output
    assert "refund-cap" in passing.output and "pass" in passing.output

    failing = CliRunner().invoke(app, [
        "evals", "run", "--gate", "--repeat", "1", "--dir", str(evals),
        "--policy", str(candidate), "--junit", str(junit),
    ])  # fmt: skip
    assert failing.exit_code == 1, failing.output
    assert "fail" in failing.output and "refund-cap" in failing.output
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("failures") == "1"
    (case,) = suite.findall("testcase")
    failure = case.find("failure")
    assert case.get("name") == "refund-cap" and failure is not None
    assert failure.get("type") == "fail" and "policy_denied:refund_cap" in failure.get(
        "message", ""
    )

    # the gate API the releases flow calls says the same
    candidate_config = svc.config.model_copy(
        update={"policy": PolicyConfig(version="pol-candidate", rules=[
            r for r in svc.config.policy.rules if r.id != "refund_cap"])}
    )  # fmt: skip
    gate = run_gate(config=svc.config, settings=svc.settings, route="r.refunds", release="cand",
                    config_transform=lambda c, route: candidate_config, repeat=1,
                    directory=evals)  # fmt: skip
    assert (gate.passed, gate.cases, gate.failures, gate.flaky) == (False, 1, 1, 0)
    same = run_gate(config=svc.config, settings=svc.settings, route="r.refunds", release=None,
                    repeat=1, directory=evals)  # fmt: skip
    assert (same.passed, same.cases, same.failures) == (True, 1, 0)


def test_a_case_that_passes_and_fails_across_repeats_is_flaky(
    deployment: Deployment, runs: dict[str, str], tmp_path: Path
) -> None:
    fixture = fixture_from_run(deployment.svc.store, runs["dead"], name="dl", blocking=True)

    def alternate(name: str, index: int, recorded: ToolResult, repeat: int) -> ToolResult:
        # on odd repeats the dependency answers: the run no longer dead-letters
        if recorded.tool == "probe.flaky" and repeat % 2 == 1:
            return ToolResult(tool=recorded.tool, ok=True, result={"value": 2})
        return recorded

    report = report_of(engine(deployment, tmp_path, hook=alternate).run([fixture], repeat=2))
    (case,) = report.cases
    assert (case.verdict, case.passes, case.runs) == ("flaky", 1, 2)
    assert report.flaky == 1 and not report.passed  # a flaky blocking case fails the gate
    assert any("stop reason" in r for r in case.reasons)


def test_capture_rules_capture_a_matching_run_once(
    deployment: Deployment, runs: dict[str, str], tmp_path: Path
) -> None:
    svc = deployment.svc
    config = EvalsConfig(capture_rules=[
        CaptureRule(route="r.retry", stop_reason="dead_lettered:*", blocking=True),
    ])  # fmt: skip
    sweep = CaptureSweep(runs=svc.store, evals=EvalStore(svc.store.engine), config=config,
                         directory=tmp_path)  # fmt: skip
    first = sweep.sweep(timedelta(hours=1), limit=10_000)
    captured = dict(first.captured)
    assert runs["dead"] in captured and runs["denied"] not in captured
    saved = fx.load(captured[runs["dead"]])
    assert saved.blocking and saved.source.rule == "r.retry dead_lettered:*"
    assert saved.expected.stop_reason == "dead_lettered:exhausted"
    # a second sweep finds it captured: no second file
    again = sweep.sweep(timedelta(hours=1), limit=10_000)
    assert runs["dead"] not in dict(again.captured)
    files = [p for p in tmp_path.iterdir() if runs["dead"][:8] in p.name]
    assert len(files) == 1


def test_policy_diff_lists_an_allow_to_deny_transition(
    deployment: Deployment, runs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = deployment.svc
    current = svc.config.policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    rule = {"id": "no_search_on_retry", "effect": "deny",
            "match": {"tool": ["kb.search"], "route": ["r.retry"]}}  # fmt: skip
    candidate = PolicyConfig.model_validate({**current, "version": "pol-c2",
                                             "rules": [*current["rules"], rule]})  # fmt: skip
    result = policy_diff(store=EvalStore(svc.store.engine), registry=svc.registry,
                         candidate=candidate, since=utcnow() - timedelta(hours=1),
                         route="r.retry", tenant="t1")  # fmt: skip
    assert result.transitions["allow -> deny"] >= 1
    change = next(c for c in result.changes() if c.rule == "no_search_on_retry")
    assert change.transition == "allow -> deny" and change.count >= 1
    assert set(result.transitions) == {"allow -> deny"}  # nothing else changes
    # another tenant's window holds none of them
    since = utcnow() - timedelta(hours=1)
    other = policy_diff(store=EvalStore(svc.store.engine), registry=svc.registry,
                        candidate=candidate, since=since, tenant="t2")  # fmt: skip
    assert runs["dead"] not in {e for c in other.changes() for e in c.examples}

    # the command, with a whole deployment file as the candidate
    document = yaml.safe_load(Path(deployment.settings.config).read_text())
    document["policy"]["rules"].append(rule)
    path = tmp_path / "candidate-deployment.yaml"
    path.write_text(yaml.safe_dump(document))
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    done = CliRunner().invoke(app, ["policy", "diff", "--candidate", str(path), "--since", "1h",
                                    "--route", "r.retry", "--tenant", "t1", "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["transitions"].get("allow -> deny", 0) >= 1
    assert any(runs["dead"] in c["examples"] or c["count"] >= 1 for c in data["changes"])
    bad = CliRunner().invoke(app, ["policy", "diff", "--candidate", str(tmp_path / "none.yaml")])
    assert bad.exit_code == 1 and "none.yaml" in bad.output


def test_capture_command_writes_a_fixture_and_refuses_a_running_or_unknown_run(
    deployment: Deployment, runs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    done = CliRunner().invoke(app, ["evals", "capture", runs["denied"], "--name", "cap-cli",
                                    "--dir", str(tmp_path), "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    saved: Fixture = fx.load(tmp_path / "cap-cli.json")
    assert saved.expected.stop_reason == "policy_denied:refund_cap" and saved.blocking
    twice = CliRunner().invoke(app, ["evals", "capture", runs["denied"], "--name", "cap-cli",
                                     "--dir", str(tmp_path)])  # fmt: skip
    assert twice.exit_code == 1 and "exists" in twice.output
    unknown = CliRunner().invoke(app, ["evals", "capture", "nope", "--dir", str(tmp_path)])
    assert unknown.exit_code == 1
    other_tenant = CliRunner().invoke(app, ["evals", "capture", runs["denied"], "--tenant", "t2",
                                            "--dir", str(tmp_path), "--name", "x"])  # fmt: skip
    assert other_tenant.exit_code == 1
    # the test deployment's file has no capture rules: a sweep says so and does nothing
    sweep = CliRunner().invoke(app, ["evals", "sweep", "--dir", str(tmp_path)])
    assert sweep.exit_code == 2 and "capture_rules" in sweep.output
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": 2}))
    with pytest.raises(fx.EvalFixtureError, match="format"):
        fx.load_dir(tmp_path)


def test_the_evals_section_is_optional_and_validated() -> None:
    from runtime.config import config_digest, config_document, load_config
    from runtime.errors import ConfigError
    from tests.conftest import TEST_CONFIG

    base = load_config(TEST_CONFIG)
    document = yaml.safe_load(TEST_CONFIG.read_text())
    # a file without the section keeps its digest (nothing applied changes)
    assert base.evals is None and "evals" not in config_document(base)
    from runtime.config import parse_config

    document["evals"] = {
        "dir": "evals",
        "capture_rules": [
            {"risk_class": "high", "stop_reason": "policy_denied:*", "blocking": True}
        ],
    }
    config = parse_config(document)
    assert config.evals is not None and config_digest(config) != config_digest(base)
    rule = config.evals.rule_for("r.refunds", "high", "policy_denied:refund_cap")
    assert rule is not None and rule.blocking
    assert config.evals.rule_for("r.refunds", "low", "policy_denied:refund_cap") is None
    assert config.evals.rule_for("r.refunds", "high", "completed") is None
    document["evals"]["capture_rules"][0]["stop_reasons"] = "x"
    with pytest.raises(ConfigError, match="stop_reasons"):
        parse_config(document)


def test_replay_under_an_unknown_release_is_refused_naming_it(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    done = CliRunner().invoke(app, ["evals", "run", "--release", "r2", "--dir", str(tmp_path)])
    assert done.exit_code == 2 and "--release r2: unknown release" in done.output, done.output
