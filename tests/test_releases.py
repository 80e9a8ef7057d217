"""Releases (issue 13): version sets routes run under, canaries, promote and rollback.

Real Redis, real SQL (SQLite and PostgreSQL), real prefork workers. The deployment file is
tests/config/releases.yaml: v1 runs model ``scripted`` (version scripted-a), v2 runs
``scripted-b`` with the ``cautious`` policy set (tickets.update denied) and the ``strict``
budget policy, so a step's recorded model version says which release it ran under.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from runtime import release_sets
from runtime.cli.main import app
from runtime.config import parse_config
from runtime.errors import ConfigError, GateFailed, ReleaseError
from runtime.release_gate import GateResult
from runtime.release_sets import LiveRelease
from runtime.releases import config_for
from runtime.releases.api import Releases
from runtime.service import RuntimeService
from tests.conftest import _database_url
from tests.support import Deployment, Hold, wait_for

REL_CONFIG = Path(__file__).resolve().parent / "config" / "releases.yaml"
USAGE = {"input_tokens": 100, "output_tokens": 50}


def reply(text: str = "done") -> dict[str, Any]:
    return {"type": "reply", "text": text, "usage": USAGE}


def ticket_write() -> dict[str, Any]:
    args = {"ticket_id": "T-1", "status": "solved"}
    return {"type": "tool_call", "tool": "tickets.update", "args": args, "usage": USAGE}


def _deployment(
    backend: str, redis_url: str, tmp: Path, request: pytest.FixtureRequest, workers: int
) -> Deployment:
    dep = Deployment.create(
        name=f"rel{uuid.uuid4().hex[:4]}",
        redis_url=redis_url,
        database_url=_database_url(backend, request, tmp),
        config=REL_CONFIG,
        home=tmp,
    )
    if workers:
        dep.start_worker(concurrency=workers)
    return dep


@pytest.fixture(scope="module")
def working(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    """The releases deployment with one prefork worker (2 processes)."""
    dep = _deployment(backend, redis_url, tmp_path_factory.mktemp("relw"), request, 2)
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture(scope="module")
def idle(
    backend: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    """The releases deployment with no worker: admitted runs stay queued."""
    dep = _deployment(backend, redis_url, tmp_path_factory.mktemp("reli"), request, 0)
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def cli_env(working: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    for name, value in working.env.items():
        monkeypatch.setenv(name, value)
    return working


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def releases(dep: Deployment) -> Releases:
    assert dep.svc.releases is not None
    return dep.svc.releases


def reset(dep: Deployment, route: str) -> None:
    """The route back to v1 with no canary (tests share the deployment)."""
    state = releases(dep).live.state(route)
    assert state is not None
    if state.active != "v1" or state.canary is not None:
        releases(dep).rollback(route, to="v1", actor="test", reason="reset")


def submit(dep: Deployment, route: str, script: list[Any], tenant: str = "t1") -> str:
    return dep.svc.submit(tenant, route, "release test", {"script": script}, actor="tester").run_id


def model_versions(svc: RuntimeService, run_id: str) -> list[str | None]:
    return [s["model_version"] for s in svc.store.steps(run_id)]


def kinds(svc: RuntimeService, run_id: str) -> list[str]:
    return [e.kind for e in svc.trace(run_id)]


# --- config --------------------------------------------------------------------------------
def _file() -> dict[str, Any]:
    return dict(yaml.safe_load(REL_CONFIG.read_text()))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["routes"]["r.pinned"].update(release="ghost"),
         "routes.r.pinned.release: unknown release 'ghost' (defined: v1, v2)"),
        (lambda d: d["routes"]["r.canary"]["canary"].update(release="ghost"),
         "routes.r.canary.canary.release: unknown release 'ghost' (defined: v1, v2)"),
        (lambda d: d["routes"]["r.canary"]["canary"].update(tenants=["nobody"]),
         "routes.r.canary.canary.tenants: unknown tenant 'nobody'"),
        (lambda d: d["releases"]["v2"].update(model="gpt-9"),
         "releases.v2.model: unknown model 'gpt-9' (defined: scripted, scripted-b)"),
        (lambda d: d["releases"]["v2"].update(policy="lax"),
         "releases.v2.policy: unknown policy set 'lax' (defined: cautious)"),
        (lambda d: d["releases"]["v2"].update(budget_policy="huge"),
         "releases.v2.budget_policy: unknown budget policy 'huge' (defined: standard, strict)"),
        (lambda d: d["routes"]["r.plain"].update(canary={"release": "v2", "percent": 5}),
         "routes.r.plain.canary: a canary needs the route's own 'release'"),
        (lambda d: d["routes"]["r.plain"].update(release_upgrade="next_step"),
         "routes.r.plain.release_upgrade: only for a route with a 'release'"),
    ],
)  # fmt: skip
def test_a_bad_release_in_the_config_is_refused_naming_the_key(change: Any, problem: str) -> None:
    data = _file()
    change(data)
    with pytest.raises(ConfigError) as refused:
        parse_config(data, "releases.yaml")
    assert problem in refused.value.problems


def test_a_canary_needs_percent_or_tenants() -> None:
    data = _file()
    data["routes"]["r.canary"]["canary"] = {"release": "v2"}
    with pytest.raises(ConfigError) as refused:
        parse_config(data, "releases.yaml")
    assert any(p.startswith("routes.r.canary.canary") for p in refused.value.problems)


def test_a_file_without_releases_keeps_its_digest() -> None:
    """The digest is taken of ``config_document``: a file that says nothing of releases
    gets none of their keys in it, so its digest is what it was before releases."""
    from runtime.config import config_document, load_config

    plain = load_config(Path(__file__).resolve().parent / "config" / "runtime.yaml")
    document = config_document(plain)
    assert "releases" not in document and "policies" not in document
    fields = {"release", "canary", "release_assignment", "release_upgrade"}
    assert all(not fields & set(route) for route in document["routes"].values())


def test_config_for_runs_the_route_under_the_release() -> None:
    config = parse_config(_file())
    derived = config_for(config, "r.canary", "v2")
    route = derived.routes["r.canary"]
    assert (route.release, route.canary, route.proposer) == ("v2", None, "scripted-b")
    assert route.prompt_version == "p2" and route.budget_policy == "strict"
    assert route.system_prompt.startswith("You are v2")
    assert release_sets.policy_for(derived, route.release)[0] == "cautious"
    # the original is untouched, the other routes too
    assert config.routes["r.canary"].release == "v1"
    assert derived.routes["r.pinned"] == config.routes["r.pinned"]
    with pytest.raises(ReleaseError, match="unknown release 'v9'"):
        config_for(config, "r.canary", "v9")


# --- assignment ------------------------------------------------------------------------------
def test_assignment_is_a_stable_hash_and_a_named_tenant_always_gets_the_canary() -> None:
    state = LiveRelease("r.x", "v1", canary="v2", percent=20.0, tenants=("vip",), assignment="run")
    ids = [uuid.uuid4().hex for _ in range(2000)]
    first = [release_sets.assign(state, "t1", run_id) for run_id in ids]
    assert first == [release_sets.assign(state, "t1", run_id) for run_id in ids]
    assert 300 <= first.count("v2") <= 500  # 20% of 2000 = 400
    assert {release_sets.assign(state, "vip", run_id) for run_id in ids} == {"v2"}
    by_tenant = LiveRelease("r.x", "v1", canary="v2", percent=50.0)
    # hashed on the tenant: all runs of one tenant get one release
    assert len({release_sets.assign(by_tenant, "t1", run_id) for run_id in ids}) == 1
    assert release_sets.assign(LiveRelease("r.x", "v1"), "vip", ids[0]) == "v1"


def test_a_deploy_naming_another_release_replaces_the_operators_state() -> None:
    config = parse_config(_file())
    stored = LiveRelease("r.pinned", "v2", generation=3, deployed="v1")
    state = release_sets.effective_state(config, "r.pinned", stored)
    assert state is not None and (state.active, state.generation) == ("v2", 3)
    data = _file()
    data["routes"]["r.pinned"]["release"] = "v2"
    redeployed = parse_config(data)
    state = release_sets.effective_state(redeployed, "r.pinned", stored.__class__(
        "r.pinned", "v1", generation=3, deployed="v1"))  # fmt: skip
    assert state is not None and (state.active, state.deployed, state.generation) == ("v2", "v2", 0)
    with pytest.raises(ReleaseError, match="'ghost'"):
        release_sets.effective_state(
            config, "r.pinned", LiveRelease("r.pinned", "ghost", generation=1, deployed="v1")
        )


def test_a_canary_at_20_percent_over_500_runs(idle: Deployment) -> None:
    """Admission assigns every run (recorded before any step, so before its first model
    call) within 20% +/- 5%, deterministically by the run id's hash."""
    svc = idle.svc
    ids = [submit(idle, "r.canary", [reply()], tenant=f"t{1 + i % 3}") for i in range(500)]
    counts = svc.store.count_by("release", run_ids=ids)
    assert set(counts) == {"v1", "v2"} and sum(counts.values()) == 500
    assert 75 <= counts["v2"] <= 125, counts
    state = releases(idle).live.state("r.canary")
    assert state is not None and (state.canary, state.percent) == ("v2", 20.0)
    for run_id in ids[:50]:
        run = svc.store.get_run(run_id)
        assert run["status"] == "queued" and run["next_step"] == 0  # no step ran yet
        assert run["release"] == release_sets.assign(state, run["tenant_id"], run_id)
        expected = "scripted-b" if run["release"] == "v2" else "scripted-a"
        assert run["version_set"]["model"] == expected
        admission = svc.trace(run_id)[0]
        assert admission.kind == "admission" and admission.data["release"] == run["release"]


