"""The operator surface of ``agentrt`` (issue 8): what a person at a terminal sees.

* read-only commands read SQL only: no redis-server started, no ``openai`` imported (checked
  with ``-X importtime`` in a subprocess, not by timing);
* every error is one line with the README's exit codes, whatever the option value (every
  number, duration, time and rate is bounded), and a bug is one line too, with its
  traceback in a log file (``AGENTRT_DEBUG=1`` prints it);
* nothing a value carries (escape sequences, control and bidi characters) reaches the
  terminal, while ``--json`` stays exact;
* tables fit 80 columns and keep their numbers;
* ``agentrt flower --basic-auth`` works and keeps the password off command lines;
* the README's command lines name commands and options that exist.

Commands run through ``runtime.cli.main.main`` (the console script's entry point: one-line
usage errors, the last-resort guard) in-process, or as subprocesses where the process
itself is the point.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from rich.console import RenderableType
from sqlalchemy import text
from typer.testing import CliRunner, Result

from runtime.cli import dlq_views, render
from runtime.cli.main import app, main
from runtime.cli.reads import Counter, Reads
from runtime.contract import RunStatus, RunView, VersionSet
from runtime.tracing import TraceBuffer
from tasks.messages import STEP_QUEUE
from tests.support import ROOT, Deployment, wait_for

REPLY = {"type": "reply", "text": "ok"}
#: what a hostile goal or error message may carry: SGR, a screen clear, a window title
#: (OSC, BEL-terminated), a hyperlink (OSC 8, ST-terminated), an 8-bit CSI, a carriage
#: return, DEL, a C1 control and the bidi override/isolate characters
EVIL = (
    "evil\x1b[31mred\x1b[2J\x1b]0;pwned\x07 \x1b]8;;http://x.example\x1b\\link\x1b]8;;\x1b\\"
    "\x9b2J\r\x7f\x85 \u202egnp.exe\u202c\u2066iso\u2069 end"
)
#: characters none of which may reach the terminal from a value
FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def run_main(*args: str) -> tuple[int, str, str]:
    """``agentrt ARGS`` through the real entry point, in-process: (exit code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def one_line(text: str) -> str:
    """The single line ``text`` must be (a trailing newline allowed)."""
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


def cli(*args: str, columns: int = 250, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": str(columns)})


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def env(fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A private deployment (own namespace, SQLite, no worker), its settings in the env."""
    for name, value in fresh_deployment.env.items():
        monkeypatch.setenv(name, value)
    return fresh_deployment


def dead_letter(dep: Deployment, error: str = "backend answered 503") -> tuple[str, str]:
    run = dep.submit_script([REPLY])
    entry_id = dep.svc.dead_letters.dead_letter_step(
        run.run_id, 0, "exhausted", error_type="BackendDown", error=error, traceback="tb"
    )
    assert entry_id is not None
    return run.run_id, entry_id


def python_env(**overrides: str) -> dict[str, str]:
    """This environment without any AGENTRT_* setting, plus ``overrides``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    return {**base, "PYTHONUNBUFFERED": "1", **overrides}


# --- read-only commands read SQL only ----------------------------------------------------

#: modules a read-only command must not load: model clients, the service and step loop,
#: the scheduler, Celery
NOT_FOR_READS = ("openai", "runtime.service", "runtime.step", "runtime.scheduling", "celery")


def imported_modules(importtime_stderr: str) -> set[str]:
    names = set()
    for row in importtime_stderr.splitlines():
        if row.startswith("import time:") and "|" in row:
            names.add(row.rsplit("|", 1)[1].strip())
    return names


def test_read_only_commands_start_no_redis_and_load_no_model_client(
    fresh_deployment: Deployment, tmp_path: Path
) -> None:
    dep = fresh_deployment
    run = dep.submit_script([REPLY], goal="read me")
    _, entry_id = dead_letter(dep)
    home = tmp_path / "fresh-home"  # no embedded server state here, and none may appear
    env = python_env(
        AGENTRT_DATABASE_URL=dep.env["AGENTRT_DATABASE_URL"],
        AGENTRT_NAMESPACE=dep.env["AGENTRT_NAMESPACE"],
        AGENTRT_CONFIG=dep.env["AGENTRT_CONFIG"],
        AGENTRT_HOME=str(home),
    )
    commands = {
        "runs list": run.run_id,
        f"runs show {run.run_id}": "read me",
        f"trace {run.run_id}": "admission",
        "dlq list": entry_id,
        f"dlq show {entry_id}": "BackendDown",
        "dlq stats": "open dead letters 1",
        "dlq audit": "audit log is empty",
        # --json shows the input, redacted: that loads the deployment file and tool modules
        f"runs show {run.run_id} --json": '"goal": "read me"',
    }
    for command, expected in commands.items():
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "runtime.cli.main", *command.split()],
            cwd=ROOT,
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        assert expected in proc.stdout, f"{command}: {proc.stdout}"
        modules = imported_modules(proc.stderr)
        assert "runtime.cli.reads" in modules  # the importtime listing is there
        unwanted = {m for m in modules for n in NOT_FOR_READS if m == n or m.startswith(n + ".")}
        assert not unwanted, f"{command} imported {sorted(unwanted)[:8]}"
        # stats reads the Redis counters when a server runs; tool modules may use redis-py
        if command != "dlq stats" and not command.endswith("--json"):
            assert "redis" not in modules, f"{command} imported redis"
        assert not (home / "redis").exists(), f"{command} started an embedded redis-server"
    assert (
        "counters not read"
        in subprocess.run(
            [sys.executable, "-m", "runtime.cli.main", "dlq", "stats"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )


#: what the views for people (``runs list/show``, ``trace`` without --json) must not load:
#: the SQL toolkit, the settings class, our pydantic models, Redis, Celery, model clients -
#: and, on SQLite, the PostgreSQL driver
NOT_FOR_PEOPLE = (
    *NOT_FOR_READS,
    "sqlalchemy",
    "sqlmodel",
    "pydantic_settings",
    "redis",
    "psycopg",
    "runtime.contract",
    "runtime.settings",
    "runtime.run_views",
    "runtime.config",
    "runtime.store.runs",
    "runtime.store.models",
)


def import_tree(importtime_stderr: str) -> list[tuple[int, str]]:
    """``-X importtime``'s rows as (depth, module), in its order: each module is listed
    after what it imported, one level deeper."""
    rows = []
    for row in importtime_stderr.splitlines():
        if row.startswith("import time:") and "|" in row:
            column = row.rsplit("|", 1)[1]
            name = column.strip()
            if name != "imported package":
                rows.append(((len(column) - len(column.lstrip()) - 1) // 2, name))
    return rows


def first_importer(tree: list[tuple[int, str]], module: str) -> str | None:
    """The top-level import under which ``module`` was first loaded (None if never)."""
    for i, (_, name) in enumerate(tree):
        if name == module:
            return next((n for d, n in tree[i:] if d == 0), None)
    return None


def test_the_views_for_people_load_no_sql_toolkit_models_or_settings(
    fresh_deployment: Deployment, tmp_path: Path
) -> None:
    """``runs list``, ``runs show`` and ``trace`` for people read SQLite with ``sqlite3``:
    no SQLAlchemy or SQLModel, no pydantic-settings, none of our pydantic models. Typer
    itself validates option values with pydantic (its ``typer._adapters``): pydantic may be
    loaded by it, by nothing else."""
    dep = fresh_deployment
    run = dep.submit_script([REPLY], goal="read me")
    home = tmp_path / "fresh-home"
    env = python_env(AGENTRT_DATABASE_URL=dep.env["AGENTRT_DATABASE_URL"], AGENTRT_HOME=str(home))
    commands = {
        "runs list": run.run_id,
        "runs list --tenant t1 --status queued --route r.basic --limit 5": run.run_id,
        "runs list --status unknown": "no runs match",
        f"runs show {run.run_id}": "read me",
        f"runs show {run.run_id} --tenant t1": "read me",
        f"trace {run.run_id}": "admission",
    }
    for command, expected in commands.items():
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "runtime.cli.main", *command.split()],
            cwd=ROOT,
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        assert expected in proc.stdout, f"{command}: {proc.stdout}"
        tree = import_tree(proc.stderr)
        modules = {name for _, name in tree}
        assert {"runtime.store.plain", "sqlite3"} <= modules  # the listing is there
        unwanted = {m for m in modules for n in NOT_FOR_PEOPLE if m == n or m.startswith(n + ".")}
        assert not unwanted, f"{command} imported {sorted(unwanted)[:8]}"
        assert first_importer(tree, "pydantic") in (None, "typer._adapters"), command
        assert not home.exists(), f"{command} made {home}"


def test_a_write_command_still_gets_redis(env: Deployment) -> None:
    """``runs cancel`` (and queues, dlq retry/purge, recover) keep the whole service."""
    run = env.submit_script([REPLY])
    code, out, err = run_main("runs", "cancel", run.run_id, "--actor", "ops", "--json")
    assert code == 0, err
    assert json.loads(out)["stopReason"] == "cancelled:ops"
    assert env.svc.redis.get(env.svc.keys.run_cancelled(run.run_id)) == b"ops"


def test_the_reader_returns_what_the_service_returns(env: Deployment) -> None:
    """``Reads`` builds views and traces without the service: the same values, the input
    redacted the same way (with ``--json``) or left out (views for people)."""
    admitted = env.svc.submit(
        "t1", "r.basic", "same", {"script": [REPLY], "api_key": "sk-live-123"}, actor="t"
    )
    refused = env.svc.submit("nobody", "r.basic", "refused", {}, actor="t")
    reads = Reads(env.settings)
    try:
        for run_id in (admitted.run_id, refused.run_id):
            view = reads.run(run_id, with_input=True)
            assert view.model_dump() == env.svc.get(run_id).model_dump()
            assert reads.run(run_id).input is None
            assert reads.trace(run_id) == env.svc.trace(run_id)
        assert reads.run(admitted.run_id, with_input=True).input == {
            "script": [REPLY],
            "api_key": "[redacted]",
        }
        listed = reads.runs(None, None, None, 10, with_input=True)
        assert [v.model_dump() for v in listed] == [
            v.model_dump() for v in env.svc.list_runs(None, None, None, 10)
        ]
    finally:
        reads.close()
    shown = as_json(cli("runs", "show", admitted.run_id, "--json"))
    assert shown["run"]["input"]["api_key"] == "[redacted]"
    assert "sk-live-123" not in cli("runs", "list", "--json").stdout


def test_an_input_that_cannot_be_redacted_is_not_shown(
    env: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Fail closed: if the tool modules cannot be loaded, --json shows no input."""
    run = env.svc.submit(
        "t1", "r.basic", "g", {"script": [REPLY], "note": "kept private"}, actor="t"
    )
    monkeypatch.setenv("AGENTRT_CONFIG", str(tmp_path / "missing.yaml"))
    data = as_json(cli("runs", "show", run.run_id, "--json"))
    assert data["run"]["input"] is None
    assert "could not be shown" in data["run"]["unreadableFields"]["input"]
    assert "kept private" not in cli("runs", "list", "--json").stdout


def test_model_clients_are_imported_on_first_use(fresh_deployment: Deployment) -> None:
    """The service, the Celery app and a scripted step never import the openai SDK; the
    first openai-kind proposer does."""
    script = """
import sys
import tasks.app
from runtime.settings import Settings
from runtime.wiring import Runtime
svc = Runtime.from_settings(Settings())
svc.catalog.proposer_for("scripted")
before = "openai" in sys.modules
svc.catalog.proposer_for("fake-openai")
print(before, "openai" in sys.modules)
svc.close()
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=python_env(**fresh_deployment.env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


# --- bounded values, one-line errors, exit codes ---------------------------------------------

HUGE = "9" * 30
SUBMIT = ("submit", "--tenant", "t1", "--route", "r.basic", "--goal", "g")
#: every option that takes a number, a duration, a time or a rate, with values that used to
#: overflow, hang or pass unchecked
BAD_VALUES: list[tuple[tuple[str, ...], str, list[str]]] = [
    (SUBMIT, "--timeout", ["nan", "inf", "-inf", "1e400", "-1", "604801", "soon"]),
    (("runs", "list"), "--limit", [HUGE, "0", "-5", "10001"]),
    (("queues",), "--limit", [HUGE, "-1"]),
    (("recover", "--yes"), "--inflight-wait", ["nan", "inf", "-1", "86401"]),
    (("worker",), "--concurrency", ["0", HUGE]),
    (("worker",), "--metrics-port", ["0", "65536", HUGE]),
    (("worker",), "--nice", ["-1", "20", HUGE]),
    (("flower",), "--port", ["0", "65536", HUGE]),
    (("api",), "--port", ["0", "65536", HUGE]),
    (("api",), "--workers", ["0", "65", HUGE]),
    (("demo",), "--workers", ["0", "9"]),
    (("demo",), "--concurrency", ["0", HUGE]),
    (("demo",), "--timeout", ["nan", "inf", "0", "-3", "1e400"]),
    (("demo",), "--port", ["70000"]),
    (("dlq", "list"), "--since", ["99999999w", HUGE + "s", "0001-01-01T00:00:00+01:00"]),
    (("dlq", "list"), "--until", ["9999-12-31T23:00:00-02:00", "1900-01-01", "2025-13-45"]),
    (("dlq", "list"), "--limit", [HUGE, "0"]),
    (("dlq", "retry", "--dry-run"), "--since", ["99999999w"]),
    (("dlq", "retry", "--dry-run"), "--until", ["0001-01-01T00:00:00+01:00"]),
    (("dlq", "purge", "--dry-run"), "--since", [HUGE + "d"]),
    (("slo", "report"), "--since", ["99999999w", "24x", "0001-01-01T00:00:00+01:00"]),
    (("dlq", "retry", "--dry-run"), "--rate", ["0", "1e9/s", "0.1/h", "10001/s", "fast"]),
    (("dlq", "retry", "--dry-run", "--all"), "--limit", [HUGE, "100001"]),
    (("dlq", "purge", "--dry-run"), "--until", ["0001-01-01T00:00:00+01:00"]),
    (("dlq", "purge", "--dry-run", "--all"), "--limit", [HUGE]),
    (("dlq", "audit"), "--limit", [HUGE, "0"]),
    (("approvals", "list"), "--limit", [HUGE, "0", "-5", "1001"]),
    (("config", "check"), "--probe-timeout", ["nan", "inf", "0", "61"]),
    (("runs", "cancel", "--dry-run", "--tenant", "t1"), "--limit", [HUGE, "0", "100001"]),
    (
        ("keys", "create", "--tenant", "t1", "--scope", "runs:read"),
        "--expires-in",
        ["0s", HUGE + "d", "soon"],
    ),
    (("runs", "cancel", "--tenant", "t1"), "--older-than", ["99999999w", "9999-12-31", "soon"]),
    (("evals", "run"), "--repeat", ["0", "101", HUGE]),
    (("evals", "sweep"), "--limit", ["0", "10001", HUGE]),
    (("evals", "sweep"), "--since", ["0s", HUGE + "d", "soon"]),
    (("policy", "diff", "--candidate", "c.yaml"), "--limit", ["0", "10001", HUGE]),
    (("policy", "diff", "--candidate", "c.yaml"), "--since", ["99999999w", "soon"]),
    (("releases", "canary", "r.basic", "v2"), "--percent", ["nan", "inf", "0", "-5", "100.5", "x"]),
    (("ops", "log"), "--limit", [HUGE, "0", "10001"]),
    (("docs", "list", "--tenant", "t1"), "--limit", [HUGE, "0", "1001"]),
    (
        ("docs", "add", "--tenant", "t1", "--source", "kb", "--title", "x", "--text", "y"),
        "--updated-at",
        ["99999999w", "2999-01-01T00:00:00Z", "soon"],
    ),
    (("memory", "list", "--tenant", "t1"), "--limit", [HUGE, "0", "10001"]),
]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [(c, o, v) for c, o, values in BAD_VALUES for v in values],
    ids=lambda p: p if isinstance(p, str) else " ".join(p),
)
def test_an_out_of_range_value_is_one_line_naming_the_option_and_exit_2(
    command: tuple[str, ...],
    option: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # refused while parsing: nothing is built, started or stored
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    code, out, err = run_main(*command, option, value)
    line = one_line(err)
    assert code == 2, err
    assert line.startswith("error: ") and option in line, line
    assert "Traceback" not in err and out == ""
    assert not any(tmp_path.iterdir())


def test_every_numeric_option_is_in_the_table_above() -> None:
    """A new number option without a bound (or a test here) fails this test."""
    covered = {
        (
            " ".join(
                c[:2]
                if c[0]
                in (
                    "runs",
                    "dlq",
                    "config",
                    "approvals",
                    "evals",
                    "policy",
                    "releases",
                    "ops",
                    "slo",
                    "docs",
                    "memory",
                )
                else c[:1]
            ),
            o,
        )
        for c, o, _ in BAD_VALUES
    }
    command = typer.main.get_command(app)

    def leaves(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from leaves(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    numeric = set()
    for path, cmd in leaves(command, []):
        for param in cmd.params:
            descriptor = getattr(param, "type_descriptor", None)
            annotation = getattr(descriptor, "annotation", None)
            if annotation in (int, float, datetime):
                numeric.add((path, param.opts[0]))
    if not numeric:
        pytest.skip("this Typer version does not expose parameter annotations")
    assert numeric <= covered, sorted(numeric - covered)


def test_the_reported_overflows_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    code, _, err = run_main("dlq", "list", "--since", "99999999w")
    assert code == 2
    assert "at most 3650d" in one_line(err)
    code, _, err = run_main("runs", "list", "--limit", HUGE)
    assert code == 2 and "10000" in one_line(err)
    code, _, err = run_main("submit", *SUBMIT[1:], "--timeout", "nan")
    assert code == 2 and "from 0 to 604800" in one_line(err)


def test_an_echoed_value_is_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    code, _, err = run_main("dlq", "list", "--since", "7" * 5000 + "w")
    assert code == 2 and len(one_line(err)) < 300


def deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (deep(100_000), "--input is nested deeper than 32 levels"),
        ("[" * 100_000 + "]" * 100_000, "--input is nested deeper than 32 levels"),
        (deep(33), "--input is nested deeper than 32 levels"),
        ('{"a": NaN}', "--input: NaN is not a JSON number"),
        ('{"a": Infinity}', "--input: Infinity is not a JSON number"),
        ('{"n": 1' + "0" * 30 + "}", "--input: input.n: integer outside 64 bits"),
        ('{"script": [', "--input is not valid JSON: Expecting value at line 1 column 13"),
        ("[1, 2]", "--input must be a JSON object, got list"),
    ],
    ids=["deep-object", "deep-array", "33-levels", "nan", "infinity", "bigint", "bad", "list"],
)
def test_a_bad_input_is_one_line_and_exit_2(
    payload: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    code, _, err = run_main(*SUBMIT, "-i", payload)
    assert code == 2
    assert one_line(err) == f"error: {message}"
    # the same from a file and from stdin
    path = tmp_path / "input.json"
    path.write_text(payload)
    code, _, err = run_main(*SUBMIT, "-i", f"@{path}")
    assert code == 2 and message.replace("--input", f"--input @{path}") in one_line(err)
    assert not (tmp_path / "redis").exists()


def test_input_that_is_not_utf8_or_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"a": "\xff\xfe"}')
    code, _, err = run_main(*SUBMIT, "-i", f"@{binary}")
    assert code == 2 and "is not UTF-8 text" in one_line(err)
    large = tmp_path / "large.json"
    large.write_text('{"a": "' + "x" * (17 * 1024 * 1024) + '"}')
    code, _, err = run_main(*SUBMIT, "-i", f"@{large}")
    assert code == 2 and "at most 16777216 accepted" in one_line(err)


def test_usage_errors_are_one_line_with_a_help_hint(tmp_path: Path) -> None:
    code, _, err = run_main("runs", "nope")
    assert code == 2 and one_line(err) == "error: No such command 'nope'. (see agentrt runs --help)"
    code, _, err = run_main("runs", "list", "--status", "done")
    assert code == 2 and "'done'" in one_line(err)
    code, _, err = run_main("submit", "--tenant", "t1")
    assert code == 2 and "--route" in one_line(err)


def test_expected_failures_are_one_line_with_exit_1(env: Deployment) -> None:
    code, _, err = run_main("runs", "show", "0" * 32)
    assert code == 1 and one_line(err) == f"error: no run with id {'0' * 32!r}"
    code, _, err = run_main("dlq", "show", "nope")
    assert code == 1 and one_line(err) == "error: no dead letter with id 'nope'"


def test_invalid_settings_and_config_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTRT_VISIBILITY_TIMEOUT_S", "soon")
    monkeypatch.setenv("AGENTRT_WORKER_LOST_RETRIES", "many")
    code, _, err = run_main("runs", "list", "--json")
    line = one_line(err)
    assert code == 1
    assert "AGENTRT_VISIBILITY_TIMEOUT_S" in line and "AGENTRT_WORKER_LOST_RETRIES" in line
    # the views for people read only the database settings: they still answer
    code, out, err = run_main("runs", "list")
    assert (code, err) == (0, "") and "no runs match" in out
    assert not any(tmp_path.iterdir())  # and create nothing
    monkeypatch.delenv("AGENTRT_VISIBILITY_TIMEOUT_S")
    monkeypatch.delenv("AGENTRT_WORKER_LOST_RETRIES")

    data = yaml.safe_load((ROOT / "tests" / "config" / "runtime.yaml").read_text())
    data["routes"]["r.basic"]["max_steps"] = 0
    data["routes"]["r.basic"]["risk_class"] = "extreme"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("AGENTRT_CONFIG", str(bad))
    code, _, err = run_main("worker")
    line = one_line(err)
    assert code == 1 and f"invalid config {bad}: routes.r.basic." in line
    assert "(and 1 more); see agentrt config check" in line


# --- the last-resort guard ---------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_with_the_traceback_in_a_log(
    env: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug anywhere under a command (here: in rendering) is one line and exit 1."""

    def broken(views: list[RunView], width: int) -> RenderableType:
        raise ZeroDivisionError("division by zero in the runs table")

    env.submit_script([REPLY])
    monkeypatch.setattr(render, "runs_view", broken)
    code, _, err = run_main("runs", "list")
    log = env.home / "cli-errors.log"
    assert code == 1
    assert one_line(err) == (
        "error: internal error (ZeroDivisionError): division by zero in the runs table; "
        f"details in {log}"
    )
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "agentrt runs list" in text

    monkeypatch.setenv("AGENTRT_DEBUG", "1")
    code, _, err = run_main("runs", "list")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: internal error (ZeroDivisionError)")


#: a bug under a command, in a real process: the runs table cannot be drawn
CRASH = """
import sys
from runtime.cli import main, render

def broken(views, width):
    raise ValueError("kaput in the runs table")

render.runs_view = broken
main.main(sys.argv[1:])
"""


def test_a_real_process_guards_a_crash_and_logs_no_argument(
    fresh_deployment: Deployment, tmp_path: Path
) -> None:
    dep = fresh_deployment
    dep.submit_script([REPLY])
    home = tmp_path / "home"
    env = python_env(**{**dep.env, "AGENTRT_HOME": str(home)})
    args = [sys.executable, "-c", CRASH, "runs", "list", "--route", "r.basic"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = home / "cli-errors.log"
    assert proc.returncode == 1
    assert one_line(proc.stderr) == (
        f"error: internal error (ValueError): kaput in the runs table; details in {log}"
    )
    text = log.read_text()
    assert "ValueError: kaput in the runs table" in text and "Traceback" in text
    # the command's name is logged, its arguments are not
    assert "agentrt runs list" in text and "r.basic" not in text

    proc = subprocess.run(
        args, cwd=ROOT, env={**env, "AGENTRT_DEBUG": "1"}, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: internal error (ValueError)")


def test_the_console_script_is_the_guarded_entry_point(tmp_path: Path) -> None:
    agentrt = Path(sys.executable).parent / "agentrt"
    env = python_env(AGENTRT_HOME=str(tmp_path))
    proc = subprocess.run(
        [str(agentrt), "dlq", "list", "--since", "99999999w"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc.stderr).startswith("error: Invalid value for '--since'")


# --- nothing from a value reaches the terminal -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "one", "multi"),
    [
        ("a\x1b[31mred\x1b[0m", "ared", "ared"),
        ("x\x1b]0;title\x07y", "xy", "xy"),
        ("x\x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\y", "xlinky", "xlinky"),
        ("a\x9b2Jb\x9d0;t\x9cc", "abc", "abc"),
        ("\x1bc\x1b(Bx\x1b7y", "xy", "xy"),
        ("cr\rdel\x7fnel\x85bell\x07", "crdelnelbell", "crdelnelbell"),
        ("bi\u202edi\u202a\u2066x\u2069", "bidix", "bidix"),
        ("tab\tnl\n\nok", "tab nl ok", "tab\tnl\n\nok"),
        ("unterminated \x1b]0;rest of it", "unterminated ", "unterminated "),
        ("plain · ünïcode ✓", "plain · ünïcode ✓", "plain · ünïcode ✓"),
    ],
)
def test_clean(raw: str, one: str, multi: str) -> None:
    assert render.clean(raw) == one
    assert render.clean(raw, multiline=True) == multi


def test_the_console_strips_what_a_renderer_let_through() -> None:
    """SafeConsole is the last line: even a raw value in a raw Text is cleaned, while
    Rich's own styling still works on a terminal."""
    buf = io.StringIO()
    console = render.SafeConsole(file=buf, width=80, force_terminal=True, color_system="standard")
    table = render.FitTable()
    table.add_column("value")
    from rich.text import Text

    table.add_row(Text(EVIL))
    console.print(table)
    console.print(f"[red]styled[/] {EVIL}")
    written = buf.getvalue()
    assert "\x1b[31m" in written  # our own style, not the value's
    without_sgr = re.sub(r"\x1b\[[0-9;]*m", "", written)
    assert not FORBIDDEN.search(without_sgr.replace("\n", "")), repr(without_sgr)
    assert "pwned" not in written and "x.example" not in written


def assert_clean(text: str) -> None:
    bad = FORBIDDEN.search(text.replace("\n", ""))
    assert bad is None, f"{bad.group()!r} reached the terminal in {text!r}"


def test_runs_list_show_and_trace_strip_what_a_goal_or_name_carries(env: Deployment) -> None:
    run = env.submit_script([REPLY])
    # what a tool's error message carries into the trace (as a step writes it)
    trace = TraceBuffer(run.run_id, run.tenant_id, run.trace_id, 0)
    trace.add("tool_end", tool="kb.search", ok=False, error_code="boom", error=EVIL)
    trace.add("something_new", note=EVIL)
    env.svc.store.add_events(trace.drain())
    # rows written by hand or by another version: admission refuses such values today
    other = env.submit_script([REPLY])
    with env.svc.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET goal = :g WHERE run_id = :id"),
            {"g": f"{EVIL}\nsecond line", "id": run.run_id},
        )
        conn.execute(
            text("UPDATE runs SET tenant_id = :t, route = :r WHERE run_id = :id"),
            {"t": f"tenant{EVIL}", "r": f"route{EVIL}", "id": other.run_id},
        )
    for args in (
        ["runs", "list"],
        ["runs", "show", run.run_id],
        ["runs", "show", other.run_id],
        ["trace", run.run_id],
    ):
        for columns in (250, 80):
            result = cli(*args, columns=columns)
            assert result.exit_code == 0, result.output
            assert_clean(result.stdout)
            assert "evil" in result.stdout
    # the sequences are gone whole (an OSC title's text too); a goal keeps its lines
    shown = cli("runs", "show", run.run_id).stdout
    assert "evilred" in shown and "pwned" not in shown and "x.example" not in shown
    assert "second line" in shown
    timeline = cli("trace", run.run_id).stdout
    assert "kb.search error boom: evilred" in timeline and "pwned" not in timeline
    # --json is exact: json.dumps escapes the control characters, the value round-trips
    data = as_json(cli("runs", "show", run.run_id, "--json"))
    assert data["run"]["goal"] == f"{EVIL}\nsecond line"
    raw = cli("runs", "show", run.run_id, "--json").stdout
    assert "\x1b" not in raw and "\\u001b" in raw
    listed = as_json(cli("runs", "list", "--json"))
    assert f"tenant{EVIL}" in {r["tenantId"] for r in listed}
    events = as_json(cli("trace", run.run_id, "--json"))
    assert events[-1]["data"] == {"note": EVIL}


def test_dead_letters_and_errors_strip_escape_sequences(env: Deployment) -> None:
    _, entry_id = dead_letter(env, error=f"backend said {EVIL}")
    poison_id = env.svc.dead_letters.poison(
        queue=STEP_QUEUE, error_type=f"bad{EVIL}", error=EVIL, message={"raw": EVIL}
    )
    for args in (
        ["dlq", "list"],
        ["dlq", "show", entry_id],
        ["dlq", "show", poison_id],
        ["dlq", "stats"],
        ["dlq", "retry", poison_id, "--dry-run"],
    ):
        for columns in (250, 80):
            result = cli(*args, columns=columns)
            assert result.exit_code == 0, result.output
            assert_clean(result.stdout + result.stderr)
    assert as_json(cli("dlq", "show", poison_id, "--json"))["error"] == EVIL
    # an error line built from a value
    code, _, err = run_main("dlq", "retry", f"id{EVIL}")
    assert code == 1
    assert_clean(one_line(err))


# --- 80 columns ----------------------------------------------------------------------------


def rendered(renderable: RenderableType, width: int = 80) -> str:
    buf = io.StringIO()
    render.SafeConsole(file=buf, width=width, highlight=False).print(renderable)
    return buf.getvalue()


def fits(text: str, width: int = 80) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, too_wide
    return lines


def row_with(lines: list[str], *needles: str) -> str:
    found = [line for line in lines if all(n in line for n in needles)]
    assert found, f"no line has {needles}:\n" + "\n".join(lines)
    return found[0]


def test_dlq_stats_keeps_its_counts_at_80_columns() -> None:
    old = datetime(2025, 1, 31, 12, 0, 5, tzinfo=UTC)
    rows = [
        {"queue": "agentrt.steps", "class": c, "open": n, "oldest": old, "newest": old}
        for c, n in (("exhausted", 12345), ("compensation", 678), ("worker_lost", 91011))
    ]
    rows.append(
        {"queue": "a.very.long.queue.name.for.tenants", "class": "poison", "open": 424242}
        | {"oldest": old, "newest": old}
    )
    counters = {STEP_QUEUE: Counter("ns:dlq:agentrt.steps:open", "ns:dlq:agentrt.steps", 3, 3)}
    lines = fits(rendered(dlq_views.stats_view(rows, counters)))
    for row in rows:
        # the count is whole and in its row; the age is shown before the time is cut
        line = row_with(lines, str(row["open"]))
        assert str(row["class"]) in line and " ago" in line


def test_run_detail_tables_keep_their_numbers_at_80_columns() -> None:
    steps = [
        {
            "step_no": n,
            "kind": "tool_call",
            "proposal": {"tool": "a.tool.with.a.long.name.that.goes.on" * 2},
            "outcome": "tool_error_with_a_long_outcome_name",
            "input_tokens": 123456,
            "output_tokens": 654321,
            "duration_ms": 987654,
        }
        for n in (7, 8)
    ]
    effects = [
        {
            "step_no": 12,
            "tool": "tickets.update.with.a.long.name",
            "side_effect_class": "irreversible",
            "status": "compensation_failed",
            "idempotency_key": "f" * 64,
            "fencing_token": 9876543210,
            "attempts": 31337,
        }
    ]
    decisions = [
        {
            "step_no": 44,
            "tool": "kb.search" * 5,
            "decision": "require_approval",
            "rule_id": "a_long_rule_name" * 4,
            "policy_version": "pol-2026-11-29",
        }
    ]
    view = RunView(
        run_id="a" * 32,
        trace_id="b" * 32,
        request_id="c" * 32,
        actor_id="cli:ann",
        tenant_id="acme",
        route="support.triage",
        goal="g",
        autonomy_level="advisory",
        risk_class="low",
        execution_mode="async_job",
        status=RunStatus.FAILED,
        version_set=VersionSet(
            model="m", prompt="p", policy="pol", tool_schema="t", retriever=None, harness="h"
        ),
        budget_policy_version="b",
        policy_version="pol",
        workflow_step="failed",
        allowed_tools=[],
        idempotency_key=None,
        approval_id=None,
        checkpoint_ref=None,
        stop_reason="failed:tool",
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    spend = {"tokens": 1, "model_calls": 1, "tool_calls": 1, "cost_micro_usd": 1}
    lines = fits(rendered(render.run_details(view, steps, spend, effects, decisions)))
    for n in (7, 8):
        assert row_with(lines, f" {n} ", "777777", "987654")  # tokens = in + out
    assert row_with(lines, "12 ", "9876543210", "31337")
    assert row_with(lines, "44 ", "require_app")


def test_tables_of_each_command_fit_80_columns(env: Deployment) -> None:
    runs = [env.submit_script([REPLY], tenant="t2", route="r.basic") for _ in range(3)]
    dead_letter(env)
    for args in (["runs", "list"], ["dlq", "list"], ["dlq", "stats"], ["queues"]):
        result = cli(*args, columns=80)
        assert result.exit_code == 0, result.output
        lines = fits(result.stdout)
        if args == ["runs", "list"]:
            for run in runs:
                assert run.run_id in result.stdout  # ids are never cut
            assert "0 steps" in result.stdout
        if args == ["queues"]:
            assert row_with(lines, "t2 ", "3")  # t2's three queued steps
    config = cli("config", "check", str(ROOT / "tests" / "config" / "runtime.yaml"), columns=80)
    assert config.exit_code == 0, config.output
    fits(config.stdout)
    assert "tenants" in config.stdout


def test_audit_and_attempt_tables_keep_their_counts_at_80_columns() -> None:
    at = datetime(2025, 1, 31, 12, 0, 5, tzinfo=UTC)
    rows = [
        {
            "id": 1,
            "at": at,
            "actor": "cli:a-very-long-operator-name@example.com",
            "action": "purge",
            "filter": {"tenant": "acme", "class": "poison", "since": "2025-01-30T00:00:00"},
            "count": 98765,
            "ids": [],
            "detail": {"dry_run": False, "limit": 1000, "reason": "cleanup " * 10},
        }
    ]
    lines = fits(rendered(dlq_views.audit_table(rows)))
    assert row_with(lines, "98765", "purge")
    attempts = [
        {
            "at": (at + timedelta(seconds=n)).isoformat(),
            "step_no": 4242,
            "kind": "exhausted",
            "error_type": "BackendDown",
            "error": "x" * 200,
            "worker": "w" * 40,
        }
        for n in range(2)
    ]
    text = rendered(dlq_views._attempts_table(attempts))
    lines = fits(text)
    assert row_with(lines, "4242")


# --- flower --basic-auth -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def flower_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_flower_basic_auth_is_passed_to_flower_and_kept_off_command_lines(
    fresh_deployment: Deployment, flower_proc: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "flower.log"
    args = ["flower", "--port", str(port), "--basic-auth", "ops:s3cr3t,viewer:pa:ss"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli.main", *args],
            cwd=ROOT,
            env=python_env(**fresh_deployment.env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    flower_proc.append(proc)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return _get(f"{base}/api/workers", "ops:s3cr3t") == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for(up, 60, interval=0.2, message="flower")
    assert _get(f"{base}/api/workers") == 401
    assert _get(f"{base}/api/workers", "ops:wrong") == 401
    assert _get(f"{base}/api/workers", "viewer:pa:ss") == 200  # a password may hold ':'
    assert _get(f"{base}/", "ops:s3cr3t") == 200 and _get(f"{base}/") == 401
    # the CLI became Flower: its command line, and what it printed, hold no password
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"flower" in cmdline and b"s3cr3t" not in cmdline and b"pa:ss" not in cmdline
    text = log.read_text()
    assert "basic auth: ops, viewer" in text and "s3cr3t" not in text


@pytest.mark.parametrize(
    "value", ["nocolonsecret", ":nouser-secret", "user:", "ops:good,nocolonsecret", ""]
)
def test_a_malformed_basic_auth_is_refused_without_echoing_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    code, out, err = run_main("flower", "--basic-auth", value)
    line = one_line(err)
    assert code == 2 and "--basic-auth" in line and "USER:PASS" in line
    assert "secret" not in line and "good" not in line and out == ""


# --- the README and --help ---------------------------------------------------------------


def readme_command_lines() -> list[list[str]]:
    """Every ``agentrt ...`` line in the README's shell and console blocks, as words up to
    a comment or a ``--`` (what follows that goes to Celery)."""
    text = (ROOT / "README.md").read_text()
    lines: list[list[str]] = []
    for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            raw = raw.strip().removeprefix("$ ")
            if not raw.startswith("agentrt "):
                continue
            words = shlex.split(raw.split(" #", 1)[0])
            if "--" in words:
                words = words[: words.index("--")]
            lines.append(words[1:])
    return lines


def test_the_readme_names_commands_and_options_that_exist() -> None:
    command = typer.main.get_command(app)
    seen_commands = set()
    lines = readme_command_lines()
    assert len(lines) > 20
    for words in lines:
        cmd: Any = command
        path = []
        while getattr(cmd, "commands", None) and words and words[0] in cmd.commands:
            cmd = cmd.commands[words[0]]
            path.append(words.pop(0))
        assert not getattr(cmd, "commands", None), f"agentrt {' '.join(path)}: no subcommand"
        seen_commands.add(" ".join(path))
        options = {opt for param in cmd.params for opt in param.opts}
        for word in words:
            for option in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", word):
                assert option in options, f"agentrt {' '.join(path)} has no {option}"
    # every command is shown in the README at least once
    everything = {"submit", "trace", "queues", "recover", "worker", "flower", "demo"}
    everything |= {f"runs {c}" for c in ("list", "show", "cancel")} | {"config check"}
    everything |= {f"dlq {c}" for c in ("list", "show", "retry", "purge", "stats", "audit")}
    assert everything <= seen_commands, sorted(everything - seen_commands)


def test_every_command_has_help(tmp_path: Path) -> None:
    groups: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})
    for group, sub in (
        [(None, c) for c in groups]
        + [("runs", c) for c in ("list", "show", "cancel")]
        + [("dlq", c) for c in ("list", "show", "retry", "purge", "stats", "audit")]
    ):
        args = [a for a in (group, sub) if a] + ["--help"]
        result = cli(*args, columns=100)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.stdout
    flower_help = cli("flower", "--help", columns=200).stdout
    assert "--basic-auth" in flower_help and "FLOWER_BASIC_AUTH" in flower_help
