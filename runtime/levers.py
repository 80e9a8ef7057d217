"""Operator levers (``agentrt ops``, ``rt.levers``): switches that act within one step on
every worker, without a redeploy, each recorded in SQL and audited.

===================  ===============  ======================================================
lever                target           effect
===================  ===============  ======================================================
tool_disabled        tool             calls refused ``policy_denied:tool_disabled``, or sent
                                      to the tool's manifest ``fallback``
model_pinned         route            every step asks the pinned model (trace: model_pinned)
approval_forced      route or tool    an allowed call needs approval (rule
                                      ``operator_forced_approval``); stricter decisions stand
route_stopped        route            admission refuses ``refused:route_stopped``; mode
                                      ``stop``: running runs stop at their next step
                                      (``cancelled:route_stopped``); ``drain``: they finish
route_drained        route            nothing new is dispatched from the route; in-flight
                                      steps finish; admission still queues
tenant_drained       tenant           the same for one tenant's ready queue
tenant_paused        tenant           the tenant's runs are admitted and queued (as a paused
                                      queue in a job system) but never dispatched until
                                      resumed; in-flight steps finish
route_concurrency    route            the dispatcher's limit for the route, live (overrides
                                      the config's ``concurrency_limit`` until reset)
===================  ===============  ======================================================

Where they live: SQL (``operator_levers``: the levers on now; ``operator_audit``, action
``ops.<lever>``: every change, dry runs too) is the record, written first; then Redis,
where steps read them in the round trip that takes their lease (``runtime.controls``) and
the dispatch script reads the scheduling ones (``sched.lua``). After Redis lost its data,
recovery restores them from SQL (``restore``) before it writes the state marker: until
then no step runs and nothing is dispatched (``runtime.state``): nothing runs with its
levers unknown.

Reverting a prompt (setting a route's active release) is ``agentrt releases rollback``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from runtime.config import MAX_CONCURRENCY, RuntimeConfig
from runtime.controls import STOP_MODE_DRAIN
from runtime.errors import InvalidRequest, UnknownLeverTarget
from runtime.keys import Keys
from runtime.scheduling.scheduler import Ops, Outcome
from runtime.store.db import utcnow
from runtime.store.levers import LeverStore

#: the modes of ``stop-route``
STOP_MODES = ("stop", STOP_MODE_DRAIN)
#: most characters of an actor or a reason kept in the audit
MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 2000
#: runs a dry run lists (its count covers all)
AFFECTED_SHOWN = 200


class Lever(enum.StrEnum):
    TOOL_DISABLED = "tool_disabled"
    MODEL_PINNED = "model_pinned"
    APPROVAL_FORCED_ROUTE = "approval_forced_route"
    APPROVAL_FORCED_TOOL = "approval_forced_tool"
    ROUTE_STOPPED = "route_stopped"
    ROUTE_DRAINED = "route_drained"
    TENANT_DRAINED = "tenant_drained"
    TENANT_PAUSED = "tenant_paused"
    ROUTE_CONCURRENCY = "route_concurrency"


#: levers the dispatcher reads: changing one lets parked tenants try again
_SCHEDULING = {
    Lever.ROUTE_DRAINED,
    Lever.TENANT_DRAINED,
    Lever.TENANT_PAUSED,
    Lever.ROUTE_CONCURRENCY,
}


@dataclass
class LeverChange:
    """What a lever call did (or, with ``dry_run``, would do)."""

    lever: Lever
    target: str
    #: the setting before and after (None: off)
    old: Any
    new: Any
    dry_run: bool
    #: non-terminal runs the lever applies to, and the first ``AFFECTED_SHOWN`` of them
    affected_count: int = 0
    affected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.old != self.new)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lever": str(self.lever),
            "target": self.target,
            "old": self.old,
            "new": self.new,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "affected_count": self.affected_count,
            "affected": self.affected,
        }


#: applies one lever's setting (None: off) to a Redis pipeline
_Apply = Callable[[Any, str, Any], None]


class Levers:
    def __init__(
        self,
        *,
        config: RuntimeConfig,
        store: LeverStore,
        redis: redis.Redis,
        keys: Keys,
        schedule: Callable[[Ops], Outcome],
    ) -> None:
        self.config = config
        self.store = store
        self.redis = redis
        self.keys = keys
        #: runs scheduler operations and publishes what they dispatched (``Dispatch``)
        self.schedule = schedule

    # --- the levers ----------------------------------------------------------------
    def disable_tool(self, tool: str, **kw: Any) -> LeverChange:
        return self._set(Lever.TOOL_DISABLED, self._tool(tool), True, **kw)

    def enable_tool(self, tool: str, **kw: Any) -> LeverChange:
        return self._set(Lever.TOOL_DISABLED, self._tool(tool), None, **kw)

    def pin_model(self, route: str, model: str, **kw: Any) -> LeverChange:
        self._known("model", model, self.config.models)
        return self._set(Lever.MODEL_PINNED, self._route(route), model, **kw)

    def unpin_model(self, route: str, **kw: Any) -> LeverChange:
        return self._set(Lever.MODEL_PINNED, self._route(route), None, **kw)

    def force_approval(
        self, *, route: str | None = None, tool: str | None = None, **kw: Any
    ) -> LeverChange:
        lever, target = self._route_or_tool(route, tool)
        return self._set(lever, target, True, **kw)

    def unforce_approval(
        self, *, route: str | None = None, tool: str | None = None, **kw: Any
    ) -> LeverChange:
        lever, target = self._route_or_tool(route, tool)
        return self._set(lever, target, None, **kw)

    def stop_route(self, route: str, mode: str, **kw: Any) -> LeverChange:
        if mode not in STOP_MODES:
            raise InvalidRequest(("mode",), f"mode must be one of {', '.join(STOP_MODES)}")
        return self._set(Lever.ROUTE_STOPPED, self._route(route), mode, **kw)

    def start_route(self, route: str, **kw: Any) -> LeverChange:
        return self._set(Lever.ROUTE_STOPPED, self._route(route), None, **kw)

    def drain(
        self, *, route: str | None = None, tenant: str | None = None, **kw: Any
    ) -> LeverChange:
        lever, target = self._route_or_tenant(route, tenant)
        return self._set(lever, target, True, **kw)

    def undrain(
        self, *, route: str | None = None, tenant: str | None = None, **kw: Any
    ) -> LeverChange:
        lever, target = self._route_or_tenant(route, tenant)
        return self._set(lever, target, None, **kw)

    def pause_tenant(self, tenant: str, **kw: Any) -> LeverChange:
        return self._set(Lever.TENANT_PAUSED, self._tenant(tenant), True, **kw)

    def resume_tenant(self, tenant: str, **kw: Any) -> LeverChange:
        return self._set(Lever.TENANT_PAUSED, self._tenant(tenant), None, **kw)

    def set_concurrency(self, route: str, limit: int | None, **kw: Any) -> LeverChange:
        """The route's concurrency limit, live; None goes back to the config's."""
        if limit is not None and (isinstance(limit, bool) or not 0 <= limit <= MAX_CONCURRENCY):
            raise InvalidRequest(
                ("limit",), f"a concurrency limit is 0..{MAX_CONCURRENCY} (got {limit!r})"
            )
        return self._set(Lever.ROUTE_CONCURRENCY, self._route(route), limit, **kw)

    # --- reads ---------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Every lever on now (from SQL, the record)."""
        return self.store.current()

    def log(self, limit: int = 100, lever: str | None = None) -> list[dict[str, Any]]:
        """The audit, newest first."""
        if lever is not None and lever not in {str(x) for x in Lever}:
            raise UnknownLeverTarget("lever", lever, [str(x) for x in Lever])
        return self.store.log(limit=max(1, min(limit, 10_000)), lever=lever)

    # --- recovery --------------------------------------------------------------------
    def restore(self) -> int:
        """Make Redis's levers what SQL records (recovery, before it marks the state
        known): every switch of every route, tool and tenant of the config is set or
        cleared, in one transaction. Returns the levers on."""
        rows = self.store.current()
        on = {(row["lever"], row["target"]): row["value"] for row in rows}
        k = self.keys.scheduler()
        pipe = self.redis.pipeline(transaction=True)
        for key in (k.drained_routes, k.drained_tenants, k.paused_tenants, k.live_route_limit):
            pipe.delete(key)
        targets: dict[Lever, Any] = {
            Lever.TOOL_DISABLED: self.config.tools,
            Lever.APPROVAL_FORCED_TOOL: self.config.tools,
            Lever.MODEL_PINNED: self.config.routes,
            Lever.APPROVAL_FORCED_ROUTE: self.config.routes,
            Lever.ROUTE_STOPPED: self.config.routes,
        }
        for lever, names in targets.items():
            for name in names:
                self._appliers()[lever](pipe, name, on.get((str(lever), name)))
        for (lever, target), value in on.items():
            if Lever(lever) in _SCHEDULING:
                self._appliers()[Lever(lever)](pipe, target, value)
        pipe.execute()
        return len(rows)

    # --- internals -------------------------------------------------------------------
    def _set(
        self,
        lever: Lever,
        target: str,
        value: Any,
        *,
        actor: str,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> LeverChange:
        actor = actor.strip()[:MAX_ACTOR_CHARS]
        if not actor:
            raise InvalidRequest(("actor",), "an actor is required for the audit")
        if reason is not None:
            reason = reason[:MAX_REASON_CHARS]
        current = self.store.get(str(lever), target)
        old = current["value"] if current is not None else None
        count, runs = self._affected(lever, target)
        change = LeverChange(lever, target, old, value, dry_run, count, runs)
        audit = {
            "at": utcnow(),
            "actor": actor,
            "lever": str(lever),
            "target": target,
            "old": old,
            "new": value,
            "reason": reason,
            "dry_run": dry_run,
            "affected": count,
            "ids": [r["run_id"] for r in runs],
        }
        if dry_run:
            self.store.audit(audit)
            return change
        # the record first: a Redis failure after it leaves the lever in SQL, where the
        # next recovery (or the same command again) puts it in Redis
        self.store.change(lever=str(lever), target=target, value=value, audit=audit,
                          on=value is not None)  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        self._appliers()[lever](pipe, target, value)
        pipe.execute()
        if lever in _SCHEDULING:
            # tenants parked on the old limit (or drain) may go now; a tighter one binds
            # the next dispatch decision
            self.schedule(Ops().unpark().dispatch(10))
        return change

    def _appliers(self) -> dict[Lever, _Apply]:
        keys, k = self.keys, self.keys.scheduler()

        def string(key: Callable[[str], str]) -> _Apply:
            def apply(pipe: Any, target: str, value: Any) -> None:
                if value is None:
                    pipe.delete(key(target))
                else:
                    pipe.set(key(target), "1" if value is True else str(value))

            return apply

        def member(key: str) -> _Apply:
            def apply(pipe: Any, target: str, value: Any) -> None:
                (pipe.srem if value is None else pipe.sadd)(key, target)

            return apply

        def limit(pipe: Any, target: str, value: Any) -> None:
            if value is None:
                pipe.hdel(k.live_route_limit, target)
            else:
                pipe.hset(k.live_route_limit, target, int(value))

        return {
            Lever.TOOL_DISABLED: string(keys.tool_disabled),
            Lever.MODEL_PINNED: string(keys.pinned_model),
            Lever.APPROVAL_FORCED_ROUTE: string(keys.forced_approval_route),
            Lever.APPROVAL_FORCED_TOOL: string(keys.forced_approval_tool),
            Lever.ROUTE_STOPPED: string(keys.route_stopped),
            Lever.ROUTE_DRAINED: member(k.drained_routes),
            Lever.TENANT_DRAINED: member(k.drained_tenants),
            Lever.TENANT_PAUSED: member(k.paused_tenants),
            Lever.ROUTE_CONCURRENCY: limit,
        }

    def _affected(self, lever: Lever, target: str) -> tuple[int, list[dict[str, Any]]]:
        """The runs not ended yet that the lever applies to."""
        if lever in (Lever.TENANT_DRAINED, Lever.TENANT_PAUSED):
            return self.store.open_runs(tenants=[target], limit=AFFECTED_SHOWN)
        if lever in (Lever.TOOL_DISABLED, Lever.APPROVAL_FORCED_TOOL):
            routes = [n for n, r in self.config.routes.items() if target in r.allowed_tools]
            if not routes:
                return 0, []
            return self.store.open_runs(routes=routes, limit=AFFECTED_SHOWN)
        return self.store.open_runs(routes=[target], limit=AFFECTED_SHOWN)

    def _known(self, kind: str, name: str, known: Any) -> str:
        if name not in known:
            raise UnknownLeverTarget(kind, name, list(known))
        return name

    def _tool(self, tool: str) -> str:
        return self._known("tool", tool, self.config.tools)

    def _route(self, route: str) -> str:
        return self._known("route", route, self.config.routes)

    def _tenant(self, tenant: str) -> str:
        return self._known("tenant", tenant, self.config.tenants)

    def _route_or_tool(self, route: str | None, tool: str | None) -> tuple[Lever, str]:
        if (route is None) == (tool is None):
            raise InvalidRequest(("route", "tool"), "name exactly one of a route or a tool")
        if route is not None:
            return Lever.APPROVAL_FORCED_ROUTE, self._route(route)
        assert tool is not None
        return Lever.APPROVAL_FORCED_TOOL, self._tool(tool)

    def _route_or_tenant(self, route: str | None, tenant: str | None) -> tuple[Lever, str]:
        if (route is None) == (tenant is None):
            raise InvalidRequest(("route", "tenant"), "name exactly one of a route or a tenant")
        if route is not None:
            return Lever.ROUTE_DRAINED, self._route(route)
        assert tenant is not None
        return Lever.TENANT_DRAINED, self._tenant(tenant)