def test_redis_loss_falls_back_to_sql_and_recover_rebuilds(idle: Deployment) -> None:
    svc, rel = idle.svc, releases(idle)
    reset(idle, "r.pinned")
    done = rel.canary("r.pinned", "v2", tenants=["t2"], actor="ops:ann", reason="try v2")
    key = svc.keys.release_state("r.pinned")
    svc.redis.delete(key)
    # admission reads the record from SQL and writes Redis's copy back
    run = svc.store.get_run(submit(idle, "r.pinned", [reply()], tenant="t2"))
    assert run["release"] == "v2"
    assert int(svc.redis.hget(key, "gen") or 0) == done.generation
    # an older state never overwrites a newer one
    assert rel.live.put(LiveRelease("r.pinned", "v1", deployed="v1")) is False
    svc.redis.delete(key)
    report = svc.recovery.recover("test", inflight_wait_s=0)
    assert report.release_states >= 1
    assert int(svc.redis.hget(key, "gen") or 0) == done.generation
    reset(idle, "r.pinned")


def test_a_state_naming_an_unknown_release_refuses_admission(idle: Deployment) -> None:
    svc, rel = idle.svc, releases(idle)
    ghost = LiveRelease("r.pinned", "ghost", generation=10_000, deployed="v1")
    key = svc.keys.release_state("r.pinned")
    assert rel.live.put(ghost)
    try:
        run = svc.get(submit(idle, "r.pinned", [reply()]))
        assert run.status == "refused" and run.stop_reason == "refused:unknown_release"
    finally:
        svc.redis.delete(key)
    assert svc.get(submit(idle, "r.pinned", [reply()])).status == "queued"


