"""The secret/PII screen a memory's content passes before it is stored: what is
remembered is shown to later runs (and other actors) of the tenant, so nothing that looks
like a credential or a person's contact or card data is kept. Fail closed: a false
positive refuses a write (the model can rephrase); a false negative would keep a secret."""

from __future__ import annotations

import re

from runtime.tracing import redact

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# international or grouped numbers of 9-15 digits (+49 30 1234567, (555) 123-4567)
_PHONE = re.compile(r"(?<![\w.\-])(?:\+|\(\d{1,4}\)\s?)?\d[\d\s().\-]{7,18}\d(?![\w.\-])")
# 13-19 digits, optionally grouped by spaces or dashes (checked with Luhn)
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
# key-looking tokens beyond what the trace redaction knows: long mixed-class runs and the
# usual prefixes (Slack, Stripe, GitLab, PEM blocks)
_TOKEN = re.compile(
    r"\b(?:xox[abprs]-[A-Za-z0-9\-]{10,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|glpat-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,})"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
_LONG_RUN = re.compile(r"[A-Za-z0-9+/_\-]{32,}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _high_entropy(token: str) -> bool:
    """A long run of letters and digits mixed (a key), not a long word or number."""
    classes = sum(
        bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]")
    )  # fmt: skip
    return classes >= 3 or (classes == 2 and len(set(token)) >= 16)


def findings(content: str) -> list[str]:
    """What the screen found in ``content`` (kinds, never the matched text): ``secret``,
    ``email``, ``card_number``, ``phone_number``. Empty: the content may be stored."""
    found: list[str] = []
    if (
        redact(content) != content
        or _TOKEN.search(content)
        or any(_high_entropy(m.group(0)) for m in _LONG_RUN.finditer(content))
    ):
        found.append("secret")
    if _EMAIL.search(content):
        found.append("email")
    cards = [re.sub(r"\D", "", m.group(0)) for m in _CARD.finditer(content)]
    if any(13 <= len(d) <= 19 and _luhn(d) for d in cards):
        found.append("card_number")
    for m in _PHONE.finditer(content):
        digits = re.sub(r"\D", "", m.group(0))
        if 9 <= len(digits) <= 15 and not (len(digits) >= 13 and _luhn(digits)):
            found.append("phone_number")
            break
    return found
