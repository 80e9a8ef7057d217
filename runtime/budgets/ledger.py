"""The budget ledger in Redis: reserve before a step, settle to actual after, release on failure.

Dimensions (integer units): tokens, model_calls, tool_calls, retries, wall_clock_ms,
cost_micro_usd. A step reserves its worst case in every scope (run, tenant per day, route
per day) in one Lua call: all scopes or none. Reservations count against limits, so
concurrent steps cannot together overspend. Settling replaces the reservation by what was
actually spent; SQL spend records hold the same numbers and can rebuild the ledger.

A model call's worst case is its prompt plus its output cap. The prompt is counted before
the call; the output cap is an ``OutputAllowance``: the script grants
``min(cap, what the tightest scope can still hold)`` output tokens (and their cost) in the
same call, and the step passes the grant to the model as its ``max_tokens``. A tool call is
reserved when one is proposed (``extend``), added to the same hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis

from runtime import scripts
from runtime.budgets.extension import raised
from runtime.config import DIMENSIONS
from runtime.errors import BudgetExhausted, StateUnknown
from runtime.keys import Keys

#: a delegation hold's recorded expiry: far off (the reaper never reads its index anyway)
_CARVE_TTL_MS = 366 * 86400 * 1000


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Scope:
    #: a readable name for errors and traces, e.g. ``tenant:acme:2026-11-29``
    name: str
    key: str
    #: ledger units per dimension; -1 = unlimited
    limits: dict[str, int]
    ttl_s: int


@dataclass(frozen=True)
class OutputAllowance:
    """The flexible part of a model call's reservation: between ``minimum`` and ``cap``
    output tokens, as many as every scope can still hold, priced at
    ``cost_per_token_nano`` on top of ``cost_base_nano`` (the prompt's input cost)."""

    cap: int
    minimum: int
    cost_base_nano: int
    cost_per_token_nano: int


@dataclass(frozen=True)
class Reservation:
    run_id: str
    step: int
    #: what the hold holds, per dimension (for an existing hold: all of it, as recorded)
    amounts: dict[str, int]
    #: "new", "existing" (a redelivered step found its own hold) or "recovered" (it found
    #: the hold recovery rebuilt from SQL for the executions an earlier copy may have made,
    #: and added its own reservation to it)
    state: str
    #: output tokens granted to the model call (None: the hold has no model call)
    granted_output: int | None = None
    #: tool executions the hold covers
    tool_executions: int = 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refused(scopes: list[Scope], result: list[Any], needed: dict[str, int]) -> BudgetExhausted:
    """The refusal a script returned (``{0, scope, dimension, used, reserved, limit}``),
    with how much more the reservation needed than the scope had left (its shortfall)."""
    dimension = _text(result[2])
    shortfall = None
    if len(result) >= 6 and int(result[5]) >= 0:
        left = int(result[5]) - int(result[3]) - int(result[4])
        shortfall = max(needed.get(dimension, 0) - left, 1)
    return BudgetExhausted(scopes[int(result[1])].name, dimension, shortfall=shortfall)


class BudgetLedger:
    def __init__(
        self, client: redis.Redis, keys: Keys, generation: Callable[[], int] = lambda: 0
    ) -> None:
        self.redis = client
        self.keys = keys
        #: the state generation this process knows from SQL (see runtime.state)
        self.generation = generation
        self._reserve = scripts.register(
            client, scripts.lua("runtime.budgets", "reserve.lua", state_guard=True)
        )
        self._settle = scripts.register(client, scripts.lua("runtime.budgets", "settle.lua"))
        self._extend = scripts.register(
            client, scripts.lua("runtime.budgets", "extend.lua", state_guard=True)
        )

    # --- scopes ----------------------------------------------------------------------
    def run_scope(
        self, run_id: str, limits: dict[str, int], granted: dict[str, int] | None = None
    ) -> Scope:
        """The run's scope: its budget policy's per-run ``limits``, raised by the budget
        extensions ``granted`` to it (``runtime.budgets.extension``). Only a run's own
        scope is ever raised; a tenant's or a route's day never is."""
        if granted:
            limits = raised(limits, granted)
        return Scope(f"run:{run_id}", self.keys.budget_run(run_id), limits, ttl_s=30 * 86400)

    def tenant_day_scope(
        self, tenant: str, limits: dict[str, int], day: str | None = None
    ) -> Scope:
        day = day or today()
        return Scope(
            f"tenant:{tenant}:{day}",
            self.keys.budget_tenant_day(tenant, day),
            limits,
            ttl_s=3 * 86400,
        )

    def route_day_scope(self, route: str, limits: dict[str, int], day: str | None = None) -> Scope:
        day = day or today()
        return Scope(
            f"route:{route}:{day}", self.keys.budget_route_day(route, day), limits, ttl_s=3 * 86400
        )

    # --- operations ------------------------------------------------------------------
    def reserve(
        self,
        run_id: str,
        step: int,
        scopes: list[Scope],
        amounts: dict[str, int],
        hold_ttl_ms: int,
        *,
        output: OutputAllowance | None = None,
        tool_executions: int = 0,
    ) -> Reservation:
        """Reserve ``amounts`` in every scope or raise ``BudgetExhausted`` naming the first
        scope and dimension that would go over. Idempotent for (run, step): a second call
        finds the hold (state "existing") and does not reserve again.

        With ``output``, ``amounts["tokens"]`` and ``amounts["cost_micro_usd"]`` are the
        fixed part; the script adds the granted output tokens and their cost (returned as
        ``granted_output`` and in ``amounts``) or refuses on ``tokens`` or
        ``cost_micro_usd`` when not even ``output.minimum`` fits. ``tool_executions``: the
        tool calls these amounts include (a resumed call), counted by the hold."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [hold_ttl_ms, len(dims), *dims, *(int(amounts.get(d, 0)) for d in dims)]
        for scope in scopes:
            argv.extend(int(scope.limits.get(d, -1)) for d in dims)
        argv.extend(scope.ttl_s for scope in scopes)
        # the output allowance (or none: -1) and the tool executions, always sent: the
        # state generation comes last
        if output is None:
            argv.extend([-1, 0, 0, 0])
        else:
            argv.extend(
                [output.cap, output.minimum, output.cost_base_nano, output.cost_per_token_nano]
            )
        argv.append(tool_executions)
        argv.append(self.generation())
        keys = [self.keys.budget_hold(run_id, step), self.keys.budget_holds_index()]
        keys.extend(scope.key for scope in scopes)
        keys.append(self.keys.ledger_state())
        result = self._reserve(keys=keys, args=argv)
        if int(result[0]) == -1:
            raise StateUnknown("budget ledger")
        if int(result[0]) != 1:
            needed = dict(amounts)
            if output is not None:  # not even the allowance's minimum fitted
                needed["tokens"] = needed.get("tokens", 0) + output.minimum
                nano = output.cost_base_nano + output.minimum * output.cost_per_token_nano
                needed["cost_micro_usd"] = needed.get("cost_micro_usd", 0) + -(-nano // 1000)
            raise _refused(scopes, result, needed)
        state = _text(result[1])
        if state in ("existing", "recovered"):
            # the hold as recorded: a re-run's whole hold, or a recovered hold with what this
            # copy just added to it (its grant included)
            found = self.hold(run_id, step)
            return replace(found, state=state) if found else Reservation(run_id, step, {}, state)
        reserved = dict(amounts)
        granted: int | None = None
        if output is not None:
            granted = int(result[2])
            reserved["tokens"] = int(result[3])
            reserved["cost_micro_usd"] = int(result[4])
        return Reservation(run_id, step, reserved, state, granted, tool_executions)

    # --- delegation ------------------------------------------------------------------
    def carve(self, run_id: str, step: int, scope: Scope, amounts: dict[str, int]) -> Reservation:
        """Reserve a child run's budget (``amounts``, ``delegations`` included) in its
        parent's run ``scope``, all dimensions or none (``BudgetExhausted`` naming the
        first that does not fit). The hold lives until ``settle_child``: it is indexed
        apart from step holds, so the reaper never releases it while the child runs.
        Idempotent for (run, step) like ``reserve``."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [
            _CARVE_TTL_MS,
            len(dims),
            *dims,
            *(int(amounts.get(d, 0)) for d in dims),
            *(int(scope.limits.get(d, -1)) for d in dims),
            scope.ttl_s,
            -1,
            0,
            0,
            0,
            0,
            self.generation(),
        ]
        keys = [
            self.keys.budget_delegation_hold(run_id, step),
            self.keys.budget_delegations_index(),
            scope.key,
            self.keys.ledger_state(),
        ]
        result = self._reserve(keys=keys, args=argv)
        if int(result[0]) == -1:
            raise StateUnknown("budget ledger")
        if int(result[0]) != 1:
            raise _refused([scope], result, amounts)
        return Reservation(run_id, step, dict(amounts), _text(result[1]))

    def carved(self, run_id: str, step: int) -> dict[str, int] | None:
        """What ``run_id``'s step carved for a child, as the hold records it (None: no
        open hold)."""
        raw = self.redis.hgetall(self.keys.budget_delegation_hold(run_id, step))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return {d: int(fields.get(f"a:{d}", "0")) for d in DIMENSIONS}

    def settle_child(self, run_id: str, step: int, actuals: dict[str, int]) -> bool:
        """Replace the budget ``run_id``'s step carved for a child by what the child
        spent; the rest returns to the parent. False if nothing was open (settled already)."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [len(dims), *dims, *(int(actuals.get(d, 0)) for d in dims)]
        keys = [
            self.keys.budget_delegation_hold(run_id, step),
            self.keys.budget_delegations_index(),
        ]
        return bool(self._settle(keys=keys, args=argv))

    def used(self, scope_key: str) -> dict[str, int]:
        """Settled spend per dimension of one scope."""
        return {d: v["used"] for d, v in self.balance(scope_key).items()}

    def hold(self, run_id: str, step: int) -> Reservation | None:
        """The open hold of a step as recorded (state "existing"), or None."""
        raw = self.redis.hgetall(self.keys.budget_hold(run_id, step))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        amounts = {d: int(fields.get(f"a:{d}", "0")) for d in DIMENSIONS}
        granted = int(fields["g"]) if "g" in fields and int(fields["g"]) >= 0 else None
        return Reservation(run_id, step, amounts, "existing", granted, int(fields.get("x", "0")))

    def extend(
        self,
        run_id: str,
        step: int,
        scopes: list[Scope],
        first: dict[str, int],
        again: dict[str, int],
        hold_ttl_ms: int,
        count: int = 1,
    ) -> tuple[int, dict[str, int]]:
        """Add ``count`` tool executions to the step's hold, in every scope or none (else
        ``BudgetExhausted``): the hold's first execution reserves ``first``, each later one
        ``again``. Returns (executions the hold covered before, amounts added)."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [hold_ttl_ms, len(dims), *dims]
        argv.extend(int(first.get(d, 0)) for d in dims)
        argv.extend(int(again.get(d, 0)) for d in dims)
        for scope in scopes:
            argv.extend(int(scope.limits.get(d, -1)) for d in dims)
        argv.extend(scope.ttl_s for scope in scopes)
        argv.append(count)
        argv.append(self.generation())
        keys = [self.keys.budget_hold(run_id, step), self.keys.budget_holds_index()]
        keys.extend(scope.key for scope in scopes)
        keys.append(self.keys.ledger_state())
        result = self._extend(keys=keys, args=argv)
        if int(result[0]) == -1:
            raise StateUnknown("budget ledger")
        if int(result[0]) != 1:
            needed = {d: first.get(d, 0) + again.get(d, 0) * (count - 1) for d in dims}
            raise _refused(scopes, result, needed)
        added = {d: int(v) for d, v in zip(dims, result[2:], strict=True)}
        return int(result[1]), added

    def settle(self, run_id: str, step: int, actuals: dict[str, int]) -> bool:
        """Replace the step's reservation by ``actuals``. False if nothing was open."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [len(dims), *dims, *(int(actuals.get(d, 0)) for d in dims)]
        keys = [self.keys.budget_hold(run_id, step), self.keys.budget_holds_index()]
        return bool(self._settle(keys=keys, args=argv))

    def settle_in(self, pipe: Any, run_id: str, step: int, actuals: dict[str, int]) -> None:
        """Queue a settle on a pipeline run by ``scripts.run_pipeline``."""
        dims = list(DIMENSIONS)
        argv: list[Any] = [len(dims), *dims, *(int(actuals.get(d, 0)) for d in dims)]
        keys = [self.keys.budget_hold(run_id, step), self.keys.budget_holds_index()]
        scripts.queue(pipe, self._settle, keys, argv)

    def release(self, run_id: str, step: int) -> bool:
        """Drop the step's reservation without spending anything."""
        return self.settle(run_id, step, {})

    def balance(self, scope_key: str) -> dict[str, dict[str, int]]:
        """``{dimension: {"used": n, "reserved": n}}`` for one scope."""
        raw = self.redis.hgetall(scope_key)
        out: dict[str, dict[str, int]] = {d: {"used": 0, "reserved": 0} for d in DIMENSIONS}
        for field, value in raw.items():
            f = field.decode() if isinstance(field, bytes) else field
            kind, _, dim = f.partition(":")
            if dim in out:
                out[dim]["used" if kind == "u" else "reserved"] = int(value)
        return out

    def release_expired(
        self,
        now_ms: int | None = None,
        limit: int = 500,
        spent: Callable[[str, int], dict[str, int]] | None = None,
    ) -> int:
        """Settle holds whose step died without settling (their ttl passed), at most
        ``limit`` per call, in one pipelined round trip. ``spent(run_id, step)`` gives
        what SQL recorded for the step (a step may die between its checkpoint and its
        settle); without it, or with nothing recorded, the hold is released. Returns how
        many were settled."""
        if now_ms is None:
            sec, usec = self.redis.time()
            now_ms = int(sec) * 1000 + int(usec) // 1000
        expired = self.redis.zrangebyscore(
            self.keys.budget_holds_index(), "-inf", now_ms, start=0, num=limit
        )
        if not expired:
            return 0
        dims = list(DIMENSIONS)
        index = self.keys.budget_holds_index()

        def argv_for(hold_key: str) -> list[Any]:
            actual: dict[str, int] = {}
            if spent is not None:
                run_id, step = hold_key.rsplit(":", 2)[-2:]
                actual = spent(run_id, int(step))
            return [len(dims), *dims, *(int(actual.get(d, 0)) for d in dims)]

        holds = [h.decode() if isinstance(h, bytes) else str(h) for h in expired]
        argvs = {h: argv_for(h) for h in holds}  # SQL first, then one Redis round trip

        def queue_all(pipe: Any) -> None:
            for hold_key in holds:
                scripts.queue(pipe, self._settle, [hold_key, index], argvs[hold_key])

        return sum(int(r) for r in scripts.run_pipeline(self.redis, queue_all))
