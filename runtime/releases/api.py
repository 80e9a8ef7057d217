"""The operator's releases (``rt.releases``, ``agentrt releases ...``): list, show, diff,
canary, promote, rollback, compare.

Every change is one SQL transaction (the route's new state, compare-and-set on its
generation, and its audit row: who, when, why), then the Redis copy every worker reads at
admission and at the next step of ``next_step`` runs: no restart. A promotion asks the gate
first and stores its result whether it passed or not; a failed gate changes nothing.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from runtime import release_sets
from runtime.config import RuntimeConfig
from runtime.errors import GateFailed, ReleaseError
from runtime.release_gate import Gate, GateResult
from runtime.release_sets import LiveRelease
from runtime.releases.live import LiveReleases, stored_from_row
from runtime.store.db import utcnow
from runtime.store.releases import ReleaseStore

MAX_REASON_CHARS = 1000
MAX_ACTOR_CHARS = 200
#: the longest compare window
MAX_SINCE = timedelta(days=90)


class Releases:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        live: LiveReleases,
        store: ReleaseStore,
        gate: Gate,
    ) -> None:
        self.config = config
        self.live = live
        self.store = store
        self.gate = gate

    # --- reads ------------------------------------------------------------------------
    def routes(self) -> list[dict[str, Any]]:
        """Every route with a release: its live state."""
        out = []
        for name, cfg in sorted(self.config.routes.items()):
            state = self.live.state(name) if cfg.release is not None else None
            if state is None:
                continue
            out.append(
                {
                    **_state_dict(state),
                    "assignment": cfg.release_assignment or "tenant",
                    "upgrade": cfg.release_upgrade or "pinned",
                }
            )
        return out

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every declared release, with the routes it is active or canary on."""
        on: dict[str, list[str]] = {n: [] for n in self.config.releases}
        for route in self.routes():
            on[route["active"]].append(f"{route['route']} (active)")
            if route["canary"]:
                on[route["canary"]].append(f"{route['route']} (canary)")
        return [
            {"release": n, **release_sets.described(self.config, n), "routes": on[n]}
            for n in sorted(self.config.releases)
        ]

    def show(self, release: str) -> dict[str, Any]:
        """A release's version set, where it runs, its gate results and its audit."""
        release_sets.release_of(self.config, release)
        audit = [a for a in self.store.audit(limit=500) if _mentions(a, release)]
        return {
            "release": release,
            "version_set": release_sets.described(self.config, release),
            "routes": next(r["routes"] for r in self.list() if r["release"] == release),
            "gates": [
                {"route": a["route"], "at": a["at"], "action": a["action"], **a["gate"]}
                for a in audit
                if a["gate"] is not None and a["release"] == release
            ],
            "audit": audit,
        }

    def diff(self, a: str, b: str) -> builtins.list[tuple[str, Any, Any]]:
        return release_sets.diff(self.config, a, b)

    # --- changes ----------------------------------------------------------------------
    def canary(
        self,
        route: str,
        release: str,
        *,
        percent: float | None = None,
        tenants: builtins.list[str] | None = None,
        actor: str,
        reason: str | None = None,
    ) -> LiveRelease:
        """Give ``release`` to ``percent`` of the route's runs and/or the runs of
        ``tenants`` (replacing any canary)."""
        state = self._state(route)
        release_sets.release_of(self.config, release)
        if release == state.active:
            raise ReleaseError(f"{release!r} is already the active release of {route!r}")
        if (percent is None) == (not tenants):
            raise ReleaseError("give exactly one of percent or tenants")
        if percent is not None and not (0 < percent <= 100):
            raise ReleaseError(f"percent must be above 0 and at most 100 (got {percent:g})")
        unknown = sorted(set(tenants or ()) - set(self.config.tenants))
        if unknown:
            raise ReleaseError(f"unknown tenants: {', '.join(unknown)}")
        new = _with(state, canary=release, percent=percent, tenants=tuple(tenants or ()))
        return self._change(state, new, "canary", release, actor, reason)

    def promote(
        self, route: str, *, actor: str, reason: str | None = None, gate: Gate | None = None
    ) -> LiveRelease:
        """Make the route's canary its active release, if the gate passes (``gate``, else
        the one this object was built with). ``GateFailed`` (its result stored, nothing
        changed) otherwise."""
        state = self._state(route)
        if state.canary is None:
            raise ReleaseError(f"route {route!r} has no canary to promote")
        candidate = state.canary
        result = (gate or self.gate)(route, candidate)
        if not isinstance(result, GateResult):
            raise ReleaseError(f"the gate returned {type(result).__name__}, not a GateResult")
        if not result.passed:
            _check_who(actor, reason)
            self.store.record(
                route, _audit("promote_refused", candidate, state, state, actor, reason, result)
            )
            raise GateFailed(route, candidate, result.summary)
        new = _with(state, active=candidate, canary=None, percent=None, tenants=())
        return self._change(state, new, "promote", candidate, actor, reason, result)

    def rollback(
        self, route: str, *, to: str | None = None, actor: str, reason: str | None = None
    ) -> LiveRelease:
        """Without ``to``: end the route's canary, or, with none, go back to the release
        active before the last promotion. With ``to``: make it active (no canary)."""
        state = self._state(route)
        if to is not None:
            release_sets.release_of(self.config, to)
            target = to
        elif state.canary is not None:
            new = _with(state, canary=None, percent=None, tenants=())
            return self._change(state, new, "rollback", state.active, actor, reason)
        else:
            target = self._before_last_promotion(route)
        if target == state.active and state.canary is None:
            raise ReleaseError(f"{target!r} is already the active release of {route!r}")
        new = _with(state, active=target, canary=None, percent=None, tenants=())
        return self._change(state, new, "rollback", target, actor, reason)

    # --- compare ----------------------------------------------------------------------
    def compare(self, route: str, since: timedelta) -> dict[str, Any]:
        """Active and canary over the same window (see ``ReleaseStore.figures``)."""
        state = self._state(route)
        if not (timedelta(0) < since <= MAX_SINCE):
            raise ReleaseError("since must be above 0 and at most 90 days")
        start: datetime = utcnow() - since
        figures = self.store.figures(route, list(state.releases()), start)
        for fig in figures.values():
            completed = fig["stop_reasons"].get("completed", 0)
            fig["completed"] = completed
            fig["cost_per_completed_usd"] = (
                fig["completed_cost_micro"] / completed / 1e6 if completed else None
            )
            fig["p95_step_ms"] = _p95(fig.pop("durations_ms"))
        return {"route": route, "active": state.active, "canary": state.canary,
                "since": start, "figures": figures}  # fmt: skip

    # --- internals --------------------------------------------------------------------
    def _state(self, route: str) -> LiveRelease:
        """The route's state as SQL records it (a change is decided on the record, not on
        Redis's copy)."""
        cfg = self.config.routes.get(route)
        if cfg is None:
            raise ReleaseError(f"unknown route {route!r}")
        if cfg.release is None:
            raise ReleaseError(f"route {route!r} has no release (set routes.{route}.release)")
        row = self.store.state(route)
        stored = stored_from_row(row) if row is not None else None
        state = release_sets.effective_state(self.config, route, stored)
        assert state is not None  # the route has a release
        # the generation a change must find (None: no record yet); a redeploy's state
        # (generation 0) replaces the record's
        return _with(state, generation=stored.generation) if stored else state

    def _before_last_promotion(self, route: str) -> str:
        for entry in self.store.audit(route, limit=500):
            if entry["action"] == "promote" and entry["before"]:
                return str(entry["before"]["active"])
        raise ReleaseError(
            f"route {route!r} has no canary and no promotion to roll back (use --to RELEASE)"
        )

    def _change(
        self,
        state: LiveRelease,
        new: LiveRelease,
        action: str,
        release: str,
        actor: str,
        reason: str | None,
        gate: GateResult | None = None,
    ) -> LiveRelease:
        _check_who(actor, reason)
        # compare-and-set on the generation _state read (0: no record yet): a change made
        # since wins, this one is refused
        expected = state.generation or None
        generation = self.store.change(
            state.route,
            expected,
            _row(new, actor),
            _audit(action, release, state, new, actor, reason, gate),
        )
        if generation is None:
            raise ReleaseError(f"route {state.route!r}: another change won; look and try again")
        done = _with(new, generation=generation)
        try:
            self.live.put(done)
        except Exception as exc:  # recorded: Redis's copy is what is missing
            raise ReleaseError(
                f"route {state.route!r}: the change is recorded (generation {generation}) but "
                f"Redis's copy was not written ({exc}); run agentrt recover to rebuild it"
            ) from exc
        return done


