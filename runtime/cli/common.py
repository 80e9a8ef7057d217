"""The CLI's plumbing, shared by every command group: consoles, one-line errors, JSON
output, settings, who acts (``default_actor``), whether a person can answer a prompt
(``interactive``), and the ways a command reaches a deployment - ``people_reader`` (the
views for people of ``runs list/show`` and ``trace``: SQL on the DB-API driver),
``reader`` (the SQL store, for the other read-only commands and ``--json``) and
``service`` (the whole runtime, for commands that change something or need Redis).

How the runtime is built from settings (``build_service``, ``redis_url``,
``load_registry``, ``load_config``) is reached from here alone: no command builds the
runtime itself, so moving its construction (to a composition root) is one edit here.
Option values (times, durations, rates, seconds) are parsed in ``runtime.cli.params``.

Every command imports this module, so it imports nothing heavy at its top: pydantic,
pydantic-settings, SQLAlchemy, Redis and the service are imported by the commands that
use them.

Exit codes: 0 ok; 1 error; 2 refused at admission or bad arguments; 3 ``--wait`` timed out.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from runtime import locations
from runtime.cli import render
from runtime.errors import AdmissionRefused, AgentRuntimeError, ConfigError, InvalidRequest

if TYPE_CHECKING:
    from runtime.cli.reads import Reads, RunReads
    from runtime.cli.render import RunLike, TraceLike
    from runtime.config import RuntimeConfig
    from runtime.service import RuntimeService
    from runtime.settings import Settings
    from runtime.tools.registry import ToolRegistry

EXIT_ERROR = 1
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3

# consoles resolve sys.stdout/sys.stderr when printing, so test runners can capture them;
# they strip escape sequences and control characters from whatever they print
out = render.SafeConsole(highlight=False)
err = render.SafeConsole(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

#: ``AGENTRT_ACTOR``: who acts when a command is given no ``--actor`` (used as it is)
ACTOR_ENV = "AGENTRT_ACTOR"
#: a default actor is cut to this: within what admission accepts for an actor (200) and
#: what a cancel's stop reason holds (190), with room to spare
MAX_DEFAULT_ACTOR_CHARS = 120


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: <message>`` as one line (sanitized) and exit with ``code``."""
    err.print(f"[red bold]error:[/] {render.markup(message)}", soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    # plain write, not Rich: no wrapping or highlighting in machine output; json.dumps
    # escapes control characters, so a value cannot reach the terminal raw from here
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def default_actor(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """Who acts when a command is given no ``--actor``: the first of

    1. ``$AGENTRT_ACTOR``, as it is (e.g. ``ops:ann``);
    2. ``cli:$USER``, ``cli:$LOGNAME``, ``cli:$USERNAME``;
    3. ``cli:<name>`` of the process's uid in the passwd database;
    4. ``cli:uid:<n>`` (a container's uid with no passwd entry), or ``cli:unknown``
       where there are no uids.

    Never raises (``getpass.getuser`` does in a bare container: no variables, no passwd
    entry) and needs no terminal. A value is kept to printable characters and cut to
    ``MAX_DEFAULT_ACTOR_CHARS``, so admission and the audit log accept it; a value with
    nothing printable left counts as unset."""
    env = os.environ if environ is None else environ
    actor = _printable(env.get(ACTOR_ENV))
    if actor:
        return actor
    for name in ("USER", "LOGNAME", "USERNAME"):
        user = _printable(env.get(name))
        if user:
            return _printable(f"cli:{user}")
    if uid is None:
        getuid = getattr(os, "getuid", None)  # not on Windows
        if getuid is None:
            return "cli:unknown"
        uid = getuid()
    try:
        import pwd

        user = _printable(pwd.getpwuid(uid).pw_name)
    except (ImportError, KeyError, OSError):  # no passwd entry for this uid
        user = ""
    return _printable(f"cli:{user or f'uid:{uid}'}")


def _printable(value: str | None) -> str:
    """``value`` without control (or other unprintable) characters, trimmed and cut."""
    if not value:
        return ""
    kept = "".join(ch for ch in value if ch.isprintable()).strip()
    return kept[:MAX_DEFAULT_ACTOR_CHARS].strip()


def interactive() -> bool:
    """Whether a person can answer a confirmation (tests replace this): not when stdin is
    missing or closed (a container started without ``-i``), nor when it is not a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed
        return False


def load_settings() -> Settings:
    from pydantic import ValidationError

    from runtime.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"AGENTRT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        fail("invalid settings: " + "; ".join(problems))


def describe_failure(exc: BaseException) -> str | None:
    """The one line for an expected failure (ours, Redis's, the database's), else None.

    A library that was never imported raised nothing, so its error class is looked up in
    ``sys.modules`` rather than imported here (that would cost a read-only command)."""
    if isinstance(exc, ConfigError):
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        first = exc.problems[0] if exc.problems else "invalid"
        return f"invalid config {exc.path}: {first}{more}; see agentrt config check {exc.path}"
    if isinstance(exc, AgentRuntimeError):
        return str(exc)
    redis_module = sys.modules.get("redis")
    if redis_module is not None and isinstance(exc, redis_module.RedisError):
        return f"Redis: {exc} (check AGENTRT_REDIS_URL)"
    sql_errors = sys.modules.get("sqlalchemy.exc")
    cause: BaseException | None = None
    if sql_errors is not None and isinstance(exc, sql_errors.SQLAlchemyError):
        # SQLAlchemy's text adds the statement and a link on lines of their own
        cause = getattr(exc, "orig", None) or exc
    for driver in ("sqlite3", "psycopg"):  # the DB-API drivers the views for people use
        module = sys.modules.get(driver)
        if module is not None and isinstance(exc, module.Error):
            cause = exc
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0]
        return f"database: {type(cause).__name__}: {first} (check AGENTRT_DATABASE_URL)"
    return None


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Expected failures become one red line, not a traceback: exit 2 for a request the
    runtime refused (a conflicting request id, a malformed field), else exit 1."""
    try:
        yield
    except Exception as exc:
        message = describe_failure(exc)
        if message is None:
            raise
        refused = isinstance(exc, AdmissionRefused | InvalidRequest)
        fail(message, EXIT_REFUSED if refused else EXIT_ERROR)


# --- building the runtime: the one place the CLI reaches its construction ----------------


def build_service(settings: Settings, *, enforce_applied: bool = True) -> RuntimeService:
    """The runtime built by the composition root, imported when a command needs it whole."""
    from runtime.wiring import Runtime

    return Runtime.from_settings(settings, enforce_applied=enforce_applied)


def redis_url(settings: Settings) -> str:
    """The Redis the runtime uses for ``settings`` (the embedded one started if unset)."""
    from runtime.wiring import resolve_endpoints

    return resolve_endpoints(settings).redis_url


def load_config(path: Path) -> RuntimeConfig:
    """``runtime.config.load_config``, imported when a command needs the deployment file
    (read-only commands do not)."""
    from runtime.config import load_config as load

    return load(path)


def load_registry(config: RuntimeConfig, source: str) -> ToolRegistry:
    """``runtime.wiring.load_registry``, imported when a command needs the tools."""
    from runtime.wiring import load_registry as load

    return load(config, source)


def min_visibility_timeout(config: RuntimeConfig) -> float:
    """The broker visibility timeout the workers need for ``config`` (its longest step plus
    margins): ``tasks.app``'s rule, loaded only by the commands that check it (``tasks``
    is the package that imports Celery)."""
    import importlib

    needed: float = importlib.import_module("tasks.app").min_visibility_timeout(config)
    return needed


@contextlib.contextmanager
def service() -> Iterator[RuntimeService]:
    """The whole runtime (Redis, scheduler, tools): for commands that change something."""
    settings = load_settings()
    with errors():
        svc = build_service(settings)
    if svc.drift is not None:
        drift = escape(svc.drift.describe(str(settings.config)))
        err.print(
            f"[yellow bold]warning:[/] config drift: {drift}; enforcing the applied config "
            "(agentrt config apply to change it)",
            soft_wrap=True,
        )
    try:
        with errors():
            yield svc
    finally:
        svc.close()


@contextlib.contextmanager
def reader() -> Iterator[Reads]:
    """The SQL store alone: for read-only commands (no Redis, no model clients)."""
    from runtime.cli.reads import Reads

    settings = load_settings()
    with errors():
        reads = Reads(settings)
    try:
        with errors():
            yield reads
    finally:
        reads.close()


@contextlib.contextmanager
def people_reader() -> Iterator[RunReads[RunLike, TraceLike]]:
    """What ``runs list/show`` and ``trace`` show people: read on the DB-API driver, with
    only the database settings read (``runtime.locations``, as ``Settings`` reads them) -
    or through the store (``reader``) when the plain reads cannot stand in for it."""
    from runtime.cli.reads import PlainViews
    from runtime.store.plain import PlainReads

    with errors():
        plain = PlainReads.open(locations.database_url(os.environ))
    if plain is None:
        with reader() as reads:
            yield reads
        return
    views = PlainViews(plain)
    try:
        with errors():
            yield views
    finally:
        views.close()


@contextlib.contextmanager
def cwd_on_path() -> Iterator[None]:
    """Import tool modules as a worker does: ``python -m celery`` puts the working
    directory first on ``sys.path``; this console script does not."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
