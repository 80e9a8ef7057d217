"""The eval fixture file: one recorded run, what replaying it needs and what it must end in.

Versioned (``format: 1``); JSON, or YAML for a ``.yaml``/``.yml`` name. Secrets were
redacted by the store before they were recorded, so a fixture holds none. A file that does
not validate is refused with every problem named (``EvalFixtureError``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.bounds import BoundsError, check_json
from runtime.errors import EvalFixtureError
from runtime.eval_config import FIXTURE_SUFFIXES

FORMAT = 1
#: a fixture's name is its file name: letters, digits, '_', '.', '-'
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
#: the largest fixture file read
MAX_FIXTURE_BYTES = 4 * 1024 * 1024
#: fixtures a directory may hold before ``load_dir`` refuses (a runaway capture rule)
MAX_FIXTURES = 5000
SUFFIXES = tuple(sorted(FIXTURE_SUFFIXES))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Source(_Model):
    """Where the fixture came from."""

    run_id: str = Field(max_length=40)
    tenant: str = Field(max_length=100)
    route: str = Field(max_length=100)
    version_set: dict[str, Any] = Field(default_factory=dict)
    policy_version: str | None = None
    budget_policy_version: str | None = None
    captured_at: str
    #: the capture rule that made it (None: an operator's ``evals capture``)
    rule: str | None = None


class Case(_Model):
    """What is submitted again: the run's identity and input (without its script)."""

    tenant: str = Field(min_length=1, max_length=100)
    route: str = Field(min_length=1, max_length=100)
    goal: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)
    autonomy_level: str | None = None
    risk_class: str | None = None


class ToolResult(_Model):
    """One recorded execution of a tool, in the order the run made them."""

    tool: str = Field(min_length=1, max_length=200)
    ok: bool
    result: Any = None
    error_code: str | None = None
    error: str | None = None


class DecisionRecord(_Model):
    tool: str
    effect: str
    rule: str | None


class SpendBounds(_Model):
    """What the run spent: a replay may spend at most this much."""

    tokens: int = Field(ge=0)
    cost_micro_usd: int = Field(ge=0)
    tool_calls: int = Field(ge=0)


class Expected(_Model):
    status: str
    stop_reason: str | None
    #: every policy decision, in order
    decisions: list[DecisionRecord] = Field(default_factory=list)
    #: tools that executed, in order (a retried call once per execution)
    executed: list[str] = Field(default_factory=list)
    #: tool calls the runtime refused (policy, validation), in order
    refused: list[str] = Field(default_factory=list)
    spend: SpendBounds


class Fixture(_Model):
    format: Literal[1]
    name: str = Field(pattern=NAME.pattern)
    blocking: bool = False
    description: str | None = Field(default=None, max_length=2000)
    source: Source
    case: Case
    #: the proposer's recorded proposals, in order, each with its usage
    proposals: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    tool_results: list[ToolResult] = Field(default_factory=list, max_length=10_000)
    expected: Expected


def _problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()]


def parse(data: Any, source: str) -> Fixture:
    if not isinstance(data, dict):
        raise EvalFixtureError(source, ["the fixture must be a mapping at the top level"])
    if data.get("format") != FORMAT:
        raise EvalFixtureError(
            source,
            [f"format: {data.get('format')!r} is not a format this version reads ({FORMAT})"],
        )
    try:
        check_json(data, label="fixture")
    except BoundsError as exc:
        raise EvalFixtureError(source, [str(exc)]) from None
    try:
        return Fixture.model_validate(data)
    except ValidationError as exc:
        raise EvalFixtureError(source, _problems(exc)) from None


def load(path: Path) -> Fixture:
    """Read and validate one fixture file."""
    try:
        size = path.stat().st_size
        if size > MAX_FIXTURE_BYTES:
            raise EvalFixtureError(str(path), [f"{size} bytes; at most {MAX_FIXTURE_BYTES}"])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFixtureError(str(path), [f"cannot read it: {exc}"]) from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise EvalFixtureError(str(path), [f"not valid {path.suffix[1:].upper()}: {exc}"]) from None
    return parse(data, str(path))


def load_dir(directory: Path) -> list[Fixture]:
    """Every fixture of ``directory`` (sorted by file name); a missing directory holds
    none. One invalid file refuses the set: a gate must not pass on the files it could
    read."""
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise EvalFixtureError(str(directory), ["not a directory"])
    paths = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if len(paths) > MAX_FIXTURES:
        raise EvalFixtureError(str(directory), [f"{len(paths)} fixtures; at most {MAX_FIXTURES}"])
    fixtures = [load(p) for p in paths]
    names = [f.name for f in fixtures]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EvalFixtureError(str(directory), [f"fixture names used twice: {', '.join(twice)}"])
    return fixtures


def dump(fixture: Fixture, path: Path) -> None:
    """Write ``fixture`` (YAML for a .yaml/.yml name, else JSON), replacing the file whole."""
    data = fixture.model_dump(mode="json")
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