def _check_who(actor: str, reason: str | None) -> None:
    if not actor or len(actor) > MAX_ACTOR_CHARS:
        raise ReleaseError(f"actor must be 1 to {MAX_ACTOR_CHARS} characters")
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise ReleaseError(f"reason must be at most {MAX_REASON_CHARS} characters")


def _with(state: LiveRelease, **changes: Any) -> LiveRelease:
    return LiveRelease(**{**asdict(state), **changes})


def _state_dict(state: LiveRelease) -> dict[str, Any]:
    return {
        "route": state.route,
        "active": state.active,
        "canary": state.canary,
        "percent": state.percent,
        "tenants": list(state.tenants),
        "generation": state.generation,
    }


def _row(state: LiveRelease, actor: str) -> dict[str, Any]:
    return {
        "active": state.active,
        "canary": state.canary,
        "percent": state.percent,
        "tenants": list(state.tenants) or None,
        "deployed": state.deployed,
        "updated_by": actor,
    }


def _audit(
    action: str,
    release: str,
    before: LiveRelease,
    after: LiveRelease,
    actor: str,
    reason: str | None,
    gate: GateResult | None,
) -> dict[str, Any]:
    return {
        "action": action,
        "release": release,
        "before": _state_dict(before),
        "after": _state_dict(after),
        "gate": gate.model_dump() if gate is not None else None,
        "actor": actor,
        "reason": reason,
    }


def _mentions(entry: dict[str, Any], release: str) -> bool:
    sides = [entry.get("before") or {}, entry.get("after") or {}]
    return entry["release"] == release or any(
        release in (s.get("active"), s.get("canary")) for s in sides
    )


def _p95(values: list[int]) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
