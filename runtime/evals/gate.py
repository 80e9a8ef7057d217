"""The eval gate a release promotion asks: replay the blocking fixtures of a route under a
candidate config and say whether they all pass, every time.

``run_gate`` is the interface the releases flow calls (``agentrt releases promote``);
``config_transform`` derives the candidate's config (``runtime.releases.config_for``).
A route with no blocking fixture passes (the summary says there was nothing to run).
"""

from __future__ import annotations

from pathlib import Path

from runtime.config import RuntimeConfig
from runtime.endpoints import resolve_endpoints
from runtime.eval_config import DEFAULT_EVALS_DIR
from runtime.evals import fixture as fx
from runtime.evals.replay import ConfigTransform, ReplayEngine, ResultHook
from runtime.evals.report import EvalReport, report_of
from runtime.release_gate import Gate, GateResult
from runtime.releases import config_for
from runtime.settings import Settings
from runtime.wiring import load_registry

#: how many times a gate replays each case (a case must pass every time)
GATE_REPEAT = 3


def evals_dir(config: RuntimeConfig, directory: Path | None = None) -> Path:
    """``directory``, else the file's ``evals.dir``, else ``evals/``."""
    if directory is not None:
        return directory
    return Path(config.evals.dir if config.evals is not None else DEFAULT_EVALS_DIR)


def gate_of(report: EvalReport) -> GateResult:
    return GateResult(
        passed=report.passed,
        summary=report.summary()[:2000],
        cases=len(report.cases),
        failures=report.failures,
        flaky=report.flaky,
    )


def run_gate(
    *,
    config: RuntimeConfig,
    settings: Settings,
    route: str,
    release: str | None,
    config_transform: ConfigTransform | None = None,
    repeat: int = GATE_REPEAT,
    directory: Path | None = None,
    result_hook: ResultHook | None = None,
) -> GateResult:
    """Replay the blocking fixtures of ``route`` (``repeat`` times each) under
    ``config_transform(config, route)``; passed only if each passed every time."""
    fixtures = [
        f for f in fx.load_dir(evals_dir(config, directory)) if f.blocking and f.case.route == route
    ]
    label = f"release {release}" if release else "the current config"
    if not fixtures:
        return GateResult(passed=True, summary=f"no blocking eval for route {route} ({label})")
    engine = ReplayEngine(
        settings=settings,
        endpoints=resolve_endpoints(settings),
        config=config,
        registry=load_registry(config, str(settings.config)),
        config_transform=config_transform,
        result_hook=result_hook,
    )
    gate = gate_of(report_of(engine.run(fixtures, repeat)))
    return gate.model_copy(update={"summary": f"{route} under {label}: {gate.summary}"[:2000]})


def eval_gate(config: RuntimeConfig, settings: Settings, directory: Path | None = None) -> Gate:
    """The gate ``releases promote`` asks: the route's blocking fixtures replayed under the
    candidate release's config (``runtime.releases.config_for``), ``GATE_REPEAT`` times."""

    def gate(route: str, release: str) -> GateResult:
        return run_gate(
            config=config,
            settings=settings,
            route=route,
            release=release,
            config_transform=lambda cfg, r: config_for(cfg, r, release),
            directory=directory,
        )

    return gate
