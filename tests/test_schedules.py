"""Scheduled runs: config validation, deterministic fire times, one run per (schedule,
time) however many processes fire it, beat's schedule, and real beat + worker end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import schedstate

from runtime.config import RuntimeConfig, parse_config
from runtime.contract import RunView
from runtime.errors import ConfigError, InvalidRequest
from runtime.schedules import ScheduleFirer, fire_time, next_fire, request_id, statuses
from tasks.app import create_app
from tasks.messages import FIRE_SCHEDULE_TASK, STEP_QUEUE
from tasks.schedules import CronSchedule, beat_schedule
from tests.schedule_tools import REPLY, schedule_config, schedule_deployment
from tests.support import ROOT, Deployment, wait_for

T0 = datetime(2026, 3, 2, 9, 17, 42, tzinfo=UTC)


def parse_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "sched.yaml")
    return info.value.problems


def with_schedule(**fields: Any) -> dict[str, Any]:
    entry = {"cron": "*/5 * * * *", "tenant": "t1", "route": "r.sched", "goal": "report"}
    return schedule_config({"report": {**entry, **fields}})


# --- the deployment file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"cron": "61 * * * *"}, "schedules.report.cron: Value error, '61 * * * *' is not a valid"),
        ({"cron": "* * *"}, "schedules.report.cron: Value error, '* * *' has 3 fields"),
        ({"cron": "0 0 31 2 *"}, "schedules.report.cron: Value error, '0 0 31 2 *' is not a valid"),
        ({"timezone": "Mars/Base"}, "schedules.report.timezone: Value error, 'Mars/Base' is not"),
        ({"tenant": "nobody"}, "schedules.report.tenant: unknown tenant 'nobody' (defined: "),
        ({"route": "r.none"}, "schedules.report.route: unknown route 'r.none' (defined: "),
        # r.refunds serves t1 and t2 only
        (
            {"tenant": "t3", "route": "r.refunds"},
            "schedules.report.tenant: tenant 't3' may not use route 'r.refunds'",
        ),
        ({"goal": "   "}, "schedules.report.goal: Value error, goal must not be blank"),
        ({"input": {"x": float("nan")}}, "schedules.report.input"),
        ({"misfire_grace_s": 0}, "schedules.report.misfire_grace_s: Input should be greater"),
        ({"every": 5}, "schedules.report.every: unknown key (typo?)"),
    ],
)
def test_a_bad_schedule_is_refused_at_load_naming_its_key(
    fields: dict[str, Any], expected: str
) -> None:
    found = parse_problems(with_schedule(**fields))
    assert any(p.replace("Value error, ", "").startswith(expected.replace("Value error, ", ""))
               for p in found), found  # fmt: skip


def test_a_schedule_name_is_checked() -> None:
    data = schedule_config({"bad name": with_schedule()["schedules"]["report"]})
    found = parse_problems(data)
    assert any(p.startswith("schedules.bad name.[key]: String should match") for p in found), found


def config(**fields: Any) -> RuntimeConfig:
    return parse_config(with_schedule(**fields), "sched.yaml")


# --- fire times and firing, on a clock the test sets ---------------------------------


def test_fire_time_is_the_latest_cron_time_not_after_now() -> None:
    s = config().schedules["report"]
    assert fire_time(s, T0) == datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
    assert fire_time(s, datetime(2026, 3, 2, 9, 15, tzinfo=UTC)) == datetime(
        2026, 3, 2, 9, 15, tzinfo=UTC
    )
    assert next_fire(s, T0) == datetime(2026, 3, 2, 9, 20, tzinfo=UTC)
    assert request_id("report", fire_time(s, T0)) == "schedule:report@2026-03-02T09:15:00Z"
    # in the schedule's zone: 9:00 in Paris is 8:00 UTC in winter
    paris = config(cron="0 9 * * *", timezone="Europe/Paris").schedules["report"]
    assert fire_time(paris, T0) == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    seconds = config(cron="*/10 * * * * *").schedules["report"]
    assert fire_time(seconds, T0) == datetime(2026, 3, 2, 9, 17, 40, tzinfo=UTC)


class Recorder:
    """Stands in for the façade's submit in the pure tests: records what was asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kw: Any) -> Any:
        self.calls.append(kw)

        class View:
            run_id = f"run{len(self.calls)}"
            status = "queued"

        return View()


