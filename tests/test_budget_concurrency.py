"""Many runs, several worker processes, one tenant budget: never overspent."""

from __future__ import annotations

import pytest

from runtime.budgets.ledger import today
from tests.support import Deployment

USAGE = {"input_tokens": 300, "output_tokens": 200}


@pytest.mark.slow
def test_fifty_concurrent_runs_never_exceed_the_tenant_budget(
    fresh_deployment_on: Deployment,
) -> None:
    dep = fresh_deployment_on
    for _ in range(2):
        dep.start_worker(concurrency=2)
    # Given tenant "tb" with 20,000 tokens and 60 tool calls a day, and 50 runs that would
    # together spend 100,000 tokens and 150 tool calls
    search = {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"}, "usage": USAGE}
    script = [search, search, search, {"type": "reply", "text": "ok", "usage": USAGE}]
    runs = [dep.submit_script(script, tenant="tb") for _ in range(50)]

    # When they all run at once
    done = dep.wait_all([r.run_id for r in runs], timeout=120)

    # Then the settled spend stays within the limits...
    spend = dep.svc.store.spend(tenant_id="tb")
    assert spend["tokens"] <= 20_000
    assert spend["tool_calls"] <= 60
    # ...the ledger agrees with the SQL spend records and holds nothing open...
    scope = dep.svc.ledger.tenant_day_scope("tb", {}, today())
    balance = dep.svc.ledger.balance(scope.key)
    for dim in ("tokens", "tool_calls", "model_calls", "cost_micro_usd"):
        assert balance[dim]["used"] == spend[dim], dim
        assert balance[dim]["reserved"] == 0, dim
    # ...and the runs that did not fit stopped on the budget, not on anything else
    reasons = {v.stop_reason for v in done.values()}
    assert reasons <= {"completed", "budget_exhausted:tokens", "budget_exhausted:tool_calls"}, (
        reasons
    )
    # (with 50 runs interleaved, possibly none completes: that is fair, not a bug)
    assert reasons & {"budget_exhausted:tokens", "budget_exhausted:tool_calls"}
    # the budget was used, not left mostly idle by over-cautious reservations
    assert spend["tokens"] >= 20_000 - 4 * 1000 - 500
