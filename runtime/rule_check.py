"""Policy rules against the registered tools: a rule that can never match is refused.

``runtime.config`` checks what the file alone can tell (names that exist, conditions that
can hold together). What needs the tool modules is checked here, once they are imported:

* the tools a rule names must include one of the side-effect classes it names;
* every argument a rule compares must be an argument of one of its tools (the fields of
  the tool's input model, as the policy engine sees them: ``model_dump(mode="json")``);
* every condition must be able to meet that argument's values: ``gt`` on a string, ``eq``
  of a value outside a ``Literal``, a bound beyond the field's own bounds never match;
  ``ne``/``not_in`` of such a value always hold, which is no condition either.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from runtime.config import (
    Comparison,
    JsonKind,
    Problem,
    RuleMatch,
    RuntimeConfig,
    equal_values,
    globs_match,
    json_kind,
    keyed,
)
from runtime.tools.registry import ToolRegistry, ToolSpec

_SCHEMA_KINDS: dict[str, JsonKind] = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
    "array": "array",
    "object": "object",
}


@dataclass(frozen=True)
class ArgShape:
    """What an argument's JSON value can be; None = unknown (anything)."""

    kinds: frozenset[JsonKind] | None = None
    values: tuple[Any, ...] | None = None
    #: numeric bounds, loosened to inclusive
    low: float | None = None
    high: float | None = None

    def can_equal(self, value: Any) -> bool:
        if self.values is not None:
            return any(equal_values(value, v) for v in self.values)
        return self.kinds is None or json_kind(value) in self.kinds

    def describe(self) -> str:
        if self.values is not None:
            return "one of " + ", ".join(repr(v) for v in self.values)
        if self.kinds is None:
            return "any value"
        text = " or ".join(sorted(self.kinds))
        if self.low is not None or self.high is not None:
            text += f" in [{_num(self.low, '-inf')}, {_num(self.high, 'inf')}]"
        return text


def _num(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:g}"


def _union(shapes: list[ArgShape]) -> ArgShape:
    """What an argument can be when it may come from any of several tools."""
    if any(s.kinds is None for s in shapes):
        return ArgShape()
    kinds = frozenset().union(*(s.kinds or () for s in shapes))
    values = None
    if all(s.values is not None for s in shapes):
        values = tuple(v for s in shapes for v in s.values or ())
    lows = [s.low for s in shapes if s.low is not None]
    highs = [s.high for s in shapes if s.high is not None]
    numeric = kinds == {"number"}
    return ArgShape(
        kinds,
        values,
        min(lows) if numeric and len(lows) == len(shapes) else None,
        max(highs) if numeric and len(highs) == len(shapes) else None,
    )


def _shape(schema: Any, defs: dict[str, Any], depth: int = 0) -> ArgShape:
    """The shape of a JSON schema (a pydantic field's), as far as it is plain to see."""
    if not isinstance(schema, dict) or depth > 16:
        return ArgShape()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _shape(defs.get(ref[len("#/$defs/") :]), defs, depth + 1)
    if "const" in schema:
        return ArgShape(frozenset({json_kind(schema["const"])}), (schema["const"],))
    if isinstance(schema.get("enum"), list):
        values = tuple(schema["enum"])
        return ArgShape(frozenset(json_kind(v) for v in values), values)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return _union([_shape(s, defs, depth + 1) for s in schema[key]])
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return _shape(schema["allOf"][0], defs, depth + 1)
    types = schema.get("type")
    names = [types] if isinstance(types, str) else types if isinstance(types, list) else None
    if names is None or any(t not in _SCHEMA_KINDS for t in names):
        return ArgShape()
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    return ArgShape(
        frozenset(_SCHEMA_KINDS[t] for t in names),
        None,
        low if isinstance(low, int | float) else None,
        high if isinstance(high, int | float) else None,
    )


@functools.lru_cache(maxsize=256)
def arg_shapes(model: type[BaseModel]) -> dict[str, ArgShape]:
    """Every argument of a tool's input model, by field name (as ``model_dump`` names it)."""
    try:
        schema = model.model_json_schema(by_alias=False, mode="serialization")
    except Exception:  # a type without a JSON schema: its arguments may be anything
        return {name: ArgShape() for name in model.model_fields}
    props, defs = schema.get("properties") or {}, schema.get("$defs") or {}
    return {name: _shape(props.get(name), defs) for name in model.model_fields}


