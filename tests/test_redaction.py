"""Secrets never reach traces, stored proposals or logs; usage numbers do."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runtime.tracing import REDACTED, TraceBuffer, redact

SECRET_KEYS = [
    "password",
    "Password",
    "PASSWORD",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "Authorization",
    "auth",
    "cookie",
    "session",
    "credentials",
    "private_key",
    "access_token",
    "refresh_token",
    "client_secret",
    "card_number",
    "cvv",
    "ssn",
    "db_password",
    "github_token",
    "stripe_api_key",
    "aws_key_secret",
    "webhook_secret",
    # camelCase and header spellings of the same names
    "apiKey",
    "accessToken",
    "refreshToken",
    "clientSecret",
    "authToken",
    "privateKey",
    "X-Api-Key",
    "x-auth-token",
    "Set-Cookie",
    "OPENAI_API_KEY",
]

PLAIN_KEYS = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "max_tokens",
    "tokens",
    "tokens_per_step",
    "inputTokens",
    "outputTokens",
    "maxTokens",
    "idempotency_key",
    "session_id",
    "author",
    "query",
    "tool",
    "key",
    "fence",
    "monkey",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_redacted(key: str) -> None:
    assert redact({key: "hunter2", "query": "refund"}) == {key: REDACTED, "query": "refund"}


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_usage_and_ordinary_keys_are_kept(key: str) -> None:
    assert redact({key: 1234}) == {key: 1234}
    assert redact({key: "plain text"}) == {key: "plain text"}


def test_a_secret_key_hides_its_whole_value() -> None:
    value = {"credentials": {"user": "bob", "nested": [1, 2]}, "auth": ["a", "b"]}
    assert redact(value) == {"credentials": REDACTED, "auth": REDACTED}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sk-abcdefghijklmnop1234", REDACTED),
        ("sk-proj-AbC_dEf-0123456789xyz", REDACTED),
        ("key is sk-abcdefghijklmnop1234, keep it safe", f"key is {REDACTED}, keep it safe"),
        ("Authorization: Bearer eyJhbGciOi.J9eyJzdWIi.OiIxMjM0", f"Authorization: {REDACTED}"),
        ("ghp_abcdefghijklmnopqrstuvwxyz12", REDACTED),
        ("AKIAABCDEFGHIJKLMNOP", REDACTED),
        (
            "two: sk-aaaaaaaaaaaaaaaaaaaa and sk-bbbbbbbbbbbbbbbbbbbb",
            f"two: {REDACTED} and {REDACTED}",
        ),
        # too short or not the pattern: kept
        ("sk-short", "sk-short"),
        ("Bearer x", "Bearer x"),
        ("ask-the-team-about-refunds", "ask-the-team-about-refunds"),
        ("refund 120 EUR", "refund 120 EUR"),
    ],
)
def test_secret_looking_values_are_redacted_anywhere(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact({"note": text}) == {"note": expected}
    assert redact([{"deep": [text]}]) == [{"deep": [expected]}]


def test_structure_is_kept_and_the_input_is_not_mutated() -> None:
    original: dict[Any, Any] = {
        "usage": {"input_tokens": 120, "output_tokens": 30},
        "args": {"query": "x", "api_key": "k", "tags": ("a", "sk-abcdefghijklmnop1234")},
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        7: "non-string key",
    }
    before = copy.deepcopy(original)
    out = redact(original)
    assert original == before
    assert out == {
        "usage": {"input_tokens": 120, "output_tokens": 30},
        "args": {"query": "x", "api_key": REDACTED, "tags": ["a", REDACTED]},
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        7: "non-string key",
    }


def test_extra_names_from_a_tools_secret_args() -> None:
    args = {"pin": "1234", "cardPin": "9999", "amount": 5}
    assert redact(args) == args
    assert redact(args, frozenset({"pin", "cardPin"})) == {
        "pin": REDACTED,
        "cardPin": REDACTED,
        "amount": 5,
    }
    # matching ignores case, like the built-in names
    assert redact({"PIN": "1"}, frozenset({"pin"})) == {"PIN": REDACTED}


def test_trace_events_are_redacted_but_usage_is_not() -> None:
    buf = TraceBuffer("run-1", "t1", "trace-1", 0)
    buf.add(
        "proposal",
        proposal={"type": "tool_call", "args": {"password": "p", "query": "q"}},
        usage={"input_tokens": 10, "output_tokens": 5},
        note="Bearer abcdefghijkl",
    )
    [event] = buf.drain()
    assert event["kind"] == "proposal" and event["run_id"] == "run-1" and event["step_no"] == 0
    assert event["data"] == {
        "proposal": {"type": "tool_call", "args": {"password": REDACTED, "query": "q"}},
        "usage": {"input_tokens": 10, "output_tokens": 5},
        "note": REDACTED,
    }
    assert buf.drain() == []
