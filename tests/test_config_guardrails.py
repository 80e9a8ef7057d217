"""The deployment file cannot silently drop a guardrail (issue 8).

Each hostile file is written to disk and refused the way an operator meets it: by the
loader start-up uses (``load_config`` + ``load_registry``), by ``agentrt config check``
(exit 1, one line per problem) and by start-up itself (nothing is built). ``--probe``
asks real HTTP servers: a local OpenAI-compatible one, and a port nobody listens on.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from runtime.bounds import MAX_INT64
from runtime.cli.main import app
from runtime.config import (
    BudgetLimits,
    Comparison,
    RuntimeConfig,
    load_config,
    matches_comparison,
)
from runtime.config_loader import MAX_CONFIG_BYTES, MAX_YAML_DEPTH
from runtime.errors import ConfigError
from runtime.policy import _compare
from runtime.settings import Settings
from runtime.wiring import Runtime, load_registry
from tests.fake_openai import FakeOpenAI
from tests.support import ROOT

SHIPPED = ROOT / "config" / "runtime.yaml"
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"
AGENTRT = Path(sys.executable).parent / "agentrt"


# --- helpers ---------------------------------------------------------------------------------


def shipped_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    return data


def write(tmp_path: Path, data_or_text: dict[str, Any] | str, name: str = "runtime.yaml") -> Path:
    path = tmp_path / name
    text = (
        data_or_text
        if isinstance(data_or_text, str)
        else yaml.safe_dump(data_or_text, sort_keys=False)
    )
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    """What start-up says about ``path``: both checks, the way every entry point runs them."""
    with pytest.raises(ConfigError) as info:
        load_registry(load_config(path), str(path))
    assert info.value.path == str(path)
    return info.value.problems


def check(*args: str) -> Result:
    return CliRunner().invoke(app, ["config", "check", *args])


def check_problems(path: Path) -> list[str]:
    """``agentrt config check PATH``: exit 1 and one ``  - problem`` line per problem."""
    result = check(str(path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("invalid config")
    assert all(line.startswith("  - ") for line in lines[1:]), lines
    return [line[4:] for line in lines[1:]]


def assert_refused(path: Path, expected: str) -> list[str]:
    """The loader and ``config check`` both refuse ``path`` with a problem starting with
    ``expected``; start-up builds nothing."""
    problems = problems_of(path)
    assert any(p.startswith(expected) for p in problems), problems
    assert check_problems(path) == problems
    with pytest.raises(ConfigError):
        Runtime.from_settings(Settings(config=path, home=path.parent))
    return problems


def rule(data: dict[str, Any], rule_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in data["policy"]["rules"] if r["id"] == rule_id)
    return found


def rule_index(data: dict[str, Any], rule_id: str) -> int:
    return next(i for i, r in enumerate(data["policy"]["rules"]) if r["id"] == rule_id)


# --- the shipped files are what will run --------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [SHIPPED, TEST_CONFIG, ROOT / "bench" / "config.yaml", ROOT / "bench" / "fairness.yaml"],
    ids=["shipped", "tests", "bench", "bench-fairness"],
)
def test_shipped_files_pass_every_check(path: Path) -> None:
    load_registry(load_config(path), str(path))
    result = check(str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok {path}")


# --- 1. duplicate keys -----------------------------------------------------------------------


def test_a_second_effect_key_cannot_turn_a_deny_rule_into_allow(tmp_path: Path) -> None:
    # Given the refund cap rule with "effect: deny" followed by "effect: allow"
    lines = SHIPPED.read_text().splitlines()
    rule_line = lines.index("    - id: refund_cap")
    deny = rule_line + 1
    assert lines[deny] == "      effect: deny"
    lines.insert(deny + 1, "      effect: allow")
    path = write(tmp_path, "\n".join(lines) + "\n")
    # plain safe_load would have kept the allow
    assert rule(yaml.safe_load(path.read_text()), "refund_cap")["effect"] == "allow"

    # Then the file is refused, naming both lines; nothing starts
    problems = assert_refused(path, f"line {deny + 2}: duplicate key 'effect'")
    assert problems == [f"line {deny + 2}: duplicate key 'effect' (first at line {deny + 1})"]


def test_a_second_policy_block_cannot_wipe_every_rule(tmp_path: Path) -> None:
    text = SHIPPED.read_text()
    first = text.splitlines().index("policy:") + 1
    path = write(tmp_path, text + "\npolicy:\n  version: pol-empty\n  rules: []\n")
    second = path.read_text().splitlines().index("policy:", first) + 1
    problems = assert_refused(path, f"line {second}: duplicate key 'policy'")
    assert problems == [f"line {second}: duplicate key 'policy' (first at line {first})"]


def test_duplicate_keys_are_refused_at_any_depth_all_at_once(tmp_path: Path) -> None:
    text = "\n".join(
        [
            'version: "v1"',  # 1
            "tenants:",  # 2
            "  acme: {weight: 1, weight: 5}",  # 3: in a flow mapping
            "routes:",  # 4
            "  r:",  # 5
            "    tenants: [acme]",  # 6
            "    tenants: ['*']",  # 7
            'version: "v2"',  # 8
            "",
        ]
    )
    problems = problems_of(write(tmp_path, text))
    assert problems == [
        "line 3: duplicate key 'weight' (first at line 3)",
        "line 7: duplicate key 'tenants' (first at line 6)",
        "line 8: duplicate key 'version' (first at line 1)",
    ]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("on: 1\n", "line 1: key 'on' is read as bool True, not a string: quote it"),
        ("tenants:\n  no: {}\n", "line 2: key 'no' is read as bool False, not a string"),
        ("tenants:\n  1: {}\n", "line 2: key '1' is read as int 1, not a string"),
        ("? [a, b]\n: 1\n", "line 1: a key must be a string, not a sequence"),
        ("version: 2026-11-29\n", "line 1: '2026-11-29' is read as a date; quote it"),
        ("x: !!binary aGk=\n", "line 1: 'aGk=' uses !!binary"),
        ("x: !!set {a, b}\n", "line 1: 'tag:yaml.org,2002:set' uses !!set"),
        ("a: !!python/object:os.system x\n", "line 1, column 4: YAML syntax error"),
    ],
)
def test_keys_and_values_yaml_would_guess_are_refused(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    problems = problems_of(write(tmp_path, yaml_text))
    assert any(p.startswith(expected) for p in problems), problems


# --- 2. aliases: no billion laughs ------------------------------------------------------------


def test_an_alias_bomb_in_a_rule_is_refused_without_expanding(tmp_path: Path) -> None:
    # Given nine levels of nine aliases each (9**9 strings if expanded) inside a rule
    bomb = ['      lol0: &l0 ["lol"]']
    for level in range(1, 9):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        bomb.append(f"      lol{level}: &l{level} [{refs}]")
    lines = SHIPPED.read_text().splitlines()
    at = lines.index("      match:", lines.index("    - id: refund_cap")) + 1
    lines[at:at] = ["  " + b for b in bomb]
    path = write(tmp_path, "\n".join(lines) + "\n")

    # Then: refused, naming the lines of the anchors and the aliases, each once
    problems = assert_refused(path, f"line {at + 1}: anchor '&l0' refused")
    assert f"line {at + 2}: alias '*l0' refused: anchors and aliases are not supported " in (
        problems[2] + " "
    )
    assert len(problems) == 2 * 9 - 1  # 9 anchors, 8 lines of aliases


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    text = "base: {weight: 2}\ntenants:\n  acme:\n    <<: {weight: 3}\n"
    assert problems_of(write(tmp_path, text)) == [
        "line 4: merge key '<<' refused (write the keys out)"
    ]


def test_nesting_and_size_are_bounded(tmp_path: Path) -> None:
    deep = "x: " + "[" * (MAX_YAML_DEPTH + 5) + "]" * (MAX_YAML_DEPTH + 5) + "\n"
    assert problems_of(write(tmp_path, deep, "deep.yaml")) == [
        f"line 1: nested deeper than {MAX_YAML_DEPTH} levels"
    ]
    big = write(tmp_path, "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), "big.yaml")
    [problem] = problems_of(big)
    assert problem.endswith(f"bytes; at most {MAX_CONFIG_BYTES}")


# --- 3. rules that point nowhere ----------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a path of keys split by "/" (a rule by its id: ``rule:refund_cap/match/tool``)."""

    def change(data: dict[str, Any]) -> None:
        head, *rest = path.split("/")
        node: Any = rule(data, head[5:]) if head.startswith("rule:") else data.setdefault(head, {})
        for key in rest[:-1]:
            node = node.setdefault(key, {})
        node[rest[-1]] = value

    return change


