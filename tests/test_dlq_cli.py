"""``agentrt dlq``: dead letters for an operator, against real Redis and real SQL.

Commands run in-process through Typer's ``CliRunner`` with the deployment's ``AGENTRT_*``
variables, as in tests/test_cli.py. The deployments have no worker, so a submitted run
stays queued (nothing is dispatched: no capacity); entries are made through the real
``svc.dead_letters`` (``dead_letter_step`` stops the run as a worker would, ``poison``
keeps an undecodable message).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from runtime.cli import common, dlq, params
from runtime.cli.main import app
from runtime.dead_letters import CLASSES
from tasks.messages import STEP_QUEUE
from tests.support import Deployment

REPLY = {"type": "reply", "text": "ok"}
TRACEBACK = 'Traceback (most recent call last):\n  File "tools.py", line 9\nBackendDown: 503'


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["dlq", *args], input=input, env={"COLUMNS": "250"})


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def use_env(dep: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    return dep


@pytest.fixture
def env(fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A private deployment (SQLite, own namespace, no worker), its settings in the env."""
    return use_env(fresh_deployment, monkeypatch)


def dead_letter(
    dep: Deployment,
    *,
    tenant: str = "t1",
    dl_class: str = "exhausted",
    error_type: str = "BackendDown",
) -> tuple[str, str]:
    """A queued run stopped at step 0 as a worker would stop it; (run id, entry id)."""
    run = dep.submit_script([REPLY], tenant=tenant)
    entry_id = dep.svc.dead_letters.dead_letter_step(
        run.run_id,
        0,
        dl_class,
        error_type=error_type,
        error="backend answered 503",
        traceback=TRACEBACK,
    )
    assert entry_id is not None
    return run.run_id, entry_id


def poison(dep: Deployment) -> str:
    return dep.svc.dead_letters.poison(
        queue=STEP_QUEUE,
        error_type="undecodable",
        error="body is not JSON",
        message={"raw": "garbage"},
    )


def ids_of(rows: list[dict[str, Any]]) -> set[str]:
    return {row["id"] for row in rows}


def open_counter(dep: Deployment) -> int:
    return int(dep.svc.redis.get(dep.svc.keys.dlq_open(STEP_QUEUE)) or 0)


def entry(dep: Deployment, entry_id: str) -> dict[str, Any]:
    return dep.svc.dead_letters.show(entry_id)


def test_the_class_choices_are_the_runtime_classes() -> None:
    assert tuple(c.value for c in dlq.DlClass) == CLASSES


# --- list ----------------------------------------------------------------------------


