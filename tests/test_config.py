"""The deployment file: shipped files load, every problem names its key."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from runtime.config import RuntimeConfig, load_config, parse_config
from runtime.errors import ConfigError, SettingsError
from runtime.settings import Settings
from runtime.wiring import Endpoints, load_registry
from tests.support import ROOT

SHIPPED = ROOT / "config" / "runtime.yaml"
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"

MINIMAL: dict[str, Any] = {
    "version": "v1",
    "tool_modules": ["runtime.demo.tools"],
    "models": {"scripted": {"kind": "scripted", "version": "s-1"}},
    "tenants": {"acme": {}},
    "budget_policies": {"std": {"version": "bp-1", "per_run": {"tokens": 1000}}},
    "routes": {
        "support.triage": {
            "task_class": "support",
            "risk_class": "low",
            "autonomy_level": "advisory",
            "proposer": "scripted",
            "budget_policy": "std",
            "allowed_tools": ["kb.search"],
        },
    },
    "tools": {"kb.search": {"version": "1"}},
    "policy": {"version": "p-1", "rules": [{"id": "r1", "effect": "deny", "match": {}}]},
}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert info.value.path == "test.yaml"
    assert str(info.value).startswith("invalid config test.yaml:\n  - ")
    return info.value.problems


def mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    change(data)
    return data


def route(data: dict[str, Any]) -> dict[str, Any]:
    return data["routes"]["support.triage"]  # type: ignore[no-any-return]


# --- files that must load ----------------------------------------------------------------


@pytest.mark.parametrize("path", [SHIPPED, TEST_CONFIG], ids=["shipped", "tests"])
def test_shipped_configs_load_and_their_tools_are_registered(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RuntimeConfig) and config.routes and config.policy.version
    registry = load_registry(config, str(path))
    for route_cfg in config.routes.values():
        assert route_cfg.proposer in config.models
        for name in route_cfg.allowed_tools:
            assert registry.get(name) is not None


def test_minimal_config_defaults() -> None:
    config = parse_config(MINIMAL)
    r = config.routes["support.triage"]
    assert r.max_steps == 10 and r.tenants == ["*"] and r.execution_mode == "durable_workflow"
    assert config.policy.default == "allow"
    limits = config.budget_policies["std"].per_run.ledger_limits()
    assert limits["tokens"] == 1000 and limits["model_calls"] == -1  # missing = unlimited


def test_ledger_limits_convert_units() -> None:
    data = mutated(
        lambda d: d["budget_policies"]["std"]["per_run"].update(
            {"wall_clock_s": 1.5, "cost_usd": 0.25}
        )
    )
    limits = parse_config(data).budget_policies["std"].per_run.ledger_limits()
    assert limits["wall_clock_ms"] == 1500 and limits["cost_micro_usd"] == 250_000


# --- problems name their key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: route(d).update(proposer="gpt-9"),
            "routes.support.triage.proposer: unknown model 'gpt-9' (defined: scripted)",
        ),
        (
            lambda d: route(d).update(budget_policy="lavish"),
            "routes.support.triage.budget_policy: unknown budget policy 'lavish' (defined: std)",
        ),
        (
            lambda d: route(d).update(allowed_tools=["kb.search", "shell.exec"]),
            "routes.support.triage.allowed_tools: tool 'shell.exec' is not declared under 'tools'",
        ),
        (
            lambda d: route(d).update(tenants=["acme", "initech"]),
            "routes.support.triage.tenants: unknown tenant 'initech'",
        ),
        (
            lambda d: d["policy"]["rules"].append({"id": "r1", "effect": "allow"}),
            "policy.rules.1.id: duplicate rule id 'r1'",
        ),
        (
            lambda d: route(d).update(max_stepz=3),
            "routes.support.triage.max_stepz: unknown key (typo?)",
        ),
        (lambda d: d.update(routs={}), "routs: unknown key (typo?)"),
        (
            lambda d: d["policy"]["rules"][0]["match"].update(tools=["x"]),
            "policy.rules.0.match.tools: unknown key (typo?)",
        ),
        (
            lambda d: d["policy"]["rules"][0]["match"].update(args={"amount": {"greater": 5}}),
            "policy.rules.0.match.args.amount.greater: unknown key (typo?)",
        ),
        (
            lambda d: route(d).update(max_steps="many"),
            "routes.support.triage.max_steps: Input should be a valid integer",
        ),
        (
            lambda d: route(d).update(max_steps=0),
            "routes.support.triage.max_steps: Input should be greater than 0",
        ),
        (
            lambda d: route(d).update(risk_class="extreme"),
            "routes.support.triage.risk_class: Input should be 'low', 'medium' or 'high'",
        ),
        (
            lambda d: d["tenants"]["acme"].update(weight="heavy"),
            "tenants.acme.weight: Input should be a valid integer",
        ),
        (
            lambda d: d["budget_policies"]["std"]["per_run"].update(tokens=-1),
            "budget_policies.std.per_run.tokens: Input should be greater than or equal to 0",
        ),
        (
            lambda d: d["policy"]["rules"][0].update(effect="maybe"),
            "policy.rules.0.effect: Input should be 'allow', 'deny', "
            "'require_approval' or 'escalate'",
        ),
        (
            lambda d: d["policy"]["rules"][0].update(id="Has Spaces"),
            "policy.rules.0.id: String should match pattern",
        ),
        (
            lambda d: d.update(routes=["not", "a", "mapping"]),
            "routes: Input should be a valid dictionary",
        ),
        (lambda d: d.pop("policy"), "policy: Field required"),
        (
            lambda d: d["models"].update(gpt={"kind": "openai", "version": "g-1"}),
            "models.gpt: kind 'openai' needs 'model' (the provider's model name)",
        ),
        (
            lambda d: d["models"]["scripted"].update(kind="anthropic"),
            "models.scripted.kind: Input should be 'scripted' or 'openai'",
        ),
    ],
)
def test_problem_names_the_key(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    problems = problems_of(mutated(change))
    assert any(p.startswith(expected) for p in problems), problems


def test_every_cross_reference_problem_is_reported_at_once() -> None:
    def change(d: dict[str, Any]) -> None:
        route(d).update(proposer="nope", budget_policy="nope", tenants=["ghost"])

    problems = problems_of(mutated(change))
    assert len(problems) == 3
    assert {p.split(":")[0] for p in problems} == {
        "routes.support.triage.proposer",
        "routes.support.triage.budget_policy",
        "routes.support.triage.tenants",
    }


@pytest.mark.parametrize("fallback", ["ghost.tool", "self"])
def test_a_tool_fallback_must_name_another_declared_tool(fallback: str) -> None:
    def change(d: dict[str, Any]) -> None:
        name = next(iter(d["tools"]))
        d["tools"][name] = {
            **(d["tools"][name] or {}),
            "fallback": name if fallback == "self" else fallback,
        }

    problems = problems_of(mutated(change))
    assert len(problems) == 1 and ".fallback: " in problems[0], problems
    assert "must name another declared tool" in problems[0]


@pytest.mark.parametrize("data", [[1, 2], "just text", None, 42])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    assert problems_of(data) == ["the file must be a YAML mapping at the top level"]


# --- files on disk -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.problems == ["file not found (set AGENTRT_CONFIG to its path)"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text('version: "v1"\nmodels:\n  scripted: {kind: scripted\ntenants: {}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith("line 4, column 8: YAML syntax error:"), problem


def test_yaml_with_a_list_at_the_top(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path)


def test_bad_file_on_disk_names_the_key(tmp_path: Path) -> None:
    text = TEST_CONFIG.read_text().replace("budget_policy: tiny", "budget_policy: tinyy")
    path = tmp_path / "runtime.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.problems[0].startswith(
        "routes.r.tiny.budget_policy: unknown budget policy 'tinyy'"
    )


# --- the manifest against the tool modules --------------------------------------------------


def test_manifest_tool_that_no_module_registers() -> None:
    data = mutated(lambda d: d["tools"].update({"crm.lookup": {"version": "2"}}))
    config = parse_config(data, "x.yaml")
    with pytest.raises(ConfigError) as info:
        load_registry(config, "x.yaml")
    [problem] = info.value.problems
    assert problem.startswith("tools.crm.lookup: no tool module registers it")
    assert "runtime.demo.tools" in problem


def test_tool_module_that_cannot_be_imported() -> None:
    data = mutated(lambda d: d.update(tool_modules=["runtime.demo.tools", "no_such.tools_module"]))
    with pytest.raises(ConfigError) as info:
        load_registry(parse_config(data), "x.yaml")
    [problem] = info.value.problems
    assert problem.startswith("tool_modules: tool module 'no_such.tools_module' cannot be imported")


def test_no_tool_modules_means_no_declared_tool_is_registered() -> None:
    data = mutated(lambda d: d.update(tool_modules=[]))
    with pytest.raises(ConfigError, match=r"tools\.kb\.search: no tool module registers it"):
        load_registry(parse_config(data), "x.yaml")


# --- the Celery visibility timeout ------------------------------------------------------------


def test_celery_config_refuses_a_visibility_timeout_not_above_the_longest_step(
    tmp_path: Path,
) -> None:
    from tasks.app import celery_config, min_visibility_timeout

    config = load_config(TEST_CONFIG)
    needed = min_visibility_timeout(config)
    sched = config.scheduling
    # the longest step, its hard-limit grace, the chain window, the lease margin, the longest
    # deferral
    assert needed == (
        config.max_step_timeout_s()
        + sched.hard_limit_grace_s
        + sched.chain_window_s
        + sched.lease_margin_s
        + 30
    )
    endpoints = Endpoints("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0", "sqlite://")

    def settings(timeout: int) -> Settings:
        return Settings(
            config=TEST_CONFIG, home=tmp_path, namespace="cfgtest", visibility_timeout_s=timeout
        )

    for too_short in (10, int(needed)):
        with pytest.raises(SettingsError, match=f"VISIBILITY_TIMEOUT_S={too_short} must exceed"):
            celery_config(settings(too_short), config, endpoints)
    conf = celery_config(settings(int(needed) + 1), config, endpoints)
    assert conf["broker_transport_options"]["visibility_timeout"] == needed + 1
    assert conf["broker_transport_options"]["global_keyprefix"] == "cfgtest:celery:"
    assert conf["task_acks_late"] is True and conf["accept_content"] == ["json"]


def test_longest_step_follows_the_routes() -> None:
    data = mutated(lambda d: route(d).update(step_timeout_s=600))
    config = parse_config(data)
    assert config.max_step_timeout_s() == 600
    from tasks.app import min_visibility_timeout

    # step, grace, chain window, margin, deferral
    assert min_visibility_timeout(config) == 600 + 20 + 2 + 15 + 30


def test_field_errors_and_broken_references_are_reported_together(tmp_path: Path) -> None:
    # Given a route with a bad field value and a reference to an unknown model
    data = yaml.safe_load((ROOT / "tests" / "config" / "runtime.yaml").read_text())
    data["routes"]["r.tiny"]["risk_class"] = "extreme"
    data["routes"]["r.tiny"]["proposer"] = "gpt-9"
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(data))
    # When it is loaded, Then one error lists both problems
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith("routes.r.tiny.risk_class:") for p in info.value.problems)
    assert any(
        p.startswith("routes.r.tiny.proposer: unknown model 'gpt-9'") for p in info.value.problems
    )


def test_a_restorer_killed_holding_kombus_restore_mutex_blocks_restores_briefly(
    tmp_path: Path, redis_url: str
) -> None:
    """kombu restores a dead worker's unacked messages under a Redis mutex; a worker
    SIGKILLed inside that restore leaves the mutex held until it expires (kombu's default:
    300 s, during which no message comes back). Seen in the crash storm: a worker killed as
    it started (its first restore) kept every other unacked message away for minutes."""
    from kombu import Connection  # type: ignore[attr-defined]
    from kombu.transport.redis import Mutex, MutexHeld

    from tasks.app import celery_config, min_visibility_timeout, restore_mutex_expire_s

    config = load_config(TEST_CONFIG)
    namespace = f"mutex{uuid.uuid4().hex[:8]}"
    settings = Settings(
        config=TEST_CONFIG,
        home=tmp_path,
        namespace=namespace,
        visibility_timeout_s=int(min_visibility_timeout(config)) + 1,
    )
    conf = celery_config(settings, config, Endpoints(redis_url, redis_url, "sqlite://"))
    options = conf["broker_transport_options"]
    with Connection(redis_url, transport_options=options) as conn:  # type: ignore[no-untyped-call]
        qos = conn.default_channel.qos
        # kombu reads the option under the name we give it
        assert qos.unacked_mutex_expire == restore_mutex_expire_s(settings) <= 60
        # Given a restorer that took the mutex and was killed before releasing it
        client = conn.default_channel.client
        dying = Mutex(client, qos.unacked_mutex_key, qos.unacked_mutex_expire)
        dying.__enter__()
        # Then the next restore is refused for now, and only until the short expiry
        with (
            pytest.raises(MutexHeld),
            Mutex(client, qos.unacked_mutex_key, qos.unacked_mutex_expire),
        ):
            pass
        raw = redis.Redis.from_url(redis_url)
        ttl = raw.pttl(f"{namespace}:celery:{qos.unacked_mutex_key}")
        assert 0 < ttl <= restore_mutex_expire_s(settings) * 1000
        raw.delete(f"{namespace}:celery:{qos.unacked_mutex_key}")