def test_beat_fires_once_within_the_grace_and_skips_older_or_disabled_times() -> None:
    cfg = config(misfire_grace_s=60)
    submit = Recorder()
    clock = [T0]
    firer = ScheduleFirer(schedules=cfg.schedules, submit=submit, clock=lambda: clock[0])
    # 2m42s after 9:15: missed (beat was down), skipped rather than replayed late
    assert firer.fire_due("report").skipped == "missed"
    clock[0] = datetime(2026, 3, 2, 9, 20, 30, tzinfo=UTC)
    fired = firer.fire_due("report")
    assert (fired.skipped, fired.request_id) == (None, "schedule:report@2026-03-02T09:20:00Z")
    assert submit.calls == [
        {
            "tenant": "t1",
            "route": "r.sched",
            "goal": "report",
            "input": {},
            "actor": "schedule:report",
            "request_id": "schedule:report@2026-03-02T09:20:00Z",
        }
    ]
    # an operator may fire a time however late
    late = firer.fire_at("report", datetime(2026, 3, 2, 8, 3, tzinfo=UTC))
    assert late.request_id == "schedule:report@2026-03-02T08:00:00Z"
    with pytest.raises(InvalidRequest, match="has not come yet"):
        firer.fire_at("report", clock[0] + timedelta(minutes=1))
    with pytest.raises(InvalidRequest, match="unknown schedule 'nope' \\(defined: report\\)"):
        firer.fire_due("nope")
    off = ScheduleFirer(schedules=config(enabled=False).schedules, submit=submit)
    assert off.fire_due("report").skipped == "disabled"
    with pytest.raises(InvalidRequest, match="is disabled"):
        off.fire_at("report")
    assert len(submit.calls) == 2


# --- one run per (schedule, time), on real SQL ------------------------------------------


def test_firing_one_time_from_many_threads_gives_one_run(
    backend: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with schedule_deployment(request, backend, redis_url, tmp_path) as dep:
        svc = dep.svc
        at = datetime.now(UTC)
        barrier = threading.Barrier(8)
        views: list[str] = []
        failures: list[BaseException] = []

        def fire() -> None:
            firer = ScheduleFirer(schedules=svc.config.schedules, submit=svc.submit)
            barrier.wait()
            try:
                views.append(str(firer.fire_at("hourly", at).run_id))
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=fire) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(views) == 8 and len(set(views)) == 1
        runs = svc.list_runs(tenant="t1", route="r.sched")
        assert [r.run_id for r in runs] == views[:1]
        run = runs[0]
        assert run.actor_id == "schedule:hourly"
        assert run.execution_mode == "async_job"  # the route's mode
        assert run.request_id == request_id("hourly", fire_time(svc.config.schedules["hourly"], at))