# --- on workers -----------------------------------------------------------------------------
def test_the_release_is_recorded_before_the_first_model_call(working: Deployment) -> None:
    """A tenant canary: its runs run v2's model, policy set and budget policy, the others
    v1's; the trace shows the release at admission, before the first model call."""
    svc, rel = working.svc, releases(working)
    reset(working, "r.pinned")
    rel.canary("r.pinned", "v2", tenants=["t2"], actor="ops:ann", reason="t2 first")
    v2_run = submit(working, "r.pinned", [reply()], tenant="t2")
    v1_run = submit(working, "r.pinned", [reply()], tenant="t1")
    v2_denied = submit(working, "r.pinned", [ticket_write(), reply()], tenant="t2")
    v1_allowed = submit(working, "r.pinned", [ticket_write(), reply()], tenant="t1")
    done = working.wait_all([v2_run, v1_run, v2_denied, v1_allowed])
    assert done[v2_run].status == "succeeded" and done[v1_run].status == "succeeded"
    row = svc.store.get_run(v2_run)
    assert row["release"] == "v2" and row["budget_policy_version"] == "bp-strict-1"
    assert row["policy_version"] == "pol-cautious-1"
    vs = row["version_set"]
    assert (vs["model"], vs["prompt"], vs["policy"]) == ("scripted-b", "p2", "pol-cautious-1")
    assert (vs["tool_schema"], vs["harness"]) == ("tools-2", "harness-2")
    assert model_versions(svc, v2_run) == ["scripted-b"]
    assert model_versions(svc, v1_run) == ["scripted-a"]
    assert svc.store.get_run(v1_run)["release"] == "v1"
    trace = kinds(svc, v2_run)
    assert trace.index("admission") < trace.index("proposal")
    assert svc.trace(v2_run)[0].data["release"] == "v2"
    # the release's policy set decides: v2 denies ticket writes, v1 allows them
    assert done[v2_denied].stop_reason == "policy_denied:no_ticket_writes"
    assert done[v1_allowed].status == "succeeded"
    # compare: both releases over the same window, from the store
    result = rel.compare("r.pinned", timedelta(hours=1))
    v1, v2 = result["figures"]["v1"], result["figures"]["v2"]
    assert v2["runs"] >= 2 and v2["policy_denials"] >= 1 and v2["completed"] >= 1
    assert v1["runs"] >= 2 and v1["policy_denials"] == 0
    assert v2["p95_step_ms"] is not None and v1["cost_per_completed_usd"] is not None
    reset(working, "r.pinned")