@pytest.fixture
def env_on(fresh_deployment_on: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """Like ``env`` on each SQL backend (times compare differently in SQLite and Postgres)."""
    return use_env(fresh_deployment_on, monkeypatch)


def test_list_filters_and_json(env_on: Deployment) -> None:
    dep = env_on
    run1, exhausted = dead_letter(dep, tenant="t1")
    _, timed_out = dead_letter(dep, tenant="t2", dl_class="timeout", error_type="TimeLimit")
    bad = poison(dep)

    rows = as_json(cli("list", "--json"))
    assert ids_of(rows) == {exhausted, timed_out, bad}
    row = next(r for r in rows if r["id"] == exhausted)
    assert row["class"] == "exhausted" and row["status"] == "open"
    assert (row["tenantId"], row["route"], row["runId"], row["step"]) == ("t1", "r.basic", run1, 0)
    assert row["errorType"] == "BackendDown" and row["attemptCount"] == 1
    assert row["queue"] == STEP_QUEUE and row["lastFailedAt"].endswith("+00:00")

    def listed(*args: str) -> set[str]:
        return ids_of(as_json(cli("list", "--json", *args)))

    assert listed("--class", "exhausted") == {exhausted}
    assert listed("--class", "poison") == {bad}
    assert listed("--tenant", "t2") == {timed_out}
    assert listed("--run", run1) == {exhausted}
    assert listed("--route", "r.basic") == {exhausted, timed_out}
    assert listed("--error-type", "undecodable") == {bad}
    assert listed("--queue", STEP_QUEUE) == {exhausted, timed_out, bad}
    assert listed("--queue", "elsewhere") == set()
    assert listed("--since", "1h") == {exhausted, timed_out, bad}
    assert listed("--until", "1h") == set()
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    assert listed("--since", later) == set()  # naive ISO means UTC
    assert listed("--until", later + "Z") == {exhausted, timed_out, bad}
    assert listed("--since", "2h", "--until", later, "--tenant", "t1") == {exhausted}
    assert listed("--status", "retried") == set()
    assert listed("--status", "all", "--class", "timeout") == {timed_out}
    assert len(as_json(cli("list", "--json", "--limit", "2"))) == 2

    # for people: one row per entry with its class, tenant, run and error type
    table = cli("list")
    assert table.exit_code == 0, table.output
    for needle in (exhausted, timed_out, bad, run1, "BackendDown", "undecodable", "timeout"):
        assert needle in table.stdout
    assert "no open dead letters match" in cli("list", "--tenant", "nobody").stdout


def test_list_in_a_narrow_terminal_keeps_ids_whole(env: Deployment) -> None:
    run_id, entry_id = dead_letter(env)
    result = CliRunner().invoke(app, ["dlq", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert entry_id in result.stdout and run_id in result.stdout


def test_bad_filter_values_are_named(env: Deployment) -> None:
    result = cli("list", "--class", "bogus")
    assert result.exit_code == 2
    assert "'bogus'" in result.stderr and "exhausted" in result.stderr

    result = cli("list", "--since", "last tuesday")
    assert result.exit_code == 2
    assert "--since" in result.stderr and "'last tuesday'" in result.stderr
    assert "30m" in result.stderr  # says what would have worked

    result = cli("list", "--until", "2025-13-45")
    assert result.exit_code == 2 and "'2025-13-45'" in result.stderr

    result = cli("list", "--status", "gone")
    assert result.exit_code == 2 and "'gone'" in result.stderr

    result = cli("list", "--since", "1h", "--until", "2h")
    assert result.exit_code == 2 and "must be before --until" in result.stderr

    result = cli("retry", "--class", "exhausted", "--rate", "fast")
    assert result.exit_code == 2 and "'fast'" in result.stderr


def test_parse_when_and_rate() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert params.parse_when("30m", now) == now - timedelta(minutes=30)
    assert params.parse_when("1h30m", now) == now - timedelta(minutes=90)
    assert params.parse_when("7d", now) == now - timedelta(days=7)
    assert params.parse_when("2025-01-31T10:00:00+02:00") == datetime(2025, 1, 31, 8, tzinfo=UTC)
    assert params.parse_when("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert params.parse_rate("5/s") == 5 and params.parse_rate("120/m") == 2
    assert params.parse_rate("0.5") == 0.5


# --- show ----------------------------------------------------------------------------


def test_show_has_what_an_operator_needs(env: Deployment) -> None:
    run_id, entry_id = dead_letter(env)
    run = env.svc.get(run_id)

    data = as_json(cli("show", entry_id, "--json"))
    assert data["id"] == entry_id and data["status"] == "open" and data["class"] == "exhausted"
    assert (data["runId"], data["tenantId"], data["route"], data["step"]) == (
        run_id,
        "t1",
        "r.basic",
        0,
    )
    assert data["traceId"] == run.trace_id and data["versionSet"]["model"]
    assert data["message"]["kwargs"]["run_id"] == run_id  # the step's message
    assert data["errorType"] == "BackendDown" and data["error"] == "backend answered 503"
    assert data["traceback"] == TRACEBACK
    assert len(data["attempts"]) == data["attemptCount"] == 1
    assert data["attempts"][0]["error_type"] == "BackendDown"
    assert data["firstFailedAt"] <= data["lastFailedAt"]
    assert data["run"] == {
        "runId": run_id,
        "exists": True,
        "status": "failed",
        "stopReason": "dead_lettered:exhausted",
        "nextStep": 0,
    }

    text = cli("show", entry_id).stdout
    for needle in (entry_id, run_id, run.trace_id, "BackendDown: 503", "dead_lettered:exhausted"):
        assert needle in text
    assert "attempt history" in text and "original message" in text
    assert f"agentrt dlq retry {entry_id}" in text

    bad = poison(env)
    text = cli("show", bad).stdout
    assert '"raw": "garbage"' in text and "undecodable" in text
    assert f"agentrt dlq purge {bad}" in text and "agentrt dlq retry" not in text


def test_show_an_unknown_id_fails(env: Deployment) -> None:
    result = cli("show", "nope")
    assert result.exit_code == 1
    assert "no dead letter with id 'nope'" in result.stderr


# --- retry ---------------------------------------------------------------------------


def test_retry_dry_run_changes_nothing(env: Deployment) -> None:
    run_id, entry_id = dead_letter(env)
    bad = poison(env)

    data = as_json(cli("retry", "--all", "--dry-run", "--json"))
    assert data["dryRun"] is True and data["matched"] == 2
    assert data["retried"] == [entry_id] and set(data["skipped"]) == {bad}

    text = cli("retry", "--class", "exhausted", "--dry-run").stdout
    assert "would retry 1 of 1 matching dead letter" in text and "nothing changed" in text
    assert entry_id in text and f"run {run_id} would resume at step 0" in text

    assert env.svc.get(run_id).status == "failed"
    assert entry(env, entry_id)["status"] == "open"
    assert env.svc.dead_letters.store.audit_log() == []
    assert open_counter(env) == 2


def test_retry_reopens_the_run_and_leaves_an_audit_record(env: Deployment) -> None:
    run_id, entry_id = dead_letter(env)
    _, other = dead_letter(env, tenant="t2")
    assert open_counter(env) == 2

    result = cli("retry", entry_id, "--actor", "ops:ann")
    assert result.exit_code == 0, result.output
    assert "retried 1 of 1" in result.stdout and f"run {run_id} resumes at step 0" in result.stdout

    run = env.svc.get(run_id)
    assert run.status == "queued" and run.stop_reason is None
    assert "dead_letter_retried" in [e.kind for e in env.svc.trace(run_id)]
    retried = entry(env, entry_id)
    assert retried["status"] == "retried" and retried["resolved_by"] == "ops:ann"
    assert retried["retry_count"] == 1
    assert entry(env, other)["status"] == "open"  # only the named one
    assert open_counter(env) == 1
    (audit,) = env.svc.dead_letters.store.audit_log()
    assert (audit["actor"], audit["action"], audit["count"]) == ("ops:ann", "dlq.retry", 1)
    assert audit["ids"] == [entry_id]

    # the audit command shows it; the default actor is the user at the CLI
    rows = as_json(cli("audit", "--json"))
    assert [(r["actor"], r["action"], r["count"]) for r in rows] == [("ops:ann", "dlq.retry", 1)]
    assert "ops:ann" in cli("audit").stdout and "dlq.retry" in cli("audit").stdout

    # a second retry of the same entry is reported, not silently ignored
    again = as_json(cli("retry", entry_id, "--json"))
    assert again["retried"] == [] and again["skipped"] == {entry_id: "entry is retried"}

    # a filter retries the rest, under the default actor
    data = as_json(cli("retry", "--tenant", "t2", "--rate", "50/s", "--json"))
    assert data["retried"] == [other] and data["ratePerS"] == 50
    assert env.svc.get(entry(env, other)["run_id"]).status == "queued"
    assert as_json(cli("audit", "--json"))[0]["actor"] == common.default_actor()


def test_retry_of_a_poison_message_is_skipped_with_a_reason(env: Deployment) -> None:
    bad = poison(env)
    result = cli("retry", bad)
    assert result.exit_code == 0, result.output
    assert "retried 0 of 1" in result.stdout and "skipped 1" in result.stdout
    assert bad in result.stdout and "purge it" in result.stdout
    assert entry(env, bad)["status"] == "open"
    assert open_counter(env) == 1


def test_retry_with_an_unknown_id_changes_nothing(env: Deployment) -> None:
    _, entry_id = dead_letter(env)
    result = cli("retry", entry_id, "missing1")
    assert result.exit_code == 1 and "'missing1'" in result.stderr
    assert entry(env, entry_id)["status"] == "open"


def test_bulk_operations_need_ids_a_filter_or_all(env: Deployment) -> None:
    run_id, entry_id = dead_letter(env)
    for command in ("retry", "purge"):
        result = cli(command)
        assert result.exit_code == 2, result.output
        assert "--all" in result.stderr and f"refusing to {command}" in result.stderr
    assert entry(env, entry_id)["status"] == "open"
    assert env.svc.get(run_id).status == "failed"

    # --limit narrows nothing: still refused
    assert cli("retry", "--limit", "1").exit_code == 2
    data = as_json(cli("retry", "--all", "--json"))
    assert data["retried"] == [entry_id]
    assert env.svc.get(run_id).status == "queued"


# --- purge ---------------------------------------------------------------------------


def test_purge_asks_for_confirmation(env: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = poison(env), poison(env)

    # no terminal and no --yes: refused, nothing purged
    result = cli("purge", "--class", "poison")
    assert result.exit_code == 2
    assert "--yes" in result.stderr and "2 dead letters" in result.stderr
    assert entry(env, first)["status"] == "open"

    # at a terminal it asks, showing the count; "no" purges nothing
    monkeypatch.setattr(common, "interactive", lambda: True)
    result = cli("purge", "--class", "poison", "--actor", "ops:bo", input="n\n")
    assert result.exit_code == 1
    assert "Purge 2 open dead letters?" in result.stderr and "nothing purged" in result.stderr
    assert {entry(env, i)["status"] for i in (first, second)} == {"open"}
    assert env.svc.dead_letters.store.audit_log() == []

    result = cli("purge", "--class", "poison", "--actor", "ops:bo", input="y\n")
    assert result.exit_code == 0, result.output
    assert "purged 2 of 2" in result.stdout
    assert {entry(env, i)["status"] for i in (first, second)} == {"purged"}
    (audit,) = env.svc.dead_letters.store.audit_log()
    assert (audit["actor"], audit["action"], audit["count"]) == ("ops:bo", "dlq.purge", 2)
    assert audit["filter"]["dl_class"] == "poison"
    assert open_counter(env) == 0


def test_purge_yes_dry_run_and_ids(env: Deployment) -> None:
    run_id, exhausted = dead_letter(env)
    bad = poison(env)

    data = as_json(cli("purge", bad, "--dry-run", "--json"))
    assert data == {"matched": 1, "purged": [bad], "skipped": {}, "dryRun": True}
    assert entry(env, bad)["status"] == "open"

    result = cli("purge", bad, "--yes", "--actor", "ops:cy")
    assert result.exit_code == 0, result.output
    assert "purged 1 of 1" in result.stdout and bad in result.stdout
    purged = entry(env, bad)
    assert purged["status"] == "purged" and purged["resolved_by"] == "ops:cy"
    assert entry(env, exhausted)["status"] == "open"

    # purging it again: reported as already purged
    data = as_json(cli("purge", bad, "--yes", "--json"))
    assert data == {
        "matched": 1,
        "purged": [],
        "skipped": {bad: "entry is purged"},
        "dryRun": False,
    }

    actions = [(r["actor"], r["action"], r["count"]) for r in as_json(cli("audit", "--json"))]
    assert actions == [("ops:cy", "dlq.purge", 1)]
    # a purged step's run stays stopped; the entry is kept (with who and when) until retention
    assert env.svc.get(run_id).status == "failed"


def test_a_long_purge_is_pinned_by_time_and_count(
    env: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # past PIN_IDS_MAX ids, a confirmed purge is pinned to the preview's time and count
    monkeypatch.setattr(dlq, "PIN_IDS_MAX", 1)
    entries = [poison(env) for _ in range(3)]
    data = as_json(cli("purge", "--class", "poison", "--limit", "2", "--yes", "--json"))
    assert data["matched"] == 2 and len(data["purged"]) == 2
    assert {entry(env, i)["status"] for i in entries} == {"open", "purged"}
    (audit,) = env.svc.dead_letters.store.audit_log()
    assert audit["count"] == 2 and "until" in audit["filter"]
    assert as_json(cli("stats", "--json"))["open"] == 1


# --- stats ---------------------------------------------------------------------------


def test_stats_counts_open_entries_and_the_redis_counter(env: Deployment) -> None:
    empty = as_json(cli("stats", "--json"))
    assert empty["open"] == 0 and empty["queues"] == []
    assert empty["counters"][STEP_QUEUE]["open"] == 0

    dead_letter(env)
    dead_letter(env, tenant="t2")
    _, timed_out = dead_letter(env, dl_class="timeout", error_type="TimeLimit")
    poison(env)

    data = as_json(cli("stats", "--json"))
    assert data["open"] == 4
    by_class = {(r["queue"], r["class"]): r["open"] for r in data["queues"]}
    assert by_class == {
        (STEP_QUEUE, "exhausted"): 2,
        (STEP_QUEUE, "timeout"): 1,
        (STEP_QUEUE, "poison"): 1,
    }
    assert all(r["oldest"] <= r["newest"] for r in data["queues"])
    counter = data["counters"][STEP_QUEUE]
    ns = env.settings.namespace
    assert counter == {
        "open": 4,
        "key": f"{ns}:dlq:{STEP_QUEUE}:open",
        "stream": f"{ns}:dlq:{STEP_QUEUE}",
        "streamLength": 4,
    }

    text = cli("stats").stdout
    assert "open dead letters 4" in text and "exhausted" in text and "timeout" in text
    assert f"{ns}:dlq:{STEP_QUEUE}:open = 4" in text and "XLEN 4" in text

    as_json(cli("retry", timed_out, "--json"))
    data = as_json(cli("stats", "--json"))
    assert data["open"] == 3 and data["counters"][STEP_QUEUE]["open"] == 3
    assert (STEP_QUEUE, "timeout") not in {(r["queue"], r["class"]) for r in data["queues"]}
