"""The model proposes, the runtime decides: hostile proposals on real workers.

Numbers a proposer reports, arguments a model sends, replies with several calls and secret
arguments, each checked end to end: refused with a reason code, nothing executed that
should not be, nothing lost, nothing secret shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from runtime.store.dead_letters import DeadLetterFilter
from tests.support import ROOT, Deployment, wait_for

REPLY = {"type": "reply", "text": "done"}


def key() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def write(k: str, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_call", "tool": "effects.write", "args": {"key": k}, **extra}


def writes(dep: Deployment, k: str) -> int:
    return int(dep.svc.tool_redis.get(dep.svc.keys.demo(f"writes:{k}")) or 0)


def unlock(vault: str, pin: str, **args: Any) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "tool": "vault.unlock",
        "args": {"vault_id": vault, "pin": pin, **args},
    }


def pins_seen(dep: Deployment, vault: str) -> list[str]:
    raw = dep.svc.tool_redis.lrange(dep.svc.keys.demo(f"vault:{vault}:pins"), 0, -1)
    return [p.decode() for p in raw]


def stored_text(dep: Deployment, run_id: str) -> str:
    """Everything the store keeps about a run, as text (what an operator could read)."""
    tables = ["runs", "steps", "trace_events", "policy_decisions", "side_effects",
              "spend_records", "dead_letters", "step_failures"]  # fmt: skip
    chunks = []
    with dep.svc.store.engine.connect() as conn:
        for table in tables:
            rows = conn.execute(text(f"SELECT * FROM {table} WHERE run_id = :r"), {"r": run_id})
            for row in rows.mappings():
                # the run's input is kept as the caller sent it (the scripted proposer replays
                # it); views redact it (see run_view_text)
                chunks.append(json.dumps({k: str(v) for k, v in row.items() if k != "input"}))
    return "\n".join(chunks) + "\n" + run_view_text(dep, run_id)


def run_view_text(dep: Deployment, run_id: str) -> str:
    """What the Python API (and the CLI's --json) shows of a run and its trace."""
    view = dep.svc.get(run_id).model_dump_json()
    return view + json.dumps([e.model_dump(mode="json") for e in dep.svc.trace(run_id)])


def run_on(dep: Deployment, script: list[Any], **kw: Any) -> Any:
    run = dep.submit_script(script, route="r.boundary", **kw)
    assert run.status == "queued", run.stop_reason
    return dep.svc.wait(run.run_id, timeout=60)


# --- numbers a proposer reports ------------------------------------------------------------


def test_reported_usage_is_bounded_by_the_reservation(deployment: Deployment) -> None:
    # Given usage reports that overflow 64 bits together, exceed the step's reservation
    # (tokens_per_step 1000 in the test config), or are not counts at all
    k = key()
    script = [
        write(k, usage={"input_tokens": 2**62, "output_tokens": 2**62}),
        write(k, usage={"input_tokens": 3000, "output_tokens": 3000}),
        write(k, usage={"input_tokens": True, "output_tokens": "7"}),
        {**REPLY, "usage": {"input_tokens": 10, "output_tokens": 5}},
    ]
    # When the run goes through them
    done = run_on(deployment, script)
    # Then every step checkpointed: the run succeeded, each write ran once and is recorded
    assert done.status == "succeeded", done.stop_reason
    assert writes(deployment, k) == 3
    effects = deployment.svc.store.side_effects(run_id=done.run_id)
    assert [e["status"] for e in effects] == ["succeeded"] * 3
    assert deployment.svc.dead_letters.find(DeadLetterFilter(run_id=done.run_id)) == []
    # and what was charged is the reservation where the report was unknown or larger: the
    # prompt's bound as input tokens, the granted output cap (tokens_per_step) as output
    steps = deployment.svc.store.steps(done.run_id)
    trace = deployment.svc.trace(done.run_id)
    reserved = [
        (e.data["prompt_tokens"], e.data["max_output_tokens"])
        for e in trace
        if e.kind == "budget_reserve"
    ]
    assert [r[1] for r in reserved] == [1000] * 4
    charged = [(s["input_tokens"], s["output_tokens"]) for s in steps]
    assert charged == [reserved[0], (reserved[1][0], 1000), reserved[2], (10, 5)]
    assert deployment.svc.store.spend(run_id=done.run_id)["tokens"] == sum(map(sum, charged))
    kinds = [e.kind for e in trace]
    assert kinds.count("usage_unknown") == 2 and kinds.count("usage_clamped") == 1
    clamped = next(e for e in trace if e.kind == "usage_clamped")
    assert clamped.data["reported"] == {"input_tokens": 3000, "output_tokens": 3000}
    assert clamped.data["charged"] == sum(reserved[1])
    assert clamped.data["reserved"] == {
        "input_tokens": reserved[1][0],
        "output_tokens": 1000,
    }


# --- an outcome that could not be checkpointed -----------------------------------------------


@pytest.mark.slow
def test_a_side_effect_whose_checkpoint_failed_is_not_run_again(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    k = key()
    # Given a database that fails every checkpoint of a tool step (a fault nobody could
    # know of before the tool ran)
    with dep.svc.store.engine.begin() as conn:
        conn.execute(text(
            "CREATE TRIGGER inject_fault BEFORE INSERT ON steps WHEN NEW.kind = 'tool_call' "
            "BEGIN SELECT json('injected fault'); END"
        ))  # fmt: skip
    dep.start_worker(concurrency=1)
    run = dep.submit_script([write(k), REPLY], route="r.boundary")
    # When the step's retries run out, the run is dead-lettered
    done = dep.wait_all([run.run_id], timeout=90)[run.run_id]
    assert done.status == "failed" and done.stop_reason == "dead_lettered:exhausted"
    # Then the write ran once, and its outcome is on record although the checkpoint failed
    assert writes(dep, k) == 1
    [effect] = dep.svc.store.side_effects(run_id=run.run_id)
    assert effect["status"] == "succeeded" and effect["result"] == {"executions": 1}
    # When the fault is gone and an operator retries the dead letter
    with dep.svc.store.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER inject_fault"))
    [entry] = dep.svc.dead_letters.find(DeadLetterFilter(run_id=run.run_id))
    assert dep.svc.dead_letters.retry(DeadLetterFilter(ids=(entry["id"],)), "ops:test").retried
    wait_for(lambda: dep.svc.get(run.run_id).status == "succeeded", timeout=60,
             message="the retried run to succeed")  # fmt: skip
    # Then the recorded result was reused: the write did not run a second time
    assert writes(dep, k) == 1
    assert any(e.kind == "tool_replayed" for e in dep.svc.trace(run.run_id))


# --- tool arguments are validated strictly --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"n": 3, "amount": True}, "amount"),  # a bool is not a number
        ({"n": "3"}, "n"),  # a string is not a number
        ({"n": True}, "n"),  # a bool is not an integer
        ({"n": 3.5}, "n"),  # a fraction is not an integer
        ({"n": 3, "surprise": 1}, "surprise"),  # a field the schema does not declare
    ],
)
def test_lax_arguments_are_refused_naming_the_field(
    deployment: Deployment, args: dict[str, Any], field: str
) -> None:
    k = key()
    call = {"type": "tool_call", "tool": "strict.count", "args": {"key": k, **args}}
    done = run_on(deployment, [call, REPLY])
    assert done.status == "refused" and done.stop_reason == "invalid_proposal:invalid_args"
    # never executed
    assert deployment.svc.tool_redis.llen(deployment.svc.keys.demo(f"strict:{k}")) == 0
    refusal = next(
        e for e in deployment.svc.trace(done.run_id) if e.kind == "validation" and not e.data["ok"]
    )
    assert refusal.data["code"] == "invalid_args"
    assert [err["loc"] for err in refusal.data["errors"]] == [field]
    assert refusal.data["detail"].startswith(f"{field}: ")


