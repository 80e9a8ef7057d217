"""A reply's citations, checked against the evidence this run was shown: a cited id the run
never retrieved is unknown, and a reply citing nothing after the run retrieved evidence is
uncited. The route's ``citation_rule`` decides: ``warn`` traces ``citation_flagged`` and
flags the reply's output, ``refuse`` refuses the reply (``unknown_citation``,
``uncited_reply``), ``off`` checks nothing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from runtime.contract import ReplyProposal
from runtime.step import outcomes
from runtime.step.state import Move, Step


class EvidenceReads(Protocol):
    def retrieved(self, run_id: str, tenant_id: str, ids: Collection[str]) -> set[str]: ...

    def any_retrieved(self, run_id: str, tenant_id: str) -> bool: ...


class CitationCheck:
    def __init__(self, *, evidence: EvidenceReads) -> None:
        self.evidence = evidence

    def check(self, st: Step, reply: ReplyProposal) -> Move | dict[str, Any] | None:
        """None: nothing to flag; a dict: the flags (``warn``, traced here); a ``Move``:
        the reply is refused (``refuse``)."""
        rule = st.route.citation_rule
        cited = list(dict.fromkeys(reply.citations))
        if rule == "off" or (not cited and not st.route.sources):
            return None  # a route that retrieves nothing: no SQL on its replies
        if cited:
            known = self.evidence.retrieved(st.run_id, st.tenant_id, cited)
            unknown = [c for c in cited if c not in known]
            uncited = False
        else:
            unknown = []
            uncited = self.evidence.any_retrieved(st.run_id, st.tenant_id)
        if not unknown and not uncited:
            return None
        if rule == "refuse":
            if unknown:
                errors = [
                    {"loc": "citations", "msg": "never retrieved in this run", "ids": unknown}
                ]
                return outcomes.refuse(st, "unknown_citation", errors, st.proposal)
            errors = [{"loc": "citations", "msg": "the run retrieved evidence; cite it"}]
            return outcomes.refuse(st, "uncited_reply", errors, st.proposal)
        flags: dict[str, Any] = {"unknown": unknown} if unknown else {"uncited": True}
        st.trace.add("citation_flagged", rule=rule, **flags)
        return flags
