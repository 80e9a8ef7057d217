"""Where a deployment keeps its state, and the one place that knows the defaults.

``Settings`` (pydantic-settings) takes its defaults from here; so do the CLI's views for
people, which read the database URL straight from the environment (``setting``,
``database_url``) so that they need neither pydantic-settings nor SQLAlchemy. Both read
an ``AGENTRT_*`` variable the same way: the name in any case, the value as given (an
empty value is a value); a test checks that they agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: every setting is an ``AGENTRT_<NAME>`` environment variable
ENV_PREFIX = "AGENTRT_"
#: where embedded state lives (SQLite file, embedded Redis data and pid file)
DEFAULT_HOME = Path(".agentrt")
#: the deployment file
DEFAULT_CONFIG = Path("config/runtime.yaml")
#: the SQLite database under the home directory
SQLITE_FILE = "agentrt.db"


def sqlite_path(home: Path) -> Path:
    """The embedded database's file under ``home`` (absolute; nothing is created)."""
    return (home / SQLITE_FILE).resolve()


def sqlite_url(home: Path) -> str:
    """The database URL used when ``AGENTRT_DATABASE_URL`` is unset (nothing is created:
    ``runtime.store.db.default_sqlite_url`` also makes the directory, for writers)."""
    return f"sqlite:///{sqlite_path(home)}"


def setting(environ: Mapping[str, str], name: str) -> str | None:
    """The raw value of setting ``name`` (e.g. ``database_url``) as pydantic-settings reads
    it: the variable's name in any case, the last one in ``environ``'s order winning."""
    wanted = (ENV_PREFIX + name).lower()
    value = None
    for key, raw in environ.items():
        if key.lower() == wanted:
            value = raw
    return value


def home(environ: Mapping[str, str]) -> Path:
    """``Settings().home`` for this environment."""
    value = setting(environ, "home")
    return DEFAULT_HOME if value is None else Path(value)


def database_url(environ: Mapping[str, str]) -> str:
    """The database a deployment with this environment uses: ``AGENTRT_DATABASE_URL``, else
    SQLite under ``AGENTRT_HOME`` (what ``Settings().database_url or default_sqlite_url(
    Settings().home)`` gives)."""
    return setting(environ, "database_url") or sqlite_url(home(environ))