def test_an_integer_is_a_valid_float(deployment: Deployment) -> None:
    k = key()
    call = {"type": "tool_call", "tool": "strict.count", "args": {"key": k, "n": 3, "amount": 2}}
    done = run_on(deployment, [call, REPLY])
    assert done.status == "succeeded", done.stop_reason
    assert deployment.svc.tool_redis.lrange(deployment.svc.keys.demo(f"strict:{k}"), 0, -1) == [
        b"3|2.0"
    ]


# --- one call per reply ---------------------------------------------------------------------


def test_a_reply_with_several_calls_is_refused_and_every_call_recorded(
    deployment: Deployment,
) -> None:
    k = key()
    calls = [{"type": "tool_call", "tool": "effects.write", "args": {"key": k}},
             unlock("v-multi", "771199")]  # fmt: skip
    done = run_on(deployment, [{"type": "tool_calls", "calls": calls}, REPLY])
    assert done.status == "refused"
    assert done.stop_reason == "invalid_proposal:multiple_tool_calls"
    assert writes(deployment, k) == 0 and pins_seen(deployment, "v-multi") == []
    proposal = next(e for e in deployment.svc.trace(done.run_id) if e.kind == "proposal")
    shown = proposal.data["proposal"]["calls"]
    assert [c["tool"] for c in shown] == ["effects.write", "vault.unlock"]
    assert shown[1]["args"]["pin"] == "[redacted]"
    assert "771199" not in stored_text(deployment, done.run_id)


# --- secrets --------------------------------------------------------------------------------


