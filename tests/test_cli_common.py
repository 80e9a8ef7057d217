"""The CLI's shared plumbing: who acts by default, and the shape of ``runtime/cli``.

``default_actor`` must work where ``getpass.getuser()`` raises: a bare container with no
environment, a uid with no passwd entry and no controlling terminal. The import test reads
the source (imports inside functions and under TYPE_CHECKING count too), so a cycle between
command modules cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import admission
from runtime.cli import common
from runtime.cli.common import MAX_DEFAULT_ACTOR_CHARS, default_actor

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "runtime" / "cli"
#: what ``runs cancel`` puts in its stop reason (the tightest bound an actor meets)
CANCEL_ACTOR_CHARS = 190
PRINT_ACTOR = "from runtime.cli.common import default_actor; print(default_actor())"


def accepted(actor: str) -> bool:
    """Admission (submit) and cancel both take it."""
    return admission.identity_problem("actor", actor) is None and len(actor) <= CANCEL_ACTOR_CHARS


# --- default_actor ---------------------------------------------------------------------


def test_the_documented_order() -> None:
    every = {"AGENTRT_ACTOR": "ops:ann", "USER": "u", "LOGNAME": "l", "USERNAME": "w"}
    assert default_actor(every, uid=0) == "ops:ann"
    assert default_actor({**every, "AGENTRT_ACTOR": ""}, uid=0) == "cli:u"
    assert default_actor({"LOGNAME": "l", "USERNAME": "w"}, uid=0) == "cli:l"
    assert default_actor({"USERNAME": "w"}, uid=0) == "cli:w"
    root = pwd.getpwuid(0).pw_name
    assert default_actor({}, uid=0) == f"cli:{root}"


def test_a_uid_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", missing)
    assert default_actor({}, uid=4242) == "cli:uid:4242"
    monkeypatch.setattr(os, "getuid", lambda: 4343)
    assert default_actor({}) == "cli:uid:4343"


def test_values_are_bounded_and_printable() -> None:
    """Whatever the environment holds, the result is an actor admission accepts."""
    hostile = [
        "ann\x1b[31m\r\nforged",
        "\u202eevil",
        "x" * 5000,
        "\x00\x01",
        "   ",
        "é" * 300,
    ]
    for value in hostile:
        for name in ("AGENTRT_ACTOR", "USER", "LOGNAME"):
            actor = default_actor({name: value}, uid=0)
            assert accepted(actor), (name, value, actor)
            assert len(actor) <= MAX_DEFAULT_ACTOR_CHARS
            assert "\x1b" not in actor and "\n" not in actor and "\u202e" not in actor
    # a value with nothing printable left counts as unset
    assert default_actor({"AGENTRT_ACTOR": "\x00", "USER": "\x07", "LOGNAME": "ok"}) == "cli:ok"


def test_in_an_empty_environment_without_a_terminal() -> None:
    """``env -i``: no USER, LOGNAME or HOME; a new session, so no controlling terminal."""
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_ACTOR],
        cwd=ROOT,
        env={},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching uid needs root"
)
def test_as_a_uid_with_no_passwd_entry() -> None:
    """As a container runs an image with ``--user 54321``: getpass.getuser() raises. The
    child drops to that uid itself, once its modules are loaded (the interpreter may live
    where only root can read)."""
    uid = next(n for n in range(54321, 54421) if not _has_passwd_entry(n))
    script = (
        "import getpass, os, pwd\n"
        "from runtime.cli.common import default_actor\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        "try:\n    getpass.getuser()\nexcept (KeyError, OSError):\n    print('raises')\n"
        "print(os.getuid(), default_actor())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["raises", str(uid), f"cli:uid:{uid}"]


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_one_default_actor_for_every_command() -> None:
    """dlq and the other commands share it: no module of runtime/cli defines its own."""
    defined = [
        path.name
        for path in sorted(CLI.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name in ("default_actor", "_interactive")
    ]
    assert defined == ["common.py"]
    assert callable(common.interactive)


def test_interactive_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stdin, a closed one, or a pipe: nobody can answer a prompt (and nothing raises)."""
    with open(os.devnull) as closed:
        pass
    with open(os.devnull) as not_a_terminal:
        for stdin in (None, closed, not_a_terminal):
            monkeypatch.setattr(sys, "stdin", stdin)
            assert common.interactive() is False


# --- the shape of runtime/cli ----------------------------------------------------------


def cli_imports() -> dict[str, set[str]]:
    """Each ``runtime.cli`` module and the ``runtime.cli`` modules it imports anywhere:
    at its top, inside functions, under TYPE_CHECKING."""
    names = {f"runtime.cli.{p.stem}" for p in CLI.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for path in CLI.glob("*.py"):
        if path.stem == "__init__":
            continue
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[f"runtime.cli.{path.stem}"] = (found & names) - {f"runtime.cli.{path.stem}"}
    return graph


def test_no_import_cycle_in_the_cli() -> None:
    graph = cli_imports()
    assert graph["runtime.cli.main"] >= {"runtime.cli.common", "runtime.cli.dlq"}  # it reads
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_plumbing_imports_no_command() -> None:
    """common, params, render and the readers sit below every command module."""
    graph = cli_imports()
    commands = {"runtime.cli.main", "runtime.cli.dlq"}
    for module in ("common", "params", "render", "reads"):
        assert not graph[f"runtime.cli.{module}"] & commands, module
