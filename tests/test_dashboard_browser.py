"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright's Python API through its executable path) logs in with an API key, renders
every panel with data from a real workload (screenshots in docs/screenshots/), and
disables a tool from the page: the running runs are refused that tool at their next step.
States are asserted (stop reasons, steps recorded, calls counted by the tool), never
timings. Without chromium the test skips - under CI=true it fails instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.dashboard_support import Workload, dashboard_deployment, workload_on
from tests.support import Deployment

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PANELS = (
    "active_runs",
    "budget_pressure",
    "policy_decisions",
    "pending_approvals",
    "tool_health",
    "trace_quality",
    "release_versions",
    "eval_status",
    "slos",
)


def _browser_or_skip() -> str:
    chromium = services.chromium_path()
    missing = None
    if chromium is None:
        missing = "Debian's chromium is not installed (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install playwright)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard browser test needs a browser under CI: {missing}")
        pytest.skip(missing)
    assert chromium is not None
    return chromium


@pytest.fixture(scope="module")
def browser_work(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Workload, str]]:
    chromium = _browser_or_skip()
    # one backend is enough here: the HTTP tests run the panels on both
    dep: Deployment = dashboard_deployment(
        "sqlite", redis_url, tmp_path_factory.mktemp("dashb"), request
    )
    try:
        with workload_on(dep) as work:
            yield work, chromium
    finally:
        dep.close()


def test_panels_in_chromium_and_a_tool_disabled_from_the_page(
    browser_work: tuple[Workload, str],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    work, chromium = browser_work
    dep = work.dep
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{work.base}/dashboard")
            assert page.url.endswith("/dashboard/login")  # no session: the login form
            page.fill("input[name=key]", work.keys["admin"])
            page.click("#login-button")
            page.wait_for_url(f"{work.base}/dashboard")
            # the session cookie is not readable by the page's scripts
            assert "agentrt_session" not in page.evaluate("document.cookie")
            for panel in PANELS:
                box = page.locator(f"#panel-{panel}")
                expect(box).to_be_visible()
                box.screenshot(path=str(SHOTS / f"{panel}.png"))
            expect(page.locator("#panel-active_runs")).to_contain_text(work.runs["held_t1"])
            expect(page.locator("#panel-active_runs")).to_contain_text(work.runs["held_t2"])
            approval = page.locator(f"#approval-{work.approval_id}")
            expect(approval).to_contain_text(work.runs["approval"])
            canonical = dep.svc.approvals.get(work.approval_id).canonical_action()
            expect(approval.locator("pre.canonical")).to_have_text(canonical)
            expect(page.locator("#panel-policy_decisions")).to_contain_text("no_closing")
            expect(page.locator("#panel-release_versions")).to_contain_text("v2")
            expect(page.locator("#panel-eval_status")).to_contain_text("promote")

            # the action: disable probe.held, which both held runs call again next step
            row = page.locator('[id="tool-probe.held"]')
            expect(row).to_contain_text("enabled")
            row.get_by_role("button", name="disable probe.held").click()
            page.wait_for_url("**/dashboard?done=*")
            expect(page.locator("#done")).to_contain_text("disable_tool probe.held: None -> True")
            expect(page.locator('[id="tool-probe.held"]')).to_contain_text("disabled")
            page.locator("#panel-tool_health").screenshot(
                path=str(SHOTS / "tool_health_after_disable.png")
            )
            audit = dep.svc.levers.log(limit=1)[0]
            assert (audit["lever"], audit["target"], audit["new"]) == (
                "tool_disabled",
                "probe.held",
                True,
            )
            assert audit["actor"].startswith("dashboard:key:")

            held = [work.runs["held_t1"], work.runs["held_t2"]]
            for hold in work.holds:
                hold.off()
            done = dep.wait_all(held)
            for run_id in held:
                assert done[run_id].stop_reason == "policy_denied:tool_disabled", done[run_id]
                assert [s["step_no"] for s in dep.svc.store.steps(run_id)] == [0, 1]
            assert [h.entered() for h in work.holds] == [1, 1]  # never ran after the flip

            page.goto(f"{work.base}/dashboard/runs/{work.runs['held_t1']}")
            expect(page.locator("#run-stop")).to_have_text("policy_denied:tool_disabled")
            page.screenshot(path=str(SHOTS / "run_page.png"), full_page=True)
        finally:
            browser.close()
