"""The code's shape holds: no import cycle in ``runtime/`` or ``tasks/``, no oversized class.

Counted as an import: every ``import`` / ``from ... import`` anywhere in a module, inside
functions and under ``if TYPE_CHECKING:`` too (a lazy import is still a dependency), and
``importlib.import_module("<literal>")``. import-linter (``make lint``) checks the layers;
this test catches what its graph does not see and runs with the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "tasks")
MAX_CLASS_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(tree: ast.AST, me: str, is_package: bool, known: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # a package's own name counts as the first level of a relative import
                base = me.split(".")[: len(me.split(".")) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{alias.name}" for alias in node.names} & known
            found.update(subs)
            if len(subs) < len(node.names):  # some names are attributes of the module itself
                found.add(mod)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    # importing a.b.c also runs a and a.b, but only their __init__: that is an edge only
    # when the package's __init__ imports back, which the walk of that __init__ finds
    return {m for m in found if m in known and m != me}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {
        mod: _imports(ast.parse(path.read_text(), str(path)), mod, path.stem == "__init__", known)
        for mod, path in mods.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_runtime_or_tasks() -> None:
    graph = import_graph()
    assert "runtime.service" in graph and "tasks.app" in graph  # the walk found the code
    cycles = strongly_connected(graph)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_domain_never_imports_the_celery_edge() -> None:
    graph = import_graph()
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        if mod.startswith("runtime.") and not mod.startswith(("runtime.cli", "runtime.wiring"))
        for dep in deps
        if dep.startswith("tasks")
    )
    assert wrong == []


def test_no_class_over_300_lines() -> None:
    big = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {size} lines")
    assert big == [], "classes over 300 lines: " + ", ".join(big)
