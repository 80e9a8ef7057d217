"""``agentrt slo report`` and ``agentrt evidence`` over runs a real prefork worker ran, on
SQLite and PostgreSQL; then a terminal run without a stop reason and a side effect without
a policy decision planted directly in SQL, which the report must name (and exit 1)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, select
from typer.testing import CliRunner, Result

from runtime.cli.main import app
from runtime.config import SLO_KINDS, parse_config
from runtime.errors import ConfigError
from runtime.store.db import utcnow
from runtime.store.tables import effects_t, runs_t
from tests.support import ROOT, Deployment

USAGE = {"input_tokens": 100, "output_tokens": 20}
TEST_CONFIG = ROOT / "tests" / "config" / "runtime.yaml"


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def update(ticket: str) -> dict[str, Any]:
    args = {"ticket_id": ticket, "status": "pending"}
    return {"type": "tool_call", "tool": "tickets.update", "args": args, "usage": USAGE}


def reply() -> dict[str, Any]:
    return {"type": "reply", "text": "done", "usage": USAGE}


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["slos"]}


def copy_run(engine: Any, run_id: str, stop_reason: str | None) -> dict[str, Any]:
    """A copy of a run's row under a new id, ended with ``stop_reason``."""
    with engine.connect() as conn:
        query = select(runs_t).where(runs_t.c.run_id == run_id)
        row = dict(conn.execute(query).mappings().one())
    planted = uuid.uuid4().hex
    now = utcnow()
    row.update(
        run_id=planted,
        request_id=f"planted-{planted}",
        idempotency_key=None,
        status="succeeded",
        stop_reason=stop_reason,
        created_at=now,
        updated_at=now,
    )
    return row


def plant(dep: Deployment, refund_run: str, basic_run: str) -> tuple[str, str]:
    """A copy of the refund run, ended without a stop reason (and so without trace
    events); a copy of the basic run ended with a generic "done"; and a side effect of
    the basic run with no policy decision for its call."""
    engine = dep.svc.store.engine
    row = copy_run(engine, refund_run, None)
    generic = copy_run(engine, basic_run, "done")
    now = utcnow()
    effect = {
        "idempotency_key": f"{basic_run}:99:0",
        "run_id": basic_run,
        "tenant_id": "t1",
        "step_no": 99,
        "tool": "tickets.update",
        "side_effect_class": "write",
        "status": "succeeded",
        "args_digest": "0" * 64,
        "started_at": now,
        "finished_at": now,
    }
    with engine.begin() as conn:
        conn.execute(insert(runs_t), [row, generic])
        conn.execute(insert(effects_t), [effect])
    return row["run_id"], generic["run_id"]


