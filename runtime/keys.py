"""Every Redis key the runtime touches, and nowhere else.

Keys live under one namespace (``AGENTRT_NAMESPACE``, default ``agentrt``) so several
deployments or test sessions can share a server. Keys that one Lua script touches together
share a Redis Cluster hash tag (the part in braces):

* the budget ledger: ``{ledger}`` - every scope of one reservation must be in one slot and
  scopes cross tenants (a route's daily budget), so the ledger is one slot. Shard it by
  running one ledger Redis per region/cell; a slot handles ~50k reservations/s.
* a tool lock and its fencing counter: ``{lock:<name>}``.
* a run's step lease: ``{run:<id>}``.
* process instances' heartbeats share ``{sched}``, so the scheduler script can see which
  owners of running steps are dead (``runtime.locks.identity``).

Lua scripts get their keys through KEYS/ARGV. ``sched.lua`` and ``start.lua`` receive the
scheduler's prefix (``SchedKeys.prefix``) and build the names below from it, plus names only
they use (``band:<b>``, ``heads``, ``pass``, ``tband``, ``blocked:*``, ``inf:r:<route>``,
``inf:t:<tenant>``, ``owned:<instance>``, ``owners``, ``handback``, ``vtime``): a name
changed here must change there too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the published limit tables ``sched.lua`` reads (hashes under the scheduler's prefix)
LIMIT_TABLES = ("conf", "rlimit", "rttl", "weight", "tcap")


@dataclass(frozen=True)
class SchedKeys:
    """The scheduler's keys (``runtime.scheduling``), all under its ``{sched}`` prefix."""

    prefix: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def pattern(self) -> str:
        """SCAN pattern of every scheduler key."""
        return self._key("*")

    def table(self, name: str) -> str:
        """A published limit table (one of ``LIMIT_TABLES``)."""
        return self._key(name)

    def ready(self, tenant: str) -> str:
        """A tenant's ready queue: zset item -> enqueue time + priority offset."""
        return self._key(f"q:{tenant}")

    @property
    def inflight(self) -> str:
        """Zset item -> slot lease expiry (ms) of every dispatched step."""
        return self._key("inflight")

    @property
    def delayed(self) -> str:
        return self._key("delayed")

    @property
    def owner(self) -> str:
        """Hash item -> the owner (``<instance>|<nonce>``) of the copy running it."""
        return self._key("owner")

    @property
    def deaths(self) -> str:
        """Hash item -> how often the instance running it died (hand-backs)."""
        return self._key("deaths")

    @property
    def depth_tenant(self) -> str:
        return self._key("depth:t")

    @property
    def depth_route(self) -> str:
        return self._key("depth:r")

    @property
    def depth_tenant_priority(self) -> str:
        """Hash ``<tenant>|<priority index>`` -> queued steps."""
        return self._key("depth:tp")

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def histograms(self) -> str:
        """Hash ``<metric>|<route>|<stage>|<bucket index or "sum">`` -> count (or ms):
        the step's latency histograms for Prometheus (``runtime.scheduling.histograms``),
        in the scheduler's slot so the settle round trip can update it."""
        return self._key("metrics:hist")

    @property
    def capacity(self) -> str:
        return self._key("capacity")

    @property
    def parked(self) -> str:
        return self._key("parked")

    @property
    def paused(self) -> str:
        """Set while recovery rebuilds the queues: nothing is dispatched."""
        return self._key("paused")

    @property
    def live_route_limit(self) -> str:
        """Hash route -> concurrency limit an operator set live (``runtime.levers``): it
        overrides the published ``rlimit`` entry until it is removed."""
        return self._key("lever:rlimit")

    @property
    def drained_routes(self) -> str:
        """Set of routes whose ready steps are not dispatched (an operator's drain)."""
        return self._key("lever:drain:r")

    @property
    def drained_tenants(self) -> str:
        """Set of tenants whose ready queue is not dispatched (an operator's drain)."""
        return self._key("lever:drain:t")

    @property
    def paused_tenants(self) -> str:
        """Set of paused tenants: their runs are admitted and queued, never dispatched."""
        return self._key("lever:pause:t")

    @property
    def step_time(self) -> str:
        """Hash route -> moving average of its step time (ms), for wait estimates."""
        return self._key("avg_ms")