REFUND_CAP = "policy.rules.1.match"
ADVISORY = "policy.rules.2.match"
CLOSE = "policy.rules.3.match"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _set("rule:refund_cap/match/args", {"amonut": {"gt": 1000}}),
            f"{REFUND_CAP}.args.amonut: tool payments.refund has no argument 'amonut' "
            "(arguments: amount, currency, customer_id, delay_ms)",
        ),
        (
            _set("rule:refund_cap/match/tool", ["payment.refund"]),
            f"{REFUND_CAP}.tool: 'payment.refund' matches no tool declared under 'tools' "
            "(defined: counter.increment, kb.search, payments.refund, reports.generate, "
            "tickets.update)",
        ),
        (
            _set("rule:no_irreversible_when_advisory/match/side_effect", ["irreversable"]),
            f"{ADVISORY}.side_effect: 'irreversable' matches no side-effect class "
            "(one of: external, irreversible, read, write)",
        ),
        (
            _set("rule:no_irreversible_when_advisory/match/autonomy_level", ["advisroy"]),
            f"{ADVISORY}.autonomy_level: 'advisroy' matches no autonomy level (one of: ",
        ),
        (
            _set("rule:close_requires_review_on_high_risk/match/risk_class", ["hi*"]),
            "",  # a glob that matches: accepted (see the next case)
        ),
        (
            _set("rule:close_requires_review_on_high_risk/match/risk_class", ["critical"]),
            f"{CLOSE}.risk_class: 'critical' matches no risk class (one of: high, low, medium)",
        ),
        (
            _set("rule:refund_cap/match/route", ["billing.refund"]),
            f"{REFUND_CAP}.route: 'billing.refund' matches no route (defined: ",
        ),
        (
            _set("rule:refund_cap/match/tenant", ["acme-eu"]),
            f"{REFUND_CAP}.tenant: 'acme-eu' matches no tenant (defined: acme, globex, initech)",
        ),
        (
            _set("rule:refund_cap/match/tool", []),
            f"{REFUND_CAP}.tool: an empty list matches nothing (leave it out)",
        ),
        (
            # the tool is irreversible: a rule on its "write" calls never matches
            _set("rule:refund_cap/match/side_effect", ["write"]),
            f"{REFUND_CAP}.side_effect: no tool this rule names has side effect write "
            "(payments.refund is irreversible): never matches",
        ),
    ],
)
def test_rule_references_that_point_nowhere_are_refused(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = shipped_data()
    change(data)
    path = write(tmp_path, data)
    if not expected:
        load_registry(load_config(path), str(path))
        return
    assert_refused(path, expected)


AMOUNT = "argument 'amount' of payments.refund is number in [0, 10000]"


@pytest.mark.parametrize(
    ("comparison", "expected"),
    [
        # NaN and infinity compare false with everything
        ({"gt": math.nan}, ".gt: Input should be a finite number"),
        ({"lte": math.inf}, ".lte: Input should be a finite number"),
        ({"eq": math.nan}, ".eq: nan is not a JSON number"),
        ({"in": [1.0, -math.inf]}, ".in: item 1: -inf is not a JSON number"),
        ({"eq": 2**70}, ".eq: integer outside 64 bits"),
        ({"gt": True}, ".gt: Input should be a valid number"),
        ({"gt": "100"}, ".gt: Input should be a valid number"),
        # comparisons whose type cannot meet the argument
        ({"contains": "1"}, f".contains: {AMOUNT}; contains needs a string: never matches"),
        ({"eq": "1000"}, f".eq: '1000' can never be equal: {AMOUNT}: never matches"),
        ({"ne": "1000"}, f".ne: '1000' can never be equal: {AMOUNT}: always holds"),
        ({"in": ["big", 5000]}, f".in: 'big' can never be equal: {AMOUNT}"),
        ({"not_in": ["x"]}, f".not_in: 'x' can never be equal: {AMOUNT}: always holds"),
        # beyond the argument's own bounds (amount: > 0, <= 10000)
        ({"gt": 10_000}, f".gt: 10000 is out of reach: {AMOUNT}: never matches"),
        ({"lte": -1}, f".lte: -1 is out of reach: {AMOUNT}: never matches"),
        # conditions that cannot hold together, or are no condition at all
        ({"gt": 100, "lt": 50}, ": no number is above 100 and below 50: never matches"),
        ({"gte": 5, "lt": 5}, ": no number is above 5 and below 5: never matches"),
        ({"eq": 50, "gt": 100}, ".eq: 50 contradicts the other conditions: never matches"),
        ({"eq": "x", "gt": 1}, ": eq, gt can never hold together"),
        ({"eq": None}, ".eq: null is no condition"),
        ({}, ": no condition (give one of eq, ne, gt, gte, lt, lte, in, not_in, contains)"),
        ({"in": []}, ".in: an empty list matches nothing"),
        ({"contains": ""}, ".contains: the empty string is in every string"),
    ],
)
def test_argument_conditions_that_can_never_match_are_refused(
    tmp_path: Path, comparison: dict[str, Any], expected: str
) -> None:
    data = shipped_data()
    rule(data, "refund_cap")["match"]["args"] = {"amount": comparison}
    assert_refused(write(tmp_path, data), f"{REFUND_CAP}.args.amount{expected}")


def test_a_literal_argument_compared_with_a_value_it_never_takes(tmp_path: Path) -> None:
    data = shipped_data()
    rule(data, "close_requires_review_on_high_risk")["match"]["args"] = {"status": {"eq": "clsoed"}}
    assert_refused(
        write(tmp_path, data),
        f"{CLOSE}.args.status.eq: 'clsoed' can never be equal: argument 'status' of "
        "tickets.update is one of 'open', 'pending', 'solved', 'closed': never matches",
    )


def test_an_argument_of_one_of_several_matched_tools_is_fine(tmp_path: Path) -> None:
    # "*" matches every tool; only payments.refund has "currency": the rule is live
    data = shipped_data()
    rule(data, "refund_cap")["match"] = {"tool": ["*"], "args": {"currency": {"eq": "USD"}}}
    path = write(tmp_path, data)
    load_registry(load_config(path), str(path))
    rule(data, "refund_cap")["match"]["args"] = {"curency": {"eq": "USD"}}
    assert_refused(
        write(tmp_path, data),
        f"{REFUND_CAP}.args.curency: none of the tools this rule matches (",
    )


# --- 4. every number is bounded ---------------------------------------------------------------


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every int and float field under ``model`` (through sub-models and dicts of them;
    rule thresholds in lists are compared, never converted, so only finite)."""
    for name, field in model.model_fields.items():
        union = isinstance(field.annotation, types.UnionType)
        for tp in typing.get_args(field.annotation) if union else (field.annotation,):
            value = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
            if tp in (int, float) or typing.get_origin(value) is typing.Annotated:
                yield f"{prefix}{name}", field
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from _numeric_fields(tp, f"{prefix}{name}.")
            elif isinstance(value, type) and issubclass(value, BaseModel):
                yield from _numeric_fields(value, f"{prefix}{name}.*.")


def _upper_bound(field: Any) -> float | None:
    metadata = list(field.metadata)
    if typing.get_origin(field.annotation) is dict:  # dict[str, Annotated[float, Field()]]
        metadata += list(getattr(typing.get_args(field.annotation)[1], "__metadata__", ()))
    flat = [inner for m in metadata for inner in [m, *getattr(m, "metadata", ())]]
    found = [b for m in flat for b in (getattr(m, "le", None), getattr(m, "lt", None))]
    bounds = [b for b in found if b is not None]
    return min(bounds) if bounds else None


def test_every_number_in_the_file_has_a_finite_upper_bound() -> None:
    fields = dict(_numeric_fields(RuntimeConfig))
    assert "tools.*.cost_usd" in fields and "routes.*.daily_budget.cost_usd" in fields
    unbounded = [name for name, field in fields.items() if _upper_bound(field) is None]
    assert unbounded == []
    assert all(math.isfinite(_upper_bound(f) or math.inf) for f in fields.values())


def test_the_largest_budget_fits_the_ledgers_64_bit_counters() -> None:
    fields = BudgetLimits.model_fields
    largest = BudgetLimits(**{name: _upper_bound(f) for name, f in fields.items()})
    limits = largest.ledger_limits()
    # a thousand of the largest limits still add up inside a signed 64-bit counter
    assert all(v > 0 and v * 1000 < MAX_INT64 for v in limits.values()), limits


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("tools/payments.refund", {"cost_usd": math.inf}), "tools.payments.refund.cost_usd"),
        (_set("tools/payments.refund", {"cost_usd": 1e7}), "tools.payments.refund.cost_usd"),
        (
            _set("budget_policies/standard/per_run/cost_usd", math.nan),
            "budget_policies.standard.per_run.cost_usd: Input should be a finite number",
        ),
        (
            _set("tenants/acme/daily_budget/tokens", 10**19),
            "tenants.acme.daily_budget.tokens: Input should be less than or equal to",
        ),
        (
            _set("routes/support.triage/run_timeout_s", 1e12),
            "routes.support.triage.run_timeout_s: Input should be less than or equal to",
        ),
        (
            _set("models/local-openai/timeout_s", math.inf),
            "models.local-openai.timeout_s: Input should be a finite number",
        ),
        (
            _set("models/scripted/input_usd_per_mtok", -0.5),
            "models.scripted.input_usd_per_mtok: Input should be greater than or equal to 0",
        ),
        (
            _set("scheduling/max_wait_s", {"critical": 1e9}),
            "scheduling.max_wait_s.critical: Input should be less than or equal to 86400",
        ),
        (
            _set("retry_policies/standard/backoff_max_s", math.inf),
            "retry_policies.standard.backoff_max_s: Input should be a finite number",
        ),
        (
            _set("tenants/acme/weight", True),  # a YAML boolean is not a number
            "tenants.acme.weight: Input should be a valid integer",
        ),
        (
            _set("models/local-openai/base_url", "file:///etc/passwd"),
            "models.local-openai.base_url: String should match pattern",
        ),
        (
            _set("models/local-openai/api_key_env", "sk-live-123"),  # a key, not a name
            "models.local-openai.api_key_env: String should match pattern",
        ),
    ],
)
def test_numbers_out_of_bounds_are_refused_naming_the_key(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = shipped_data()
    change(data)
    assert_refused(write(tmp_path, data), expected)


def test_infinite_cost_in_yaml_text_is_refused(tmp_path: Path) -> None:
    text = SHIPPED.read_text().replace(
        'payments.refund: {version: "1", cost_usd: 0.01}',
        'payments.refund: {version: "1", cost_usd: .inf}',
    )
    assert ".inf" in text
    assert_refused(
        write(tmp_path, text), "tools.payments.refund.cost_usd: Input should be a finite number"
    )


# --- 5. tool modules --------------------------------------------------------------------------


@pytest.fixture
def tool_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable package with a module that defines no tool and one that fails."""
    pkg = f"guard_tools_{tmp_path.name.replace('-', '_')}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "helpers.py").write_text("def helper() -> int:\n    return 1\n")
    (tmp_path / pkg / "boom.py").write_text("raise RuntimeError('no database at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]


def test_a_module_that_registers_no_tools_is_refused(tmp_path: Path) -> None:
    data = shipped_data()
    data["tool_modules"] = ["runtime.demo.tools", "os"]
    problems = assert_refused(write(tmp_path, data), "tool_modules: module 'os' registers no tools")
    assert len(problems) == 1


def test_every_tool_module_problem_is_reported_at_once(tmp_path: Path, tool_package: str) -> None:
    data = shipped_data()
    data["tool_modules"] = [
        "runtime.demo.tools",
        f"{tool_package}.helpers",
        f"{tool_package}.boom",
        f"{tool_package}.missing",
    ]
    problems = problems_of(write(tmp_path / tool_package, data))
    assert problems == [
        f"tool_modules: module '{tool_package}.helpers' registers no tools "
        "(no @tool at its top level)",
        f"tool_modules: tool module '{tool_package}.boom' failed to import: "
        "RuntimeError: no database at import",
        f"tool_modules: tool module '{tool_package}.missing' cannot be imported: "
        f"No module named '{tool_package}.missing'",
    ]


@pytest.mark.parametrize("name", ["../evil", "os.path; rm -rf /", ".relative", "a..b", ""])
def test_module_names_must_be_dotted_identifiers(tmp_path: Path, name: str) -> None:
    data = shipped_data()
    data["tool_modules"] = ["runtime.demo.tools", name]
    assert_refused(write(tmp_path, data), "tool_modules.1: String should match pattern")


# --- 6. config check runs every start-up check, and reports everything at once ----------------


def test_one_pass_reports_field_errors_references_and_dead_conditions(tmp_path: Path) -> None:
    data = shipped_data()
    data["tools"]["payments.refund"]["cost_usd"] = math.inf  # a field error
    rule(data, "refund_cap")["match"]["tool"] = ["payment.refund"]  # a reference
    rule(data, "refund_needs_approval")["match"]["args"] = {"amount": {"gt": 5, "lt": 1}}
    data["routes"]["support.triage"]["proposer"] = "gpt-9"
    problems = check_problems(write(tmp_path, data))
    assert [p.split(":")[0] for p in problems] == [
        "tools.payments.refund.cost_usd",
        "routes.support.triage.proposer",
        "policy.rules.0.match.args.amount",
        "policy.rules.1.match.tool",
    ]


def test_one_pass_reports_every_problem_against_the_tools(tmp_path: Path) -> None:
    data = shipped_data()
    data["tool_modules"] = ["runtime.demo.tools", "json"]
    rule(data, "refund_cap")["match"]["args"] = {"amonut": {"gt": 1}, "currency": {"gt": 1}}
    rule(data, "close_requires_review_on_high_risk")["match"]["side_effect"] = ["read"]
    problems = check_problems(write(tmp_path, data))
    assert [p.split(":")[0] for p in problems] == [
        "tool_modules",
        "policy.rules.1.match.args.amonut",
        "policy.rules.1.match.args.currency.gt",
        "policy.rules.3.match.side_effect",
    ]


def test_the_console_script_refuses_a_hostile_file(tmp_path: Path) -> None:
    # the installed `agentrt`, as an operator runs it (a JSON answer for scripts)
    lines = SHIPPED.read_text().splitlines()
    deny = lines.index("    - id: refund_cap") + 1
    lines.insert(deny + 1, "      effect: allow")
    path = write(tmp_path, "\n".join(lines) + "\n")
    proc = subprocess.run(
        [str(AGENTRT), "config", "check", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False
    assert answer["problems"] == [
        f"line {deny + 2}: duplicate key 'effect' (first at line {deny + 1})"
    ]


def test_the_console_script_imports_tool_modules_as_a_worker_does() -> None:
    # tests.probe_tools is importable from the project directory, as for `python -m celery`
    proc = subprocess.run(
        [str(AGENTRT), "config", "check", str(TEST_CONFIG)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok {TEST_CONFIG}")


def test_workers_refuse_the_file_at_start_up(tmp_path: Path) -> None:
    from tasks.app import create_app

    data = shipped_data()
    rule(data, "refund_cap")["match"]["args"] = {"amonut": {"gt": 1000}}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match="has no argument 'amonut'"):
        create_app(Settings(config=path, home=tmp_path))


# --- 7. --probe: does each OpenAI-compatible endpoint answer? ----------------------------------


class ModelsServer(FakeOpenAI):
    """tests.fake_openai with ``GET /v1/models`` (what a vLLM/Ollama/LiteLLM server lists)."""

    def _handler_class(self) -> type[Any]:
        base = super()._handler_class()
        seen = self.requests

        class Handler(base):  # type: ignore[misc,valid-type]
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append(type("Seen", (), {"path": self.path, "headers": headers})())
                if self.path.rstrip("/") != "/v1/models":
                    self.send_error(404)
                    return
                payload = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        return Handler


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed: nothing listens there any more


def probe_config(tmp_path: Path, models: dict[str, dict[str, Any]]) -> Path:
    data = shipped_data()
    data["models"] = {"scripted": data["models"]["scripted"], **copy.deepcopy(models)}
    data["routes"]["assistant.chat"]["proposer"] = next(iter(models))
    return write(tmp_path, data)


def openai_model(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "model": "m", "version": "m-1", "base_url": base_url, **extra}


def test_probe_says_ok_when_the_endpoint_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARD_TEST_KEY", "sk-test-123")
    with ModelsServer() as server:
        path = probe_config(
            tmp_path, {"local": openai_model(server.base_url, api_key_env="GUARD_TEST_KEY")}
        )
        result = check(str(path), "--probe")
        assert result.exit_code == 0, result.output
        assert f"probe local {server.base_url}/models: ok" in result.stdout
        # the key from api_key_env is sent, as the proposer sends it
        [request] = server.requests
        assert request.path == "/v1/models"
        assert request.headers["authorization"] == "Bearer sk-test-123"
        answer = json.loads(check(str(path), "--probe", "--json").stdout)
    assert answer["ok"] is True
    assert answer["probes"] == [
        {"model": "local", "url": f"{server.base_url}/models", "ok": True, "detail": "ok"}
    ]


def test_probe_reports_http_status_and_connection_errors_one_line_per_model(
    tmp_path: Path,
) -> None:
    port = closed_port()
    # FakeOpenAI only answers POST: a GET gets "501 Unsupported method"
    with ModelsServer() as good, FakeOpenAI() as no_models:
        path = probe_config(
            tmp_path,
            {
                "good": openai_model(good.base_url),
                "wrong-path": openai_model(f"http://127.0.0.1:{good.port}/api"),
                "no-get": openai_model(no_models.base_url),
                "down": openai_model(f"http://127.0.0.1:{port}/v1"),
            },
        )
        result = check(str(path), "--probe", "--probe-timeout", "5")
    assert result.exit_code == 1
    probes = [line for line in result.stdout.splitlines() if line.startswith("probe ")]
    assert probes == [
        f"probe good {good.base_url}/models: ok",
        f"probe wrong-path http://127.0.0.1:{good.port}/api/models: HTTP 404 Not Found",
        f"probe no-get {no_models.base_url}/models: HTTP 501 Unsupported method ('GET')",
        f"probe down http://127.0.0.1:{port}/v1/models: connection error: "
        "[Errno 111] Connection refused",
    ]
    assert "3 model endpoint(s) did not answer" in result.stderr


def test_probe_of_a_closed_port_fails_the_check(tmp_path: Path) -> None:
    port = closed_port()
    path = probe_config(tmp_path, {"local": openai_model(f"http://127.0.0.1:{port}/v1")})
    assert check(str(path)).exit_code == 0  # without --probe nothing is asked
    result = check(str(path), "--probe", "--json")
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["ok"] is False
    [probe] = answer["probes"]
    assert probe["model"] == "local" and probe["ok"] is False
    assert probe["detail"].startswith("connection error:")


def test_probe_does_not_run_on_an_invalid_file(tmp_path: Path) -> None:
    with ModelsServer() as server:
        path = probe_config(tmp_path, {"local": openai_model(server.base_url, timeout_s=-1)})
        result = check(str(path), "--probe")
        assert result.exit_code == 1
        assert server.requests == []
    assert "models.local.timeout_s: Input should be greater than 0" in result.stderr


# --- the checks judge conditions exactly as the policy engine evaluates them -------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["", "a", "ab", "1"]),
)
_BOUND = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.5, 2.5]))


@settings(max_examples=400, deadline=None)
@given(
    eq=_SCALARS,
    ne=_SCALARS,
    in_=st.none() | st.lists(_SCALARS, max_size=3),
    not_in=st.none() | st.lists(_SCALARS, max_size=3),
    gt=st.none() | _BOUND,
    lte=st.none() | _BOUND,
    contains=st.none() | st.sampled_from(["a", "1"]),
    value=_SCALARS,
)
def test_config_matching_agrees_with_the_policy_engine(
    eq: Any,
    ne: Any,
    in_: list[Any] | None,
    not_in: list[Any] | None,
    gt: float | None,
    lte: float | None,
    contains: str | None,
    value: Any,
) -> None:
    fields = {"eq": eq, "ne": ne, "in": in_, "not_in": not_in, "gt": gt, "lte": lte}
    cmp = Comparison.model_validate(
        {k: v for k, v in {**fields, "contains": contains}.items() if v is not None}
    )
    assert matches_comparison(value, cmp) is _compare(value, cmp)


def test_a_step_longer_than_the_brokers_visibility_timeout_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # workers refuse it at start-up (tasks.app.celery_config); so does config check
    data = shipped_data()
    data["routes"]["ops.counter"]["step_timeout_s"] = 3600
    path = write(tmp_path, data)
    monkeypatch.setenv("AGENTRT_VISIBILITY_TIMEOUT_S", "3600")
    [problem] = check_problems(path)
    assert problem == (
        "routes.ops.counter.step_timeout_s: workers refuse to start: 3600s plus the hard-limit "
        "grace, chain window, lease margin and deferral need AGENTRT_VISIBILITY_TIMEOUT_S above "
        "3667 (it is 3600)"
    )
    monkeypatch.setenv("AGENTRT_VISIBILITY_TIMEOUT_S", "3668")
    assert check(str(path)).exit_code == 0


def test_probe_never_prints_credentials_from_the_url(tmp_path: Path) -> None:
    with ModelsServer() as server:
        url = f"http://probe-user:s3cret@127.0.0.1:{server.port}/v1"
        path = probe_config(tmp_path, {"local": openai_model(url)})
        result = check(str(path), "--probe")
    assert result.exit_code == 0, result.output
    assert f"probe local http://127.0.0.1:{server.port}/v1/models: ok" in result.stdout
    assert "s3cret" not in result.output