def test_a_declared_secret_argument_is_never_stored_or_shown(deployment: Deployment) -> None:
    vault = f"v-{uuid.uuid4().hex[:8]}"
    # Given a run that unlocks a vault, then fails to (the tool echoes the pin in its error),
    # then proposes an invalid pin
    script = [unlock(vault, "482913"), unlock(vault, "550021", fail=True),
              unlock(vault, "abc12345"), REPLY]  # fmt: skip
    run = deployment.submit_script(script, route="r.boundary")
    done = deployment.svc.wait(run.run_id, timeout=60)
    # Then the tool got the real pins
    assert pins_seen(deployment, vault)[:2] == ["482913", "550021"]
    # and no pin appears anywhere the runtime stores or shows
    stored = stored_text(deployment, done.run_id)
    for pin in ("482913", "550021"):
        assert pin not in stored
    assert "[redacted]" in stored
    for event in deployment.svc.trace(done.run_id):
        assert "482913" not in json.dumps(event.data) and "550021" not in json.dumps(event.data)


def test_a_pending_call_keeps_its_secret_out_of_the_run_row(deployment: Deployment) -> None:
    # Given a call that needs approval (rule vault_gated): the run waits with the call
    run = deployment.submit_script([unlock("gated", "931177"), REPLY], route="r.boundary")
    done = deployment.svc.wait(run.run_id, timeout=60)
    assert done.status == "waiting" and done.stop_reason == "needs_approval:vault_gated"
    # Then the run row's pending call has the pin redacted; it is kept apart, for the call
    row = deployment.svc.store.get_run(run.run_id)
    assert row["pending_proposal"]["args"]["pin"] == "[redacted]"
    assert row["pending_proposal"]["secret_args"] == ["pin"]
    assert deployment.svc.store.pending_secrets(run.run_id) == {"pin": "931177"}
    assert "931177" not in stored_text(deployment, run.run_id)


@pytest.mark.slow
def test_a_call_that_waited_for_its_lock_runs_with_its_real_secret(
    deployment: Deployment,
) -> None:
    vault = f"v-{uuid.uuid4().hex[:8]}"
    hold = deployment.svc.keys.demo(f"vault:{vault}:hold")
    # Given two runs on one vault: the first holds the vault's lock until the second
    # has had to wait for it (the lock wait keeps the second call pending, secret apart);
    # the test lets the first go once it saw the wait, not after a fixed time (the hold's
    # 9 s bound is below the route's step timeout: only a failure bound)
    deployment.svc.tool_redis.set(hold, 1)
    try:
        first = deployment.submit_script([unlock(vault, "1111", hold=True, hold_ms=9000), REPLY],
                                         route="r.boundary")  # fmt: skip
        wait_for(lambda: pins_seen(deployment, vault), timeout=60,
                 message="the first call to start")  # fmt: skip
        second = deployment.submit_script([unlock(vault, "2222"), REPLY], route="r.boundary")
        wait_for(lambda: any(e.kind == "lock_busy" for e in deployment.svc.trace(second.run_id)),
                 timeout=60, message="the second call to wait for the lock")  # fmt: skip
    finally:
        deployment.svc.tool_redis.delete(hold)
    done = deployment.wait_all([first.run_id, second.run_id], timeout=60)
    assert {v.status for v in done.values()} == {"succeeded"}
    # Then the resumed call got its real pin, and the pending secret is gone afterwards
    assert pins_seen(deployment, vault) == ["1111", "2222"]
    assert deployment.svc.store.pending_secrets(second.run_id) is None
    assert "2222" not in stored_text(deployment, second.run_id)


# --- a bad row never breaks the runtime -------------------------------------------------------


def test_a_hand_edited_priority_never_breaks_recovery_or_scheduling(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    # Given a queued run whose priority someone edited by hand to a value no version wrote
    run = dep.submit_script([REPLY], route="r.boundary")
    with dep.svc.store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET priority = 'urgent' WHERE run_id = :r"),
                     {"r": run.run_id})  # fmt: skip
    # When an operator runs recovery (which queues every live run again from SQL)
    report = dep.svc.recovery.recover("ops:test", inflight_wait_s=0)
    assert run.run_id in report.runs
    # Then the run is scheduled (last, as the lowest priority) and a worker finishes it
    dep.start_worker(concurrency=1)
    done = dep.wait_all([run.run_id], timeout=60)[run.run_id]
    assert done.status == "succeeded", done.stop_reason


def test_a_corrupt_trace_event_never_breaks_reading_the_trace(
    fresh_deployment: Deployment,
) -> None:
    dep = fresh_deployment
    run = dep.submit_script([REPLY], route="r.boundary")
    # Given an event row someone edited by hand: its data is no JSON, its time no time
    with dep.svc.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE trace_events SET data = '{not json', at = 'yesterday' WHERE run_id = :r"),
            {"r": run.run_id},
        )
    # When the trace is read (the Python API, and the CLI's --json)
    events = dep.svc.trace(run.run_id)
    # Then it is shown, marked, and nothing raises
    assert events and events[0].data == {"unreadable": "{not json"}
    shown = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "trace", run.run_id, "--json"],
        cwd=ROOT,
        env={**os.environ, **dep.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "unreadable" in shown.stdout