@dataclass(frozen=True)
class Keys:
    namespace: str = "agentrt"

    def pattern(self) -> str:
        """SCAN pattern of every key of the namespace (an eval replay's scratch namespace
        is deleted whole with it)."""
        return f"{self.namespace}:*"

    # --- budget ledger ---------------------------------------------------------------
    def budget_run(self, run_id: str) -> str:
        return f"{self.namespace}:{{ledger}}:run:{run_id}"

    def budget_tenant_day(self, tenant: str, day: str) -> str:
        return f"{self.namespace}:{{ledger}}:tenant:{tenant}:{day}"

    def budget_route_day(self, route: str, day: str) -> str:
        return f"{self.namespace}:{{ledger}}:route:{route}:{day}"

    def budget_hold(self, run_id: str, step: int) -> str:
        return f"{self.namespace}:{{ledger}}:hold:{run_id}:{step}"

    def budget_holds_index(self) -> str:
        """ZSET of open holds scored by their expiry (ms), for the reaper."""
        return f"{self.namespace}:{{ledger}}:holds"

    def budget_delegation_hold(self, run_id: str, step: int) -> str:
        """The budget a run's step carved out of its scope for a child run: held while the
        child runs (never reaped like a step's hold), settled when it ends."""
        return f"{self.namespace}:{{ledger}}:dhold:{run_id}:{step}"

    def budget_delegations_index(self) -> str:
        """ZSET of open delegation holds (the reaper never reads it)."""
        return f"{self.namespace}:{{ledger}}:dholds"

    def ledger_state(self) -> str:
        """The ledger's state marker (hash, field ``gen``): see runtime.state."""
        return f"{self.namespace}:{{ledger}}:state"

    # --- scheduling (every key under one {sched} hash tag; see runtime.scheduling) -----
    def sched(self) -> str:
        return f"{self.namespace}:{{sched}}"

    def scheduler(self) -> SchedKeys:
        return SchedKeys(self.sched())

    def sched_state(self) -> str:
        """The scheduler's state marker (hash, field ``gen``): see runtime.state."""
        return f"{self.namespace}:{{sched}}:state"

    def published_config(self) -> str:
        """Hash: ``version`` and ``digest`` of the config whose limits are published."""
        return f"{self.namespace}:{{sched}}:config"

    def recovery_lock(self) -> str:
        """Held by the process rebuilding Redis state from SQL (one at a time)."""
        return f"{self.namespace}:{{sched}}:recovering"

    def rate_limit(self, name: str) -> str:
        return f"{self.namespace}:{{sched}}:rl:{name}"

    def breaker(self, name: str) -> str:
        return f"{self.namespace}:{{sched}}:breaker:{name}"

    def breaker_failures(self, name: str) -> str:
        """Zset of a breaker's recent failures (in its breaker's slot)."""
        return f"{self.namespace}:{{sched}}:breaker:{name}:fails"

    def bulkhead(self, tool: str) -> str:
        return f"{self.namespace}:{{sched}}:bulkhead:{tool}"

    # --- process instances (heartbeats; under {sched}: sched.lua reads them) ------------
    def instance_alive(self, instance: str) -> str:
        """A live instance's heartbeat (a string with a ttl); gone means dead."""
        return f"{self.namespace}:{{sched}}:alive:{instance}"

    def instance_children(self, token: str) -> str:
        """Hash pid -> instance of a worker's pool processes, which the worker vouches for."""
        return f"{self.namespace}:{{sched}}:children:{token}"

    # --- locks and leases ------------------------------------------------------------
    def lock(self, name: str) -> str:
        return f"{self.namespace}:{{lock:{name}}}"

    def lock_fence(self, name: str) -> str:
        return f"{self.namespace}:{{lock:{name}}}:fence"

    def run_lease(self, run_id: str) -> str:
        return f"{self.namespace}:{{run:{run_id}}}:lease"

    def run_lease_fence(self, run_id: str) -> str:
        return f"{self.namespace}:{{run:{run_id}}}:lease:fence"

    def chain_cursor(self, task_id: str) -> str:
        """The step a task runs now when it is not the one its message names (a chained
        step, ``runtime.step.chain``): what a hard time limit killed."""
        return f"{self.namespace}:chain:{task_id}"

    # --- idempotency -----------------------------------------------------------------
    def effect(self, idempotency_key: str) -> str:
        """Journal marker written atomically with a Redis-resident side effect."""
        return f"{self.namespace}:effect:{idempotency_key}"

    def effect_result(self, idempotency_key: str) -> str:
        return f"{self.namespace}:effect:{idempotency_key}:result"

    # --- live controls ---------------------------------------------------------------
    def route_stopped(self, route: str) -> str:
        """Set by ``ops stop-route``: admission refuses; the value is the mode (``drain``:
        running runs go on; anything else: they stop at their next step)."""
        return f"{self.namespace}:control:route_stopped:{route}"

    def tool_disabled(self, tool: str) -> str:
        return f"{self.namespace}:control:tool_disabled:{tool}"

    def pinned_model(self, route: str) -> str:
        """The model an operator pinned for a route: every step's proposer until unpinned."""
        return f"{self.namespace}:control:pin_model:{route}"

    def forced_approval_route(self, route: str) -> str:
        """Set by an operator: every tool call on the route needs a human's approval."""
        return f"{self.namespace}:control:force_approval:route:{route}"

    def forced_approval_tool(self, tool: str) -> str:
        """Set by an operator: every call of the tool needs a human's approval."""
        return f"{self.namespace}:control:force_approval:tool:{tool}"

    def run_cancelled(self, run_id: str) -> str:
        """Set (to the actor) by an immediate cancel: ``ctx.cancelled``, and a step in
        flight stops at its next boundary. SQL (``cancel_requested``) is the fence."""
        return f"{self.namespace}:control:cancel:{run_id}"

    def run_paused(self, run_id: str) -> str:
        """Set (to the actor) by a pause: the step in flight is the last before the run
        waits (its checkpoint, or the next step's guards, land the pause in SQL)."""
        return f"{self.namespace}:control:pause:{run_id}"

    # --- releases (runtime.releases) -------------------------------------------------
    def release_state(self, route: str) -> str:
        """Hash: ``gen`` and ``state`` (JSON) of a route's live release state; SQL
        (``release_state``) is the record, this the copy every step and admission reads."""
        return f"{self.namespace}:release:{route}"

    # --- dead letters ----------------------------------------------------------------
    def dlq_stream(self, queue: str) -> str:
        """Capped stream of dead-letter notifications per queue (for alerting)."""
        return f"{self.namespace}:dlq:{queue}"

    def dlq_open(self, queue: str) -> str:
        """Count of open entries per queue (the source of truth is SQL)."""
        return f"{self.namespace}:dlq:{queue}:open"

    def reconciler_lock(self) -> str:
        return f"{self.namespace}:reconciler:lock"

    # --- demo tool pack (not runtime state; kept here so every key has one home) ------
    def demo(self, name: str) -> str:
        return f"{self.namespace}:demo:{name}"

    # --- celery broker ---------------------------------------------------------------
    def broker_prefix(self) -> str:
        """kombu ``global_keyprefix``: broker lists and bindings live under the namespace."""
        return f"{self.namespace}:celery:"