def test_promote_and_rollback_change_new_runs(working: Deployment) -> None:
    svc, rel = working.svc, releases(working)
    reset(working, "r.pinned")
    before = len(svc.releases.store.audit("r.pinned")) if svc.releases else 0
    rel.canary("r.pinned", "v2", tenants=["t3"], actor="ops:ann", reason="t3 first")
    first = submit(working, "r.pinned", [reply()], tenant="t1")
    promoted = rel.promote("r.pinned", actor="ops:bob", reason="canary healthy")
    assert (promoted.active, promoted.canary) == ("v2", None)
    second = submit(working, "r.pinned", [reply()], tenant="t1")
    back = rel.rollback("r.pinned", actor="ops:bob", reason="p95 up")
    assert back.active == "v1"
    third = submit(working, "r.pinned", [reply()], tenant="t1")
    working.wait_all([first, second, third])
    releases_of = [svc.store.get_run(r)["release"] for r in (first, second, third)]
    assert releases_of == ["v1", "v2", "v1"]
    assert [model_versions(svc, r)[0] for r in (first, second, third)] == [
        "scripted-a", "scripted-b", "scripted-a",
    ]  # fmt: skip
    audit = rel.store.audit("r.pinned")
    assert len(audit) - before == 3
    assert [(a["action"], a["release"], a["actor"], a["reason"]) for a in audit[:3]] == [
        ("rollback", "v1", "ops:bob", "p95 up"),
        ("promote", "v2", "ops:bob", "canary healthy"),
        ("canary", "v2", "ops:ann", "t3 first"),
    ]
    gates = rel.show("v2")["gates"]
    assert gates and gates[0]["passed"] and gates[0]["action"] == "promote"


def test_next_step_routes_take_a_promotion_at_their_next_step(working: Deployment) -> None:
    """Runs in flight when the release changes: a ``next_step`` route's run takes it at
    its next step (traced, recorded on the run); a pinned route's run keeps its own."""
    svc, rel = working.svc, releases(working)
    for route in ("r.upgrade", "r.pinned"):
        reset(working, route)
    hold_up, hold_pin = Hold(working), Hold(working)
    hold_up.on()
    hold_pin.on()
    try:
        upgrading = submit(working, "r.upgrade", [hold_up.step(), reply()])
        pinned = submit(working, "r.pinned", [hold_pin.step(), reply()])
        wait_for(lambda: hold_up.entered() == 1 and hold_pin.entered() == 1,
                 message="both runs inside their first tool call")  # fmt: skip
        for route in ("r.upgrade", "r.pinned"):
            rel.canary(route, "v2", percent=100, actor="ops:ann", reason="all in")
            rel.promote(route, actor="ops:ann", reason="ship v2")
    finally:
        hold_up.off()
        hold_pin.off()
    done = working.wait_all([upgrading, pinned])
    assert done[upgrading].status == "succeeded" and done[pinned].status == "succeeded"
    assert model_versions(svc, upgrading) == ["scripted-a", "scripted-b"]
    assert model_versions(svc, pinned) == ["scripted-a", "scripted-a"]
    row = svc.store.get_run(upgrading)
    assert row["release"] == "v2" and row["version_set"]["model"] == "scripted-b"
    changed = [e for e in svc.trace(upgrading) if e.kind == "release_changed"]
    assert len(changed) == 1 and changed[0].step == 1
    assert (changed[0].data["from"], changed[0].data["to"]) == ("v1", "v2")
    trace = kinds(svc, upgrading)
    assert trace.index("release_changed") < len(trace) - 1 - trace[::-1].index("proposal")
    assert svc.store.get_run(pinned)["release"] == "v1"
    assert "release_changed" not in kinds(svc, pinned)
    for route in ("r.upgrade", "r.pinned"):
        reset(working, route)