def rule_tool_problems(config: RuntimeConfig, registry: ToolRegistry) -> list[str]:
    """Every rule of ``config.policy`` (and of each set under ``policies``) against the
    tools ``registry`` holds."""
    problems: list[str] = []
    sets = {"policy": config.policy, **{f"policies.{n}": p for n, p in config.policies.items()}}
    for key, policy in sets.items():
        for i, rule in enumerate(policy.rules):
            problems += _match_problems(f"{key}.rules.{i}.match", rule.match, config, registry)
    return problems


def _match_problems(
    key: str, match: RuleMatch, config: RuntimeConfig, registry: ToolRegistry
) -> list[str]:
    named = [
        spec
        for name in config.tools
        if globs_match(match.tool, name) and (spec := registry.get(name)) is not None
    ]
    tools = [s for s in named if globs_match(match.side_effect, s.side_effect)]
    problems: list[str] = []
    if match.tool is not None and match.side_effect is not None and named and not tools:
        classes = ", ".join(f"{s.name} is {s.side_effect}" for s in named)
        problems.append(
            f"{key}.side_effect: no tool this rule names has side effect "
            f"{', '.join(match.side_effect)} ({classes}): never matches"
        )
    if not tools:  # nothing to compare with (reported above, or no tool of that class yet)
        return problems
    for name, cmp in (match.args or {}).items():
        problems += keyed(f"{key}.args.{name}", arg_problems(name, cmp, tools))
    return problems


def arg_problems(name: str, cmp: Comparison, tools: list[ToolSpec]) -> list[Problem]:
    """Why ``cmp`` on argument ``name`` of ``tools`` never matches (or always holds)."""
    having = [t for t in tools if name in arg_shapes(t.input_model)]
    if not having:
        if len(tools) == 1:
            fields = ", ".join(sorted(arg_shapes(tools[0].input_model))) or "none"
            return [("", f"tool {tools[0].name} has no argument {name!r} (arguments: {fields})")]
        names = ", ".join(t.name for t in tools)
        return [("", f"none of the tools this rule matches ({names}) has an argument {name!r}")]
    shape = _union([arg_shapes(t.input_model)[name] for t in having])
    subject = f"argument {name!r} of {', '.join(t.name for t in having)} is {shape.describe()}"
    problems: list[Problem] = []
    for op, needs in (("gt", "number"), ("gte", "number"), ("lt", "number"), ("lte", "number"),
                      ("contains", "string")):  # fmt: skip
        if getattr(cmp, op) is not None and shape.kinds is not None and needs not in shape.kinds:
            problems.append((op, f"{subject}; {op} needs a {needs}: never matches"))
    if problems:
        return problems
    problems += _bound_problems(cmp, shape, subject)
    if cmp.eq is not None and not shape.can_equal(cmp.eq):
        problems.append(("eq", f"{cmp.eq!r} can never be equal: {subject}: never matches"))
    if cmp.ne is not None and not shape.can_equal(cmp.ne):
        problems.append(("ne", f"{cmp.ne!r} can never be equal: {subject}: always holds"))
    for op, outcome in (("in", "never matches"), ("not_in", "always holds")):
        values = getattr(cmp, "in_" if op == "in" else op) or []
        dead = [v for v in values if not shape.can_equal(v)]
        if dead:
            whole = f": {outcome}" if len(dead) == len(values) else ""
            listed = ", ".join(repr(v) for v in dead)
            problems.append((op, f"{listed} can never be equal: {subject}{whole}"))
    return problems


def _bound_problems(cmp: Comparison, shape: ArgShape, subject: str) -> list[Problem]:
    """Bounds beyond the field's own: ``gt: 20000`` on a field capped at 10000."""
    reach = (
        ("gt", cmp.gt, shape.high, operator.ge),
        ("gte", cmp.gte, shape.high, operator.gt),
        ("lt", cmp.lt, shape.low, operator.le),
        ("lte", cmp.lte, shape.low, operator.lt),
    )
    return [
        (op, f"{bound:g} is out of reach: {subject}: never matches")
        for op, bound, edge, beyond in reach
        if bound is not None and edge is not None and beyond(bound, edge)
    ]
