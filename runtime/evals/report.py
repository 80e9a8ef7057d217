"""What a set of replays comes to: per case pass, fail or flaky (it passed and failed
across repeats: reported as such, never hidden), whether the blocking set passes, and the
JUnit XML a CI job reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.evals.outcome import summary
from runtime.evals.replay import Replay

Verdict = Literal["pass", "fail", "flaky"]


@dataclass(frozen=True)
class CaseResult:
    name: str
    route: str
    blocking: bool
    verdict: Verdict
    expected: str
    got: str
    #: why the failing replays failed (the first of each distinct reason)
    reasons: tuple[str, ...]
    runs: int
    passes: int


def case_result(replays: list[Replay]) -> CaseResult:
    fixture = replays[0].fixture
    passes = sum(r.passed for r in replays)
    verdict: Verdict = "pass" if passes == len(replays) else "fail" if passes == 0 else "flaky"
    reasons: list[str] = []
    for r in replays:
        for reason in ([r.error] if r.error else []) + r.diffs:
            if reason not in reasons:
                reasons.append(reason)
    gots = []
    for r in replays:
        text = summary(r.got) if r.got is not None else "error"
        if text not in gots:
            gots.append(text)
    return CaseResult(
        name=fixture.name,
        route=fixture.case.route,
        blocking=fixture.blocking,
        verdict=verdict,
        expected=summary(fixture.expected),
        got=" | ".join(gots),
        reasons=tuple(reasons),
        runs=len(replays),
        passes=passes,
    )


@dataclass(frozen=True)
class EvalReport:
    cases: list[CaseResult]

    @property
    def failures(self) -> int:
        return sum(c.verdict == "fail" for c in self.cases)

    @property
    def flaky(self) -> int:
        return sum(c.verdict == "flaky" for c in self.cases)

    @property
    def blocking_failed(self) -> list[CaseResult]:
        """Blocking cases that did not pass every time (a flaky one fails a gate)."""
        return [c for c in self.cases if c.blocking and c.verdict != "pass"]

    @property
    def passed(self) -> bool:
        return not self.blocking_failed

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        blocking = sum(c.blocking for c in self.cases)
        return (
            f"evals {verdict}: {len(self.cases)} case(s), {blocking} blocking; "
            f"{self.failures} failed, {self.flaky} flaky"
            + (
                f"; blocking not passing: {', '.join(c.name for c in self.blocking_failed)}"
                if self.blocking_failed
                else ""
            )
        )


def report_of(replays: list[list[Replay]]) -> EvalReport:
    return EvalReport([case_result(r) for r in replays if r])


def write_junit(report: EvalReport, path: Path) -> None:
    """One ``testcase`` per fixture; a failed or flaky case carries a ``failure`` (flaky
    ones say so in its type), non-blocking ones are marked in their properties."""
    suite = ET.Element(
        "testsuite",
        name="agentrt-evals",
        tests=str(len(report.cases)),
        failures=str(report.failures + report.flaky),
        errors="0",
    )
    for case in report.cases:
        element = ET.SubElement(suite, "testcase", classname=f"evals.{case.route}", name=case.name)
        props = ET.SubElement(element, "properties")
        ET.SubElement(props, "property", name="blocking", value=str(case.blocking).lower())
        ET.SubElement(props, "property", name="verdict", value=case.verdict)
        ET.SubElement(props, "property", name="passes", value=f"{case.passes}/{case.runs}")
        if case.verdict != "pass":
            failure = ET.SubElement(
                element,
                "failure",
                type=case.verdict,
                message=f"expected {case.expected}, got {case.got}",
            )
            failure.text = "\n".join(case.reasons)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
