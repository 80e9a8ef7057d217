"""The optional ``evals:`` section of the deployment file: where fixtures go and which
ended runs become fixtures by themselves (``agentrt evals sweep``). Example::

    evals:
      dir: evals
      capture_rules:
        - {risk_class: high, stop_reason: "dead_lettered:*", blocking: true}
        - {route: support.refunds, stop_reason: "policy_denied:*"}

A rule matches a terminal run whose route (or risk class) it names and whose stop reason
its glob matches; a rule naming neither a route nor a risk class matches every route.
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field

from runtime.statuses import RiskClass

#: where fixture files go when neither the file nor the command says
DEFAULT_EVALS_DIR = "evals"
#: the files of an evals directory that are fixtures
FIXTURE_SUFFIXES = frozenset({".json", ".yaml", ".yml"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CaptureRule(_Strict):
    route: str | None = Field(default=None, min_length=1, max_length=100)
    risk_class: RiskClass | None = None
    #: a glob over the stop reason, e.g. ``dead_lettered:*``
    stop_reason: str = Field(min_length=1, max_length=200)
    #: a failing replay of a fixture this rule made fails the gate
    blocking: bool = False

    def matches(self, route: str, risk_class: str, stop_reason: str | None) -> bool:
        if self.route is not None and not fnmatch.fnmatchcase(route, self.route):
            return False
        if self.risk_class is not None and risk_class != self.risk_class:
            return False
        return stop_reason is not None and fnmatch.fnmatchcase(stop_reason, self.stop_reason)


class EvalsConfig(_Strict):
    dir: str = Field(default=DEFAULT_EVALS_DIR, min_length=1, max_length=500)
    capture_rules: list[CaptureRule] = Field(default_factory=list, max_length=100)

    def rule_for(self, route: str, risk_class: str, stop_reason: str | None) -> CaptureRule | None:
        """The first rule that matches the run, if any."""
        for rule in self.capture_rules:
            if rule.matches(route, risk_class, stop_reason):
                return rule
        return None
