"""Releases as data: a route's live release state, which release a run gets, and what a
route looks like under a release. Pure (no Redis, no SQL): admission, the step, the
operator commands and the evals all decide from these.

A run's release is decided by a stable hash, so every process (and a later audit) gets the
same answer for the same run: ``sha256(route, key)`` -> a bucket 0..9999, canary when the
bucket is below ``percent * 100``; a tenant named in the canary's list always gets it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from runtime.config import PolicyConfig, ReleaseConfig, RouteConfig, RuntimeConfig
from runtime.errors import ReleaseError

#: hash buckets: a canary percent has two decimals of resolution
BUCKETS = 10_000


@dataclass(frozen=True)
class LiveRelease:
    """A route's release state: the active release and its canary, as set at deploy
    (generation 0) or by the operator commands since."""

    route: str
    active: str
    canary: str | None = None
    percent: float | None = None
    tenants: tuple[str, ...] = ()
    #: bumped by every change (SQL's ``release_state.generation``)
    generation: int = 0
    #: the route's configured ``release`` when this state was set: a deploy that names
    #: another one replaces the operator's state (the file is the newer decision)
    deployed: str = ""
    #: per route settings, from the config (not stored)
    assignment: str = field(default="tenant", compare=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "active": self.active,
                "canary": self.canary,
                "percent": self.percent,
                "tenants": list(self.tenants),
                "deployed": self.deployed,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, route: str, generation: int, raw: str | bytes) -> LiveRelease:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            route=route,
            active=str(data["active"]),
            canary=data.get("canary"),
            percent=data.get("percent"),
            tenants=tuple(data.get("tenants") or ()),
            generation=generation,
            deployed=str(data.get("deployed") or ""),
        )

    def releases(self) -> tuple[str, ...]:
        return (self.active,) if self.canary is None else (self.active, self.canary)


@dataclass(frozen=True)
class StepRelease:
    """How one step of a run sees its route under its release."""

    route: RouteConfig
    #: a key of ``policies`` (None: the top-level ``policy``)
    policy_set: str | None
    release: str | None
    #: the run row's changes when the step took another release (``next_step`` routes)
    run_updates: dict[str, Any] = field(default_factory=dict)
    #: the ``release_changed`` trace event's fields, or None
    changed: dict[str, Any] | None = None


def deployed_state(config: RuntimeConfig, route: str) -> LiveRelease | None:
    """The state the deployment file gives ``route`` (None: the route has no release)."""
    cfg = config.routes.get(route)
    if cfg is None or cfg.release is None:
        return None
    canary = cfg.canary
    return LiveRelease(
        route=route,
        active=cfg.release,
        canary=canary.release if canary else None,
        percent=canary.percent if canary else None,
        tenants=tuple(canary.tenants or ()) if canary else (),
        deployed=cfg.release,
        assignment=cfg.release_assignment or "tenant",
    )


def effective_state(
    config: RuntimeConfig, route: str, stored: LiveRelease | None
) -> LiveRelease | None:
    """What holds for ``route``: the stored state, unless the file deployed since names
    another release (or the route has none). Raises ``ReleaseError`` when the state names
    a release the config does not define: a run never starts under an unknown release."""
    deployed = deployed_state(config, route)
    if deployed is None:
        return None
    if stored is None or stored.deployed != deployed.deployed:
        state = deployed
    else:
        state = LiveRelease(
            route=stored.route,
            active=stored.active,
            canary=stored.canary,
            percent=stored.percent,
            tenants=stored.tenants,
            generation=stored.generation,
            deployed=stored.deployed,
            assignment=deployed.assignment,
        )
    for name in state.releases():
        if name not in config.releases:
            raise ReleaseError(f"route {route!r}: its release state names {name!r}, "
                               "which the config does not define")  # fmt: skip
    return state


def bucket(route: str, key: str) -> int:
    """The stable bucket (0..BUCKETS-1) of a tenant or run id on a route."""
    digest = hashlib.sha256(f"{route}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(state: LiveRelease, tenant: str, run_id: str) -> str:
    """The release a run of ``tenant`` with ``run_id`` gets under ``state``."""
    if state.canary is None:
        return state.active
    if tenant in state.tenants:
        return state.canary
    if state.percent is not None:
        key = run_id if state.assignment == "run" else tenant
        if bucket(state.route, key) < round(state.percent * BUCKETS / 100):
            return state.canary
    return state.active


def release_of(config: RuntimeConfig, name: str) -> ReleaseConfig:
    release = config.releases.get(name)
    if release is None:
        known = ", ".join(sorted(config.releases)) or "none"
        raise ReleaseError(f"unknown release {name!r} (defined: {known})")
    return release


def route_for(config: RuntimeConfig, route: str, release: str | None) -> RouteConfig:
    """``route`` as a run under ``release`` sees it: the release's model, system prompt and
    budget policy (None: the route as configured)."""
    cfg = config.routes[route]
    if release is None:
        return cfg
    rel = release_of(config, release)
    update: dict[str, Any] = {"proposer": rel.model, "prompt_version": rel.prompt}
    if rel.system_prompt is not None:
        update["system_prompt"] = rel.system_prompt
    if rel.budget_policy is not None:
        update["budget_policy"] = rel.budget_policy
    if rel.retriever is not None:
        update["retriever_version"] = rel.retriever
    return cfg.model_copy(update=update)


def policy_for(config: RuntimeConfig, release: str | None) -> tuple[str | None, PolicyConfig]:
    """(policy set name, its rules) of a release: None names the top-level ``policy``."""
    name = release_of(config, release).policy if release is not None else None
    return name, config.policy if name is None else config.policies[name]


def config_for(config: RuntimeConfig, route: str, release: str) -> RuntimeConfig:
    """A derived config in which ``route`` runs under ``release``: every run of it gets that
    release (no canary), with its model, prompt, policy and budget policy. The evals replay
    fixtures under a candidate release with it."""
    if route not in config.routes:
        raise ReleaseError(f"unknown route {route!r}")
    release_of(config, release)
    cfg = route_for(config, route, release).model_copy(
        update={"release": release, "canary": None, "release_upgrade": None}
    )
    return config.model_copy(update={"routes": {**config.routes, route: cfg}})


#: the fields ``diff`` compares, in its order
DIFF_FIELDS = (
    "model", "model_version", "prompt", "system_prompt", "policy", "policy_version",
    "tool_schema", "retriever", "harness", "budget_policy", "budget_policy_version",
)  # fmt: skip


def described(config: RuntimeConfig, name: str) -> dict[str, Any]:
    """A release's version set as declared, with the versions its names resolve to."""
    rel = release_of(config, name)
    policy_name, policy = policy_for(config, name)
    budget = config.budget_policies[rel.budget_policy] if rel.budget_policy else None
    return {
        "model": rel.model,
        "model_version": config.models[rel.model].version,
        "prompt": rel.prompt,
        "system_prompt": rel.system_prompt,
        "policy": policy_name or "(default)",
        "policy_version": policy.version,
        "tool_schema": rel.tool_schema,
        "retriever": rel.retriever,
        "harness": rel.harness,
        "budget_policy": rel.budget_policy,
        "budget_policy_version": budget.version if budget else None,
    }


def diff(config: RuntimeConfig, a: str, b: str) -> list[tuple[str, Any, Any]]:
    """What changes from release ``a`` to release ``b``: (field, in a, in b)."""
    left, right = described(config, a), described(config, b)
    return [(f, left[f], right[f]) for f in DIFF_FIELDS if left[f] != right[f]]