def test_promote_is_refused_when_the_gate_fails(working: Deployment) -> None:
    svc, rel = working.svc, releases(working)
    reset(working, "r.pinned")
    rel.canary("r.pinned", "v2", percent=5, actor="ops:ann", reason="5% first")

    def failing(route: str, release: str) -> GateResult:
        return GateResult(passed=False, summary=f"{release}: 1 of 3 blocking cases failed",
                          cases=3, failures=1, flaky=0)  # fmt: skip

    gated = Releases(config=svc.config, live=rel.live, store=rel.store, gate=failing)
    with pytest.raises(GateFailed, match="1 of 3 blocking cases failed"):
        gated.promote("r.pinned", actor="ops:ann", reason="ship it")
    state = rel.live.state("r.pinned")
    assert state is not None and (state.active, state.canary) == ("v1", "v2")
    refused = rel.store.audit("r.pinned")[0]
    assert refused["action"] == "promote_refused" and refused["gate"]["failures"] == 1
    gates = rel.show("v2")["gates"]
    assert gates[0]["passed"] is False and gates[0]["cases"] == 3
    reset(working, "r.pinned")


# --- the CLI ---------------------------------------------------------------------------------
def test_releases_diff_shows_what_changed(cli_env: Deployment) -> None:
    result = cli("releases", "diff", "v1", "v2", "--json")
    assert result.exit_code == 0, result.output
    import json

    fields = {row["field"]: (row["v1"], row["v2"]) for row in json.loads(result.stdout)}
    assert set(fields) == {
        "model", "model_version", "prompt", "system_prompt", "policy", "policy_version",
        "tool_schema", "harness", "budget_policy", "budget_policy_version",
    }  # fmt: skip
    assert fields["model"] == ("scripted", "scripted-b")
    assert fields["policy"] == ("(default)", "cautious")
    table = cli("releases", "diff", "v1", "v2")
    assert table.exit_code == 0 and "scripted-b" in table.stdout and "cautious" in table.stdout
    same = cli("releases", "diff", "v1", "v1")
    assert same.exit_code == 0 and "same version set" in same.stdout


def test_releases_commands(cli_env: Deployment) -> None:
    reset(cli_env, "r.pinned")
    listed = cli("releases", "list")
    assert listed.exit_code == 0 and "r.canary" in listed.stdout and "20%" in listed.stdout
    canary = cli("releases", "canary", "r.pinned", "v2", "--tenants", "t3", "--reason", "cli")
    assert canary.exit_code == 0, canary.output
    promote = cli("releases", "promote", "r.pinned", "--reason", "cli ship", "--actor", "ops:cli")
    assert promote.exit_code == 0, promote.output
    shown = cli("releases", "show", "v2")
    assert shown.exit_code == 0 and "gate results" in shown.stdout and "ops:cli" in shown.stdout
    back = cli("releases", "rollback", "r.pinned", "--to", "v1", "--reason", "cli back")
    assert back.exit_code == 0 and "active v1" in back.stdout
    compare = cli("releases", "compare", "r.pinned", "--since", "1h")
    assert compare.exit_code == 0 and "p95 step latency" in compare.stdout
    # refusals exit 2 and say why; nothing changes
    none = cli("releases", "promote", "r.pinned")
    assert none.exit_code == 2 and "no canary to promote" in none.output
    plain = cli("releases", "canary", "r.plain", "v2", "--percent", "5")
    assert plain.exit_code == 2 and "has no release" in plain.output
    both = cli("releases", "canary", "r.pinned", "v2")
    assert both.exit_code == 2 and "exactly one of --percent or --tenants" in both.output
    bad = cli("releases", "canary", "r.pinned", "v2", "--percent", "150")
    assert bad.exit_code == 2
    unknown = cli("releases", "show", "v9")
    assert unknown.exit_code == 2 and "unknown release 'v9'" in unknown.output
