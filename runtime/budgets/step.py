"""One step's budget: what its hold in the ledger holds, and what the step is charged.

A step reserves its worst case before it acts and settles what it spent, never more than
its hold holds:

* before a model call: the prompt's bound plus an output allowance (``OutputAllowance``)
  the ledger grants in the same call; the grant is the call's ``max_tokens``;
* when a tool call is proposed: the call and its cost, added to the hold (``extend``);
  a copy of the step run again after its worker died reserves its execution as a retry;
* executions by earlier copies of the step, which died before settling, are charged too
  (one tool call, then one retry and the tool's cost per execution), reserved first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.budgets.ledger import BudgetLedger, OutputAllowance, Reservation, Scope
from runtime.errors import BudgetExhausted


@dataclass
class StepBudget:
    ledger: BudgetLedger
    run_id: str
    step_no: int
    hold_ttl_ms: int
    #: the scopes the hold reserved in (a tool call's reservation is added to the same)
    scopes: list[Scope] = field(default_factory=list)
    #: what the hold holds per dimension, as far as this copy of the step knows
    hold: dict[str, int] = field(default_factory=dict)
    reserved: bool = False
    #: the model call's reservation: the prompt's bound and the granted output cap
    prompt_tokens: int = 0
    granted_output: int = 0
    #: tool executions the hold covers, and whether this copy's own execution is one
    hold_tools: int = 0
    own_tool_reserved: bool = False
    #: executions of the step's tool call to charge: this copy's and those of earlier
    #: copies that died before settling (charged as retries)
    tool_executions: int = 0
    #: cost of one execution of the step's tool (micro-USD)
    tool_cost_micro: int = 0

    def reserve(
        self,
        scopes: list[Scope],
        amounts: dict[str, int],
        output: OutputAllowance | None = None,
        tool_executions: int = 0,
    ) -> Reservation:
        """The step's first reservation (``BudgetLedger.reserve``). A re-run of the step
        finds its hold and takes the grant its first copy was given."""
        self.scopes = scopes
        try:
            reservation = self.ledger.reserve(
                self.run_id,
                self.step_no,
                scopes,
                amounts,
                self.hold_ttl_ms,
                output=output,
                tool_executions=tool_executions,
            )
        except BudgetExhausted:
            self._adopt_earlier_hold()
            raise
        self.reserved = True
        self.hold = dict(reservation.amounts)
        self.hold_tools = reservation.tool_executions
        # a recovered hold's execution came first: this copy's resumed call was added to it
        self.own_tool_reserved = tool_executions > 0 and reservation.state in ("new", "recovered")
        if reservation.state != "new":
            # executions earlier copies of the step reserved may have run: charged even if
            # this copy runs no tool (fail closed); running one counts them again below
            self.tool_executions = self.hold_tools - (1 if self.own_tool_reserved else 0)
        if output is not None:
            held = self.hold.get("tokens", 0)
            if reservation.granted_output is not None:
                self.granted_output = reservation.granted_output
            else:  # a hold made without a grant (by an older version): what is left of it
                prompt = min(amounts.get("tokens", 0), held)
                self.granted_output = min(held - prompt, output.cap)
            # a re-run holds what its first copy reserved: the prompt's part is the rest
            self.prompt_tokens = held - self.granted_output
            if self.granted_output < 1:
                raise BudgetExhausted(f"run:{self.run_id}", "tokens")
        return reservation

    def _adopt_earlier_hold(self) -> None:
        """This copy's reservation was refused, but a hold of the step may already cover
        executions of earlier copies (one recovery rebuilt, or a dead copy's): the step's
        checkpoint settles it, charging those executions, instead of leaving it to expire."""
        earlier = self.ledger.hold(self.run_id, self.step_no)
        if earlier is None or earlier.tool_executions <= 0:
            return
        self.reserved = True
        self.hold = dict(earlier.amounts)
        self.hold_tools = self.tool_executions = earlier.tool_executions
        self.tool_cost_micro = earlier.amounts.get("cost_micro_usd", 0) // earlier.tool_executions

    def reserve_tool(self, cost_micro: int) -> dict[str, int] | None:
        """Reserve this copy's execution of the proposed tool call (None if its first
        reservation covered it already); ``BudgetExhausted`` if it does not fit."""
        self.tool_cost_micro = cost_micro
        if self.own_tool_reserved:
            return None
        return self.add_executions(1)

    def add_executions(self, count: int) -> dict[str, int]:
        """Add ``count`` tool executions to the hold: the hold's first is a tool call,
        every later one a retry, each with the tool's cost. Returns what was added."""
        cost = self.tool_cost_micro
        before, added = self.ledger.extend(
            self.run_id,
            self.step_no,
            self.scopes,
            {"tool_calls": 1, "cost_micro_usd": cost},
            {"retries": 1, "cost_micro_usd": cost},
            self.hold_ttl_ms,
            count,
        )
        self.reserved = True
        self.hold_tools = before + count
        self.own_tool_reserved = True
        for dim, amount in added.items():
            self.hold[dim] = self.hold.get(dim, 0) + amount
        return added

    def count_executions(self, earlier: int, *, runs_now: bool) -> dict[str, int] | None:
        """Count the executions the step is charged for (``earlier`` ones by copies that
        died, and this one if it runs the tool) and reserve those the hold does not cover
        yet (an earlier copy's hold was reaped). ``BudgetExhausted`` if the tool was to run
        again and that is refused: then it must not run. Returns what was added, if any."""
        self.tool_executions = earlier + (1 if runs_now else 0)
        missing = self.tool_executions - self.hold_tools
        if missing <= 0:
            return None
        try:
            return self.add_executions(missing)
        except BudgetExhausted:
            if runs_now:
                self.tool_executions = earlier
                raise
            return None  # a replay: charged within what the hold covers

    def bounded(self, actual: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """``actual`` cut to what the hold holds, and the dimensions that were over."""
        over = {d: v for d, v in actual.items() if v > self.hold.get(d, 0)}
        return {d: min(v, self.hold.get(d, 0)) for d, v in actual.items()}, over