def agentrt(dep: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from runtime.cli.main import main; main()", *args],
        cwd=ROOT,
        env={**os.environ, **dep.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_firing_one_time_give_one_run_and_list_shows_it(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with schedule_deployment(request, "sqlite", redis_url, tmp_path) as dep:
        at = "2026-01-05T10:30:00+00:00"  # fires 10:00
        procs = [agentrt(dep, "schedules", "fire", "hourly", "--at", at, "--json") for _ in "ab"]
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            results.append(json.loads(stdout))
        assert {r["request_id"] for r in results} == {"schedule:hourly@2026-01-05T10:00:00Z"}
        assert len({r["run_id"] for r in results}) == 1
        assert len(dep.svc.list_runs(tenant="t1", route="r.sched")) == 1

        listed = agentrt(dep, "schedules", "list", "--json")
        stdout, stderr = listed.communicate(timeout=120)
        assert listed.returncode == 0, stderr
        (row,) = json.loads(stdout)
        assert (row["name"], row["cron"], row["tenant"], row["route"]) == (
            "hourly", "0 * * * *", "t1", "r.sched",
        )  # fmt: skip
        assert datetime.fromisoformat(row["next_fire"]) > datetime.now(UTC)
        # the latest due time has not fired here: nothing shown for it
        assert row["last_run_id"] is None

        bad = agentrt(dep, "schedules", "fire", "nope")
        _, stderr = bad.communicate(timeout=120)
        assert bad.returncode == 2 and "unknown schedule 'nope'" in stderr


def test_a_time_fired_before_a_changed_file_keeps_its_one_run(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with schedule_deployment(request, "sqlite", redis_url, tmp_path) as dep:
        svc = dep.svc
        at = datetime.now(UTC)
        first = ScheduleFirer(schedules=svc.config.schedules, submit=svc.submit).fire_at(
            "hourly", at
        )
        changed = {"hourly": svc.config.schedules["hourly"].model_copy(update={"goal": "new"})}
        again = ScheduleFirer(schedules=changed, submit=svc.submit).fire_at("hourly", at)
        assert (again.run_id, again.changed_since) == (first.run_id, True)
        assert len(svc.list_runs(tenant="t1", route="r.sched")) == 1


def test_statuses_show_the_run_of_the_latest_due_time(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with schedule_deployment(request, "sqlite", redis_url, tmp_path) as dep:
        svc = dep.svc
        fired = ScheduleFirer(schedules=svc.config.schedules, submit=svc.submit).fire_at("hourly")

        def find(tenant: str, rid: str) -> dict[str, Any] | None:
            held = svc.store.find_admitted(tenant, rid, None)
            return held[0] if held else None

        (status,) = statuses(svc.config.schedules, find, datetime.now(UTC))
        assert (status.last_run_id, status.last_status) == (fired.run_id, "queued")


# --- Celery beat -----------------------------------------------------------------------


def test_beat_schedule_has_one_entry_per_enabled_schedule_due_at_its_cron_times() -> None:
    entry = {"tenant": "t1", "route": "r.sched", "goal": "g", "misfire_grace_s": 30}
    cfg = parse_config(
        schedule_config(
            {
                "a": {**entry, "cron": "*/5 * * * *"},
                "b": {**entry, "cron": "0 * * * *", "enabled": False},
            }
        ),
        "sched.yaml",
    )
    built = beat_schedule(cfg)
    assert list(built) == ["agentrt.schedule.a"]
    a = built["agentrt.schedule.a"]
    assert (a["task"], a["kwargs"], a["options"]) == (
        FIRE_SCHEDULE_TASK, {"name": "a"}, {"queue": STEP_QUEUE, "expires": 30.0},
    )  # fmt: skip
    sched: CronSchedule = a["schedule"]
    now = datetime.now(UTC)
    last_time = fire_time(cfg.schedules["a"], now)
    # run at its latest time: not due until the next one
    due, wait = sched.is_due(last_time)
    assert not due and 0 < wait <= 300
    # last run before its latest time: due now, next check at the following time
    assert sched.is_due(last_time - timedelta(seconds=1)) == schedstate(
        True, pytest.approx(wait, abs=2)
    )


def fired_runs(dep: Deployment) -> list[RunView]:
    return dep.svc.list_runs(tenant="t1", route="r.sched", limit=1000)


def test_the_fire_task_on_a_real_worker_fires_once_per_time(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    hourly = {
        "cron": "0 * * * *",
        "tenant": "t1",
        "route": "r.sched",
        "goal": "hourly report",
        "input": {"script": [REPLY]},
        "misfire_grace_s": 7200,  # the latest hour is always within it
    }
    data = schedule_config({"hourly": hourly})
    with schedule_deployment(request, "sqlite", redis_url, tmp_path, data) as dep:
        dep.start_worker(concurrency=2)
        app = create_app(dep.settings)
        spec = dep.svc.config.schedules["hourly"]
        before = fire_time(spec, datetime.now(UTC))
        # as beat sends it, three times (two beats and a restart's catch-up)
        for _ in range(3):
            app.send_task(FIRE_SCHEDULE_TASK, kwargs={"name": "hourly"}, queue=STEP_QUEUE)
        # a malformed message and an unknown schedule fire nothing and stop nothing
        app.send_task(FIRE_SCHEDULE_TASK, kwargs={"name": 5}, queue=STEP_QUEUE)
        app.send_task(FIRE_SCHEDULE_TASK, kwargs={"name": "nope"}, queue=STEP_QUEUE)
        worker = dep.workers[0]
        wait_for(
            lambda: worker.log().count(f"Task {FIRE_SCHEDULE_TASK}[") >= 10,
            timeout=60,
            message="five fire tasks to run",
        )
        after = fire_time(spec, datetime.now(UTC))
        runs = fired_runs(dep)
        # one run per time: an hour that turned during the test may add the next one
        expected = {request_id("hourly", before), request_id("hourly", after)}
        assert sorted(r.request_id for r in runs) == sorted(expected)
        done = dep.wait_all([r.run_id for r in runs])
        assert {(v.status, v.actor_id) for v in done.values()} == {("succeeded", "schedule:hourly")}
        assert "a fire_schedule message takes name= only" in worker.log()
        assert "unknown schedule 'nope'" in worker.log()


def test_real_beat_processes_fire_each_time_once(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    schedules = {
        "tick": {
            "cron": "*/2 * * * * *",  # seconds resolution: every 2 s
            "tenant": "t1",
            "route": "r.sched",
            "goal": "tick",
            "input": {"script": [REPLY]},
            "misfire_grace_s": 30,
        }
    }
    data = schedule_config(schedules)
    with schedule_deployment(request, "sqlite", redis_url, tmp_path, data) as dep:
        dep.start_worker(concurrency=2)
        beats = [beat_process(dep, tmp_path, i) for i in range(2)]
        try:
            wait_for(lambda: len(fired_runs(dep)) >= 4, timeout=90, message="4 firings")
        finally:
            for proc in beats:
                proc.terminate()
            for proc in beats:
                proc.wait(timeout=30)
        logs = "\n".join((tmp_path / f"beat{i}.log").read_text() for i in range(2))
        assert "Sending due task agentrt.schedule.tick" in logs, logs[-3000:]
        runs = fired_runs(dep)
        by_request = {r.request_id for r in runs}
        # two beats sent every time: still one run per fire time, each on an even second
        assert len(by_request) == len(runs)
        fired = dep.workers[0].log().count("schedule tick: {")
        assert fired > len(runs), "the second beat's firings should have found the runs"
        for r in runs:
            assert r.request_id.startswith("schedule:tick@")
            assert int(r.request_id[-3:-1]) % 2 == 0
            assert r.actor_id == "schedule:tick"
            assert r.execution_mode == "async_job"
        done = dep.wait_all([r.run_id for r in runs])
        assert {v.status for v in done.values()} == {"succeeded"}


def beat_process(dep: Deployment, tmp_path: Path, index: int) -> subprocess.Popen[bytes]:
    """``agentrt beat`` (execs ``celery beat``), its output in ``beat<index>.log``."""
    with open(tmp_path / f"beat{index}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from runtime.cli.main import main; main()", "beat"],
            cwd=ROOT,
            env={**os.environ, **dep.env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
