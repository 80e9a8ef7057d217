"""Who holds a lease: process instances, and how the runtime knows one is dead.

An owner is named by a random **instance id** (``i-`` and 24 hex digits), never by host
name and pid: containers share host names (``--network host``) and every PID namespace
starts at pid 1, so "host|pid" names two live processes alike, and a pid checked from
another namespace can look dead while its process runs.

* The id is made at process start and again in every forked child (``os.register_at_fork``),
  so each Celery pool process has its own.
* A live instance has a heartbeat key ``$ns:{sched}:alive:<id>`` with a short ttl
  (``scheduling.worker_dead_after_s``). Each process refreshes its own from a thread
  (``Liveness``, every ttl/8), and a Celery worker's main process refreshes the keys of
  its live pool processes too (``vouch_for_children``): a pool process busy in C code
  that holds the GIL stays alive, and one that exited is declared dead at once (its
  parent saw it exit: the only local observation that is certain).
* **Known dead** means the heartbeat key is gone. Refreshes use ``PEXPIRE`` (never a
  plain ``SET``), so a key that expired is never re-created: once dead, an instance id is
  dead for good. A process that finds its own key gone (it was stalled past its ttl)
  logs it and continues under a new id; whatever it held under the old one may have been
  taken over, which the fencing tokens, the SQL compare-and-set checkpoint and the
  side-effect claims make safe.

The heartbeat keys share the scheduler's ``{sched}`` hash tag, so ``sched.lua`` reads them
in its own slot when it hands a dead instance's steps back. A lock (``{lock:<name>}``) or
run lease (``{run:<id>}``) lives in another slot: the lease code checks the heartbeat
first and passes the dead owner it saw to ``steal.lua``, which replaces the lease only if
it still names that same owner (see ``runtime.locks.leases``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from runtime.keys import Keys

log = logging.getLogger("agentrt.identity")

INSTANCE_PATTERN = re.compile(r"^i-[0-9a-f]{24}$")
#: how often a worker's main process looks at its pool processes
VOUCH_EVERY_S = 0.2


def new_instance_id() -> str:
    return "i-" + secrets.token_hex(12)


@dataclass
class _Ids:
    #: this process's instance id (a new one after fork, or after its heartbeat lapsed)
    instance: str
    #: this process's id as a parent: its children register under it (changes only at fork)
    token: str
    #: the parent's token when this process was forked from one
    parent: str | None = None


_ids = _Ids(instance=new_instance_id(), token=new_instance_id())


def _after_fork_in_child() -> None:
    _ids.parent = _ids.token
    _ids.token = new_instance_id()
    _ids.instance = new_instance_id()


os.register_at_fork(after_in_child=_after_fork_in_child)


def owner_instance(owner: str) -> str | None:
    """The instance in an owner ``[<prefix>|]<instance>|<nonce>``; None for anything else
    (an owner written by an older version, say): such an owner is never known dead."""
    parts = owner.split("|")
    if len(parts) < 2 or not INSTANCE_PATTERN.match(parts[-2]):
        return None
    return parts[-2]


class Liveness:
    """This process's heartbeat, and what the runtime knows about other instances.

    ``instance()`` registers the process (its first heartbeat is written before the id is
    handed out, so no owner record ever names an instance without a key) and starts the
    refresh thread; after a fork the child does the same under its own id. One per process
    and deployment (``shared``): a process that replaces its service (a newly applied
    config) keeps its heartbeat thread, its own Redis connection and what it vouches for."""

    _shared: dict[tuple[Any, ...], Liveness] = {}
    _shared_pid = 0

    @classmethod
    def shared(cls, client: redis.Redis, keys: Keys, dead_after_ms: int) -> Liveness:
        """This process's Liveness for the deployment (namespace) on ``client``'s server,
        with a connection pool of its own; a new ttl applies from the next refresh."""
        if cls._shared_pid != os.getpid():
            cls._shared, cls._shared_pid = {}, os.getpid()
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        where = tuple(kwargs.get(k) for k in ("host", "port", "path", "db", "username"))
        key = (keys.namespace, pool.connection_class, *where)
        found = cls._shared.get(key)
        if found is None:
            own = redis.Redis(
                connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                     **kwargs)
            )  # fmt: skip
            found = cls._shared[key] = cls(own, keys, dead_after_ms)
        else:
            found.set_ttl(dead_after_ms)
        return found

    def __init__(self, client: redis.Redis, keys: Keys, dead_after_ms: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_ms = 0
        self.interval_s = 0.0
        self.set_ttl(dead_after_ms)
        self._lock = threading.Lock()
        self._pid = 0
        self._registered: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._children: Callable[[], set[int] | None] | None = None
        #: monotonic time a refresh that succeeded was sent (the key lives past it + ttl)
        self.confirmed_at = 0.0
        #: pid -> instance of the children seen in the last vouching round
        self._seen_children: dict[str, str] = {}

    def set_ttl(self, dead_after_ms: int) -> None:
        if dead_after_ms < 1000:
            raise ValueError("dead_after_ms must be at least 1000")
        self.ttl_ms = int(dead_after_ms)
        #: refreshes come 8 times per ttl: a live process misses 7 in a row before it is dead
        self.interval_s = min(max(self.ttl_ms / 8000, 0.05), 2.0)

    # --- this process ------------------------------------------------------------------
    def instance(self) -> str:
        """This process's instance id, registered and kept alive."""
        if self._pid != os.getpid():
            # a forked child: nothing of the parent's thread or lock state carries over
            self._lock = threading.Lock()
            self._thread, self._registered, self._children = None, None, None
            self._seen_children = {}
            self._stop = threading.Event()
            self._pid = os.getpid()
        with self._lock:
            if self._registered != _ids.instance:
                self._register(_ids.instance)
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._loop, name="agentrt-heartbeat", daemon=True
                )
                self._thread.start()
            return _ids.instance

    def _register(self, instance: str) -> None:
        """First heartbeat of ``instance`` (and, in a forked child, its entry in the
        parent's list of children, so a vouching parent keeps it alive)."""
        sent = time.monotonic()
        info = f"{socket.gethostname()} pid {os.getpid()}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.instance_alive(instance), info, px=self.ttl_ms)
        if _ids.parent is not None:
            children = self.keys.instance_children(_ids.parent)
            pipe.hset(children, str(os.getpid()), instance)
            pipe.pexpire(children, self.ttl_ms * 4)
        pipe.execute()
        self.confirmed_at = sent
        self._registered = instance

    def beat(self) -> bool:
        """Refresh this process's heartbeat. False if the key was gone: the instance
        lapsed, and a new id replaces it."""
        with self._lock:
            instance = self._registered
            if instance is None:
                return True
            sent = time.monotonic()
            alive = bool(self.redis.pexpire(self.keys.instance_alive(instance), self.ttl_ms))
            if alive:
                self.confirmed_at = sent
            else:
                # dead for good: whatever this process held under it may have been taken
                # over; it goes on under a new id
                _ids.instance = new_instance_id()
                log.error(
                    "instance %s: heartbeat lapsed (no refresh for %.1fs, ttl %.1fs); its "
                    "steps and locks may have been taken over; continuing as %s",
                    instance,
                    sent - self.confirmed_at,
                    self.ttl_ms / 1000,
                    _ids.instance,
                )
                self._register(_ids.instance)
        return alive

    def _loop(self) -> None:
        stop = self._stop
        next_beat = time.monotonic() + self.interval_s
        # a worker looks at its pool more often than it beats: a pool process that exited
        # is declared dead before Celery re-sends its step (then the new copy takes over)
        while not stop.wait(min(self.interval_s, VOUCH_EVERY_S) if self._children else
                            self.interval_s):  # fmt: skip
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval_s
                    self.beat()
                children = self._children
                if children is not None:
                    self.vouch_for_children(children())
            except Exception:  # a Redis hiccup: the next round tries again
                log.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()

    @classmethod
    def retire(cls, keys: Keys) -> None:
        """Stop and forget this process's heartbeats in ``keys``'s namespace, waiting for
        their threads to end: a namespace about to be deleted whole (an eval replay's)
        must not have a refresh find its key gone, which would rename the process."""
        for key in [k for k in cls._shared if k[0] == keys.namespace]:
            found = cls._shared.pop(key)
            found.stop()
            thread = found._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
            found.redis.close()

    # --- other instances ---------------------------------------------------------------
    def known_dead(self, instance: str | None) -> bool:
        """True only for a well-formed instance id whose heartbeat key is gone."""
        if instance is None or not INSTANCE_PATTERN.match(instance):
            return False
        if instance == self._registered and self._pid == os.getpid():
            return False  # ourselves: alive by definition (a lapse renames us)
        return not self.redis.exists(self.keys.instance_alive(instance))

    # --- a worker's pool -----------------------------------------------------------------
    def vouch_for(self, children: Callable[[], set[int] | None]) -> None:
        """Refresh, with this process's own heartbeat, the keys of its pool processes.
        ``children()`` returns the pids of the pool's processes (None: unknown)."""
        self.instance()
        self._children = children

    def vouch_for_children(self, pool_pids: set[int] | None) -> list[str]:
        """One round for the children registered under this process: a child whose pid is
        alive (and in the pool, when known) has its key refreshed; one whose pid no longer
        exists is declared dead (key deleted), since its parent is the one process that
        knows for sure; a pid alive but outside the pool (reused) is left to its ttl.
        Returns the instances declared dead."""
        key = self.keys.instance_children(_ids.token)
        registered = self.redis.hgetall(key)
        pipe = self.redis.pipeline(transaction=False)
        dead: list[str] = []
        seen: dict[str, str] = {}
        for raw_pid, raw_instance in registered.items():
            instance = _text(raw_instance)
            try:
                pid = int(_text(raw_pid))
            except ValueError:
                pipe.hdel(key, raw_pid)
                continue
            before = self._seen_children.get(str(pid))
            if before is not None and before != instance:
                # a new child registered under the pid of an earlier one: that one exited
                # (or lapsed and was renamed): dead either way
                pipe.delete(self.keys.instance_alive(before))
                dead.append(before)
            state = _child_state(pid, pool_pids)
            if state == "alive":
                pipe.pexpire(self.keys.instance_alive(instance), self.ttl_ms)
            elif state == "dead":
                pipe.delete(self.keys.instance_alive(instance))
                pipe.hdel(key, raw_pid)
                dead.append(instance)
                continue
            seen[str(pid)] = instance
        self._seen_children = seen
        if registered or dead:
            pipe.pexpire(key, self.ttl_ms * 4)
            pipe.execute()
        for instance in dead:
            log.warning("pool process instance %s exited: declared dead", instance)
        return dead


def _child_state(pid: int, pool_pids: set[int] | None) -> str:
    """``alive``, ``dead`` or ``unknown``. A child is in our PID namespace (we forked it),
    so ``kill(pid, 0)`` failing with ESRCH proves it gone: it cannot come back, and only
    a new process can reuse its pid (which ``pool_pids`` or the child's own new
    registration tells apart)."""
    if pid <= 1:
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "unknown"
    if pool_pids is not None and pid not in pool_pids:
        return "unknown"
    return "alive"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
