"""A route's live release state, as admission and every step read it.

Redis holds a copy per route (``Keys.release_state``: hash ``gen``, ``state``); SQL
(``release_state``) is the record. A missing copy (Redis lost it, or nobody wrote it yet)
is read from SQL - or, for a route nobody changed, from the deployment file - and written
back, guarded by the generation so an older state never overwrites a newer one
(``put_state.lua``). A state naming a release the config lacks raises ``ReleaseError``:
no run starts, and no step runs, under a release nobody can name.

Cost: a pinned route's step reads nothing (its run recorded its release); a ``next_step``
route's step reads the copy in the round trip that takes its lease (one HMGET); a submit to
a route with releases reads it once.
"""

from __future__ import annotations

from typing import Any

import redis

from runtime import release_sets, scripts
from runtime.catalog import Catalog
from runtime.config import RouteConfig, RuntimeConfig
from runtime.keys import Keys
from runtime.release_sets import LiveRelease, StepRelease
from runtime.store.releases import ReleaseStore


def stored_from_row(row: dict[str, Any]) -> LiveRelease:
    return LiveRelease(
        route=row["route"],
        active=row["active"],
        canary=row["canary"],
        percent=row["percent"],
        tenants=tuple(row["tenants"] or ()),
        generation=int(row["generation"]),
        deployed=row["deployed"],
    )


class LiveReleases:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        catalog: Catalog,
        redis: redis.Redis,
        keys: Keys,
        store: ReleaseStore,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.redis = redis
        self.keys = keys
        self.store = store
        self._put: Any = None
        #: (route, release) -> the route under it and its policy set: the config is fixed
        #: for the life of this object, so each is built once, not at every step
        self._views: dict[tuple[str, str], tuple[RouteConfig, str | None]] = {}

    # --- reading ----------------------------------------------------------------------
    def state(self, route: str) -> LiveRelease | None:
        """The route's release state (None: the route has no release)."""
        if self.config.routes[route].release is None:
            return None
        gen, raw = self.redis.hmget(self.keys.release_state(route), ["gen", "state"])
        return self._effective(route, gen, raw)

    def _effective(self, route: str, gen: Any, raw: Any) -> LiveRelease | None:
        if gen is None or raw is None:
            stored = self._from_sql(route)
        else:
            stored = LiveRelease.from_json(route, int(gen), raw)
        return release_sets.effective_state(self.config, route, stored)

    def _from_sql(self, route: str) -> LiveRelease | None:
        """The record, written back to Redis (generation-guarded)."""
        row = self.store.state(route)
        stored = stored_from_row(row) if row is not None else None
        copy = stored or release_sets.deployed_state(self.config, route)
        if copy is not None:
            self.put(copy)
        return stored

    def put(self, state: LiveRelease) -> bool:
        """Write ``state`` to Redis unless it holds this generation or a newer one."""
        if self._put is None:
            self._put = scripts.register(
                self.redis, scripts.lua("runtime.releases", "put_state.lua")
            )
        done = self._put(
            keys=[self.keys.release_state(state.route)],
            args=[state.generation, state.to_json()],
        )
        return bool(done)

    def rebuild(self) -> int:
        """Redis's copies from SQL (``agentrt recover``): the states written."""
        written = 0
        for row in self.store.states():
            if row["route"] in self.config.routes:
                written += self.put(stored_from_row(row))
        return written

    # --- admission --------------------------------------------------------------------
    def stamp(self, row: dict[str, Any]) -> None:
        """Give an admitted run's row its release and that release's version set, before
        it is stored (so before its first model call). ``ReleaseError``: the route's state
        names an unknown release."""
        state = self.state(row["route"])
        if state is None:
            return
        release = release_sets.assign(state, row["tenant_id"], row["run_id"])
        row.update(self.recorded(row["route"], release))

    def recorded(self, route: str, release: str) -> dict[str, Any]:
        """What a run under ``release`` records on its row."""
        cfg = release_sets.route_for(self.config, route, release)
        return {
            "release": release,
            "version_set": self.catalog.version_set(route, release).model_dump(),
            "policy_version": release_sets.policy_for(self.config, release)[1].version,
            "budget_policy_version": self.config.budget_policies[cfg.budget_policy].version,
        }

    # --- a step -----------------------------------------------------------------------
    def read_key(self, route: str) -> str | None:
        """The key a step of ``route`` reads with its lease (None: it reads none)."""
        cfg = self.config.routes.get(route)
        if cfg is None or cfg.release is None or cfg.release_upgrade != "next_step":
            return None
        return self.keys.release_state(route)

    def for_step(self, run: dict[str, Any], route: RouteConfig, read: Any) -> StepRelease:
        """The route as this step of ``run`` runs it. ``read``: what ``read_key``'s HMGET
        returned with the lease (None: not read). A ``next_step`` route takes the current
        release; a change is recorded on the run (with the checkpoint) and traced."""
        name = run["route"]
        release: str | None = run.get("release")
        updates: dict[str, Any] = {}
        event: dict[str, Any] | None = None
        if read is not None:
            state = self._effective(name, read[0], read[1])
            if state is not None:
                current = release_sets.assign(state, run["tenant_id"], run["run_id"])
                if current != release:
                    updates = self.recorded(name, current)
                    event = {"from": release, "to": current, "generation": state.generation}
                    release = current
        if release is None:
            return StepRelease(route=route, policy_set=None, release=None)
        # a release the config lost raises ReleaseError here: the step fails, closed
        view = self._views.get((name, release))
        if view is None:
            view = (
                release_sets.route_for(self.config, name, release),
                release_sets.policy_for(self.config, release)[0],
            )
            self._views[(name, release)] = view
        return StepRelease(
            route=view[0], policy_set=view[1], release=release, run_updates=updates, changed=event
        )
