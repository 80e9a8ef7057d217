"""Reading the deployment file: YAML that cannot say one thing and mean another.

PyYAML's ``safe_load`` keeps the last of two equal keys (a second ``effect:`` turns a deny
rule into an allow, a second ``policy:`` block replaces every rule), expands aliases without
limit (a "billion laughs" bomb of a few lines runs for seconds and eats memory) and reads
``2026-01-01`` as a date. This loader refuses all of that, naming the line:

* a key that appears twice in one mapping, at any depth (both lines are named);
* anchors, aliases and merge keys (``&a``, ``*a``, ``<<``): nothing is ever expanded;
* keys that are not strings (``on:``/``no:`` are booleans in YAML 1.1, ``1:`` an integer);
* dates, timestamps, ``!!binary``, ``!!set``, ``!!omap`` and ``!!pairs``;
* a file over ``MAX_CONFIG_BYTES`` or nested deeper than ``MAX_YAML_DEPTH``.

It reports every such problem in one pass; the pydantic models check the values after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from runtime.bounds import MAX_JSON_DEPTH
from runtime.errors import ConfigError, ConfigTooDeep

#: the largest deployment file read (the shipped one is a few KiB)
MAX_CONFIG_BYTES = 1024 * 1024
#: deepest nesting of mappings and lists (the file's deepest path is about 8)
MAX_YAML_DEPTH = MAX_JSON_DEPTH
#: problems listed from one file before the rest are only counted
MAX_PROBLEMS = 50

_MERGE_TAG = "tag:yaml.org,2002:merge"
_REFUSED_TAGS = {
    "tag:yaml.org,2002:timestamp": "is read as a date; quote it if it is a string",
    "tag:yaml.org,2002:binary": "uses !!binary, which the file does not support",
    "tag:yaml.org,2002:set": "uses !!set, which the file does not support (use a list)",
    "tag:yaml.org,2002:omap": "uses !!omap, which the file does not support (use a mapping)",
    "tag:yaml.org,2002:pairs": "uses !!pairs, which the file does not support (use a mapping)",
}


def _by_line(problem: tuple[int, str]) -> int:
    return problem[0]


def _line(mark: Mark | None) -> str:
    return f"line {mark.line + 1}" if mark is not None else "line ?"


class GuardedLoader(yaml.SafeLoader):
    """A ``SafeLoader`` that collects problems in ``problems`` instead of guessing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._problems: dict[tuple[int, str], None] = {}  # ordered, each once
        self._depth = 0

    @property
    def problems(self) -> list[str]:
        """Every problem found, by line (a problem repeated on one line, once)."""
        return [f"line {line}: {text}" for line, text in sorted(self._problems, key=_by_line)]

    def _problem(self, mark: Mark | None, text: str) -> None:
        self._problems[(mark.line + 1 if mark is not None else 0, text)] = None

    # --- composing: no anchor is kept, no alias is followed, nesting is bounded ----------
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.get_event()  # type: ignore[no-untyped-call]
            self._problem(
                event.start_mark,
                f"alias '*{event.anchor}' refused: anchors and aliases are not supported "
                "(write the value out)",
            )
            return ScalarNode("tag:yaml.org,2002:null", "", event.start_mark, event.end_mark)
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None) is not None:
            self._problem(
                event.start_mark,
                f"anchor '&{event.anchor}' refused: anchors and aliases are not supported",
            )
            event.anchor = None
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigTooDeep(event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    # --- constructing: every mapping key is a string, and appears once ----------------
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        first: dict[Any, Mark] = {}
        pairs: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._problem(key_node.start_mark, "merge key '<<' refused (write the keys out)")
                continue
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node.start_mark, f"a key must be a string, not a {key_node.id}")
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                self._problem(
                    key_node.start_mark,
                    f"key {key_node.value!r} is read as {type(key).__name__} {key!r}, not a "
                    "string: quote it",
                )
                continue
            if key in first:
                self._problem(
                    key_node.start_mark,
                    f"duplicate key {key!r} (first at {_line(first[key])})",
                )
                continue
            first[key] = key_node.start_mark
            pairs.append((key_node, value_node))
        return {
            self.construct_object(k, deep=deep): self.construct_object(v, deep=deep)
            for k, v in pairs
        }

    def _refuse_tag(self, node: Node) -> str:
        text = node.value if isinstance(node, ScalarNode) else node.tag
        self._problem(node.start_mark, f"{text!r} {_REFUSED_TAGS[node.tag]}")
        return str(text)


for _tag in _REFUSED_TAGS:
    GuardedLoader.add_constructor(_tag, GuardedLoader._refuse_tag)


def parse_yaml(text: str, source: str) -> Any:
    """The file's data, or ``ConfigError(source, problems)`` naming every bad line."""
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"the file is {size} bytes; at most {MAX_CONFIG_BYTES}"])
    loader = GuardedLoader(text)
    try:
        data = loader.get_single_data()
    except ConfigTooDeep as exc:
        raise ConfigError(
            source, [f"{_line(exc.mark)}: nested deeper than {MAX_YAML_DEPTH} levels"]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            source, [*loader.problems, f"{where}YAML syntax error: {problem}"]
        ) from None
    finally:
        loader.dispose()
    if loader.problems:
        problems = loader.problems[:MAX_PROBLEMS]
        if len(loader.problems) > MAX_PROBLEMS:
            problems.append(f"... and {len(loader.problems) - MAX_PROBLEMS} more problems")
        raise ConfigError(source, problems)
    return data


def read_yaml(path: Path) -> Any:
    """Read and parse ``path`` (see ``parse_yaml``)."""
    if not path.exists():
        raise ConfigError(str(path), ["file not found (set AGENTRT_CONFIG to its path)"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"the file is {len(raw)} bytes; at most {MAX_CONFIG_BYTES}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    return parse_yaml(text, str(path))