def test_slo_report_flags_planted_gaps_and_evidence_maps_the_deployment(
    fresh_deployment_on: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = fresh_deployment_on
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    dep.start_worker(concurrency=1)
    refund = dep.submit_script([update("T-slo-1"), reply()], route="r.refunds")
    basic = dep.submit_script([update("T-slo-2"), reply()], route="r.basic")
    done = dep.wait_all([refund.run_id, basic.run_id])
    assert {v.status for v in done.values()} == {"succeeded"}

    # the worker's runs meet every SLO that has data
    result = cli("slo", "report", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    slos = by_name(report)
    assert set(slos) == set(SLO_KINDS) and report["missed"] == []
    for kind in ("trace_coverage_high_risk", "decision_coverage_side_effects"):
        assert slos[kind]["status"] == "met" and slos[kind]["measured"] == 100, slos[kind]
    assert slos["stop_reason_completeness"]["status"] == "met"
    assert slos["cost_per_completed_run"]["status"] == "met"
    assert slos["eval_gate_health"]["status"] == "no data"
    assert {s["owner"] for s in slos.values()} == {"unassigned"}

    planted, generic = plant(dep, refund.run_id, basic.run_id)

    result = cli("slo", "report", "--json")
    assert result.exit_code == 1, result.output
    slos = by_name(json.loads(result.stdout))
    assert slos["stop_reason_completeness"]["status"] == "missed"
    assert set(slos["stop_reason_completeness"]["offenders"]) == {planted, generic}
    assert slos["decision_coverage_side_effects"]["status"] == "missed"
    assert slos["decision_coverage_side_effects"]["offenders"] == [basic.run_id]
    # the planted high-risk run has neither its admission nor its stop event
    assert slos["trace_coverage_high_risk"]["offenders"] == [planted]
    assert slos["trace_coverage_high_risk"]["measured"] == 50

    people = cli("slo", "report", "--since", "1h")
    assert people.exit_code == 1, people.output
    assert planted in people.stdout and basic.run_id in people.stdout
    assert "missed" in people.stdout

    # one route: the run without a reason is a refund; the basic route's are named
    only_basic = cli("slo", "report", "--route", "r.basic", "--json")
    assert only_basic.exit_code == 1, only_basic.output
    slos = by_name(json.loads(only_basic.stdout))
    assert slos["stop_reason_completeness"]["offenders"] == [generic]
    assert slos["decision_coverage_side_effects"]["offenders"] == [basic.run_id]
    assert slos["trace_coverage_high_risk"]["status"] == "no data"

    # a window that starts in the future is bad input, as is a --since that is no time
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert cli("slo", "report", "--since", future).exit_code == 2
    bad = cli("slo", "report", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "--since" in bad.output
    unknown = cli("slo", "report", "--route", "r.nope")
    assert unknown.exit_code == 2 and "r.nope" in unknown.output

    # the evidence map: the route table and the rules of the deployment's config
    evidence = cli("evidence", "--json")
    assert evidence.exit_code == 0, evidence.output
    data = json.loads(evidence.stdout)
    routes = {r["route"]: r for r in data["admission"]["routes"]}
    assert set(routes) == set(dep.svc.config.routes)
    assert routes["r.refunds"]["task_class"] == "billing"
    assert routes["r.refunds"]["risk_class"] == "high"
    assert routes["r.refunds"]["tenant_scope"] == ["t1", "t2"]
    rule_ids = [r.id for r in dep.svc.config.policy.rules]
    assert [r["id"] for r in data["policy"]["rules"]] == rule_ids
    assert data["admission"]["runs_by_status"]["r.basic"] == {"succeeded": 2}
    assert {"admission", "stop"} <= set(data["observability"]["events_recorded"])
    tools = {t["tool"]: t for t in data["tools"]}
    assert tools["payments.refund"]["side_effect"] == "irreversible"
    assert "agentrt runs cancel" in [r["command"] for r in data["recovery"]["runbook"]]
    assert data["state"]["contract_fields"][:2] == ["runId", "traceId"]

    people = cli("evidence", "--route", "r.refunds")
    assert people.exit_code == 0, people.output
    assert "r.refunds" in people.stdout and "billing" in people.stdout
    refund_rules = [r["id"] for r in data["policy"]["rules"] if "r.basic" not in str(r["match"])]
    for rule_id in refund_rules[:2]:
        assert rule_id[:10] in people.stdout
    assert cli("evidence", "--route", "r.nope").exit_code == 2


def _config(slos: Any, **route_extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TEST_CONFIG.read_text())
    data["slos"] = slos
    data["routes"]["r.basic"].update(route_extra)
    return data


def test_slos_in_config_name_their_bad_keys_and_default_when_absent() -> None:
    plain = yaml.safe_load(TEST_CONFIG.read_text())
    listed = parse_config(plain).slo_list()
    assert [k for _, k, _, _ in listed] == list(SLO_KINDS)
    assert {e.owner for *_, e in listed} == {"unassigned"}

    good = parse_config(
        _config(
            {
                "stop_reason_completeness": {"owner": "runtime-oncall"},
                "refund_cost": {
                    "kind": "cost_per_completed_run",
                    "target": 150,
                    "owner": "pay",
                    "routes": ["r.ref*"],
                },
            },
            approval_sla_s=600,
        )
    )
    assert [(n, k, t) for n, k, t, _ in good.slo_list()] == [
        ("stop_reason_completeness", "stop_reason_completeness", 100.0),
        ("refund_cost", "cost_per_completed_run", 150.0),
    ]
    assert good.routes["r.basic"].approval_sla_s == 600

    with pytest.raises(ConfigError) as exc:
        parse_config(
            _config(
                {
                    "mystery": {"target": 5},
                    "stop_reason_completeness": {"target": 150, "colour": "red"},
                    "c": {"kind": "cost_per_completed_run", "routes": ["nope*"]},
                    "t": {"kind": "uptime"},
                },
                approval_sla_s=0,
            )
        )
    text = "\n".join(exc.value.problems)
    assert "slos.mystery.kind" in text
    assert "slos.stop_reason_completeness.colour: unknown key" in text
    assert "slos.stop_reason_completeness.target" in text
    assert "slos.c.routes: 'nope*' matches no route" in text
    assert "slos.t.kind" in text
    assert "routes.r.basic.approval_sla_s" in text


def test_approval_latency_cost_and_tenant_scope_from_planted_rows(
    fresh_deployment: Deployment,
) -> None:
    """No worker: runs admitted, then ended, charged and waited on by hand in SQL, so the
    latency and cost figures are exact."""
    from sqlalchemy import update as sql_update

    from runtime.store.tables import approvals_t, spend_t
    from runtime.wiring import build_slo_reporter

    dep = fresh_deployment
    config = parse_config(
        _config(
            {
                "approval_latency_p95": {"owner": "ops", "routes": ["r.basic"]},
                "cost_per_completed_run": {"target": 100, "owner": "finance"},
                "stop_reason_completeness": {},
            },
            approval_sla_s=60,
        )
    )
    runs = [dep.submit_script([reply()], tenant=t).run_id for t in ("t1", "t1", "t2")]
    engine = dep.svc.store.engine
    now = utcnow()
    charges = zip(runs, ("t1", "t1", "t2"), (900_000, 1_500_000, 100_000), strict=True)
    with engine.begin() as conn:
        conn.execute(
            sql_update(runs_t)
            .where(runs_t.c.run_id.in_(runs))
            .values(status="succeeded", stop_reason="completed")
        )
        # t1 spends 0.9 and 1.5 USD on two completed runs: 1.2 per run against 1.0
        conn.execute(
            insert(spend_t),
            [
                {"run_id": r, "tenant_id": t, "route": "r.basic", "step_no": 0, "day": "d",
                 "cost_micro_usd": c, "at": now}
                for r, t, c in charges
            ],
        )  # fmt: skip
        waits = [  # (seconds waited, decided?) against an SLA of 60 s
            (30, True),
            (90, True),
            (120, False),  # still open and past its SLA: late
            (10, False),  # still open, inside its SLA: not counted yet
        ]
        conn.execute(
            insert(approvals_t),
            [
                {"approval_id": uuid.uuid4().hex, "tenant_id": "t1", "run_id": runs[i % 2],
                 "step_no": i, "route": "r.basic", "tool": "tickets.update",
                 "tool_version": "1", "policy_version": "p", "digest": "0" * 64,
                 "rule_id": "r", "effect": "require_approval", "submitted_by": "a",
                 "status": "approved" if decided else "pending",
                 "requested_at": now - timedelta(seconds=waited),
                 "expires_at": now + timedelta(hours=1),
                 "decided_at": now if decided else None}
                for i, (waited, decided) in enumerate(waits)
            ],
        )  # fmt: skip
    reporter = build_slo_reporter(config, engine)
    since = now - timedelta(hours=1)
    slos = {r.name: r for r in reporter.report(since=since).results}
    latency = slos["approval_latency_p95"]
    assert latency.status == "missed" and latency.owner == "ops"
    assert latency.measured == pytest.approx(33.33, abs=0.01)  # 1 of 3 within the SLA
    assert set(latency.offenders) == {runs[0], runs[1]}
    cost = slos["cost_per_completed_run"]
    # t1 and t2 together: 2.5 USD over 3 completed runs of a 1 USD budget
    assert cost.status == "met" and cost.measured == pytest.approx(83.33, abs=0.01)
    t1 = {r.name: r for r in reporter.report(since=since, tenant_id="t1").results}
    assert t1["cost_per_completed_run"].measured == 120
    assert t1["cost_per_completed_run"].status == "missed"
    assert t1["cost_per_completed_run"].offenders == [runs[1], runs[0]]
    t2 = {r.name: r for r in reporter.report(since=since, tenant_id="t2").results}
    assert t2["cost_per_completed_run"].measured == 10
    assert t2["cost_per_completed_run"].status == "met"
    assert t2["approval_latency_p95"].status == "no data"
    assert [r.name for r in reporter.report(since=since).missed] == ["approval_latency_p95"]


def test_eval_gate_health_counts_the_release_gates_flaky_verdicts(
    fresh_deployment: Deployment,
) -> None:
    """Promotions' gate verdicts, planted in ``release_audit`` as ``Releases.promote``
    stores them: a refusal is the gate working; a flaky case is the gate unhealthy."""
    from runtime.store.releases import audit_t
    from runtime.wiring import build_slo_reporter

    engine = fresh_deployment.svc.store.engine
    config = parse_config(_config({"eval_gate_health": {"owner": "release-eng"}}))
    reporter = build_slo_reporter(config, engine)
    now = utcnow()
    since = now - timedelta(hours=1)
    [before] = reporter.report(since=since).results
    assert before.status == "no data"

    def verdict(release: str, passed: bool, flaky: int) -> dict[str, Any]:
        gate = {"passed": passed, "summary": "s", "cases": 3, "failures": 0, "flaky": flaky}
        return {"namespace": "n", "route": "r.basic", "action": "promote", "release": release,
                "gate": gate, "actor": "a", "at": now}  # fmt: skip

    with engine.begin() as conn:
        conn.execute(
            insert(audit_t),
            [verdict("v2", True, 0), verdict("v3", False, 0), verdict("v4", False, 1)],
        )
    [health] = reporter.report(since=since).results
    assert health.status == "missed" and health.owner == "release-eng"
    assert health.measured == pytest.approx(66.67, abs=0.01)
    assert health.offenders == ["r.basic:v4"]
    # verdicts before the window are not counted
    with engine.begin() as conn:
        conn.execute(audit_t.update().values(at=now - timedelta(hours=2)))
    [later] = reporter.report(since=since).results
    assert later.status == "no data"
