"""Proposal validation: what a model (or a script) proposes is untrusted input.

Every raw proposal ends in exactly one of two ways: a typed ``Proposal`` (and, for a tool
call, arguments that satisfy the tool's schema strictly), or a ``Refused`` with a reason
code and the errors that name what failed. Nothing here raises on any JSON the proposer
hands over, and nothing is dropped silently.

Reason codes: ``malformed`` (not a proposal), ``too_large``, ``too_deep``,
``number_out_of_range``, ``multiple_tool_calls`` (one reply proposed several calls; all are
recorded, none runs), ``invalid_args`` (the tool's schema refused the arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from runtime.bounds import BoundsError, check_json, json_size, parse_json
from runtime.contract import Proposal, ToolCallProposal
from runtime.tools.registry import ToolRegistry, ToolSpec
from runtime.tracing import REDACTED, redact

_PROPOSAL: TypeAdapter[Proposal] = TypeAdapter(Proposal)
#: a proposal larger than this (as compact JSON) is refused, never parsed further
MAX_PROPOSAL_BYTES = 256 * 1024
#: arguments sent as JSON text (OpenAI's function arguments) may be at most this long
MAX_ARGS_BYTES = 64 * 1024
#: errors listed in a refusal
MAX_ERRORS = 10
#: argument text that is not JSON is kept (for the model to see) up to this many characters
MAX_SHOWN_TEXT = 2000

_BOUNDS_CODES = {"not_json": "malformed"}


@dataclass(frozen=True)
class Refused:
    """A proposal the runtime will not execute, and why."""

    code: str
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def detail(self) -> str:
        """The errors in one line: ``args.amount: Input should be a valid number``."""
        return "; ".join(
            f"{e['loc']}: {e['msg']}" if e.get("loc") else e["msg"] for e in self.errors
        )


def parse(raw: Any) -> Proposal | Refused:
    """The raw proposal as a typed one, or a refusal. Arguments given as JSON text are
    parsed here, with the same bounds as any other JSON that enters."""
    try:
        check_json(raw, label="proposal")
        size = json_size(raw)
    except BoundsError as exc:
        return _from_bounds(exc)
    if size > MAX_PROPOSAL_BYTES:
        return Refused("too_large", [_err("", f"{size} bytes; at most {MAX_PROPOSAL_BYTES}")])
    if isinstance(raw, dict) and raw.get("type") == "tool_calls":
        calls = raw.get("calls")
        count = len(calls) if isinstance(calls, list) else 0
        return Refused(
            "multiple_tool_calls",
            [_err("calls", f"{count} tool calls in one reply; propose one call per step")],
        )
    if (
        isinstance(raw, dict)
        and raw.get("type") == "tool_call"
        and isinstance(raw.get("args"), str)
    ):
        try:
            args = parse_json(raw["args"], label="args", max_bytes=MAX_ARGS_BYTES)
        except BoundsError as exc:
            refused = _from_bounds(exc)
            code = "invalid_args" if refused.code == "malformed" else refused.code
            return Refused(code, refused.errors)
        raw = {**raw, "args": args}
    try:
        return _PROPOSAL.validate_python(raw)
    except ValidationError as exc:
        return Refused("malformed", short_errors(exc))


def validate_args(spec: ToolSpec, proposal: ToolCallProposal) -> BaseModel | Refused:
    """The tool's arguments, validated strictly as JSON: an integer is a valid float, but a
    string is not a number and a bool is not a number; fields the schema does not declare
    are refused unless the tool's input model allows extra fields."""
    extra: Literal["forbid"] | None = (
        None if spec.input_model.model_config.get("extra") == "allow" else "forbid"
    )
    try:
        return spec.input_model.model_validate_json(
            json.dumps(proposal.args), strict=True, extra=extra
        )
    except ValidationError as exc:
        return Refused("invalid_args", short_errors(exc))


def shown(raw: Any, registry: ToolRegistry) -> Any:
    """A raw proposal as it may be stored in a trace: bounded, with the arguments each
    named tool declares secret redacted (a proposal that is not bounded JSON is summarised,
    never walked)."""
    try:
        check_json(raw, label="proposal")
        size = json_size(raw)
    except BoundsError as exc:
        return {"unshown": exc.code, "detail": str(exc)[:300]}
    if size > MAX_PROPOSAL_BYTES:
        return {"unshown": "too_large", "bytes": size}
    if not isinstance(raw, dict):
        return {"raw": redact(raw)}
    return _redact_proposal(raw, registry)


def _redact_proposal(raw: Any, registry: ToolRegistry) -> Any:
    if isinstance(raw, dict) and raw.get("type") == "tool_calls":
        calls = raw.get("calls")
        if isinstance(calls, list):
            return {**redact(raw), "calls": [redact_call(c, registry) for c in calls]}
    return redact_call(raw, registry)


def redact_call(call: Any, registry: ToolRegistry) -> Any:
    """A tool call with the secret arguments of the tool it names redacted. Arguments still
    in JSON text form are parsed first, so a secret inside them is found too; text that
    cannot be parsed is not shown."""
    if not isinstance(call, dict) or "args" not in call:
        return redact(call)
    spec = registry.get(call["tool"]) if isinstance(call.get("tool"), str) else None
    secret = spec.secret_args if spec is not None else frozenset()
    args = call["args"]
    if isinstance(args, str):
        try:
            args = parse_json(args, label="args", max_bytes=MAX_ARGS_BYTES)
        except BoundsError as exc:
            # text that is not JSON names no fields to redact: kept short, as written, so
            # the model sees what it sent; what is too large or too deep is not kept
            shown_text = args[:MAX_SHOWN_TEXT] if exc.code == "not_json" else {"unshown": exc.code}
            return {**redact(call), "args": redact(shown_text)}
    return {**redact({k: v for k, v in call.items() if k != "args"}), "args": redact(args, secret)}


def shown_input(run_input: Any, registry: ToolRegistry) -> Any:
    """A run's input as views show it: the scripted calls in it with their tools' secret
    arguments redacted, and secret-looking keys redacted. (The store keeps the input as the
    caller sent it: the scripted proposer replays it.)"""
    if not isinstance(run_input, dict):
        return run_input
    script = run_input.get("script")
    rest = redact({k: v for k, v in run_input.items() if k != "script"})
    if not isinstance(script, list):
        return rest if script is None else {**rest, "script": redact(script)}
    return {**rest, "script": [_redact_proposal(item, registry) for item in script]}


def secret_values(spec: ToolSpec | None, args: Any) -> list[str]:
    """The values of a call's secret arguments as text, to scrub them from error messages."""
    if spec is None or not spec.secret_args or not isinstance(args, dict):
        return []
    values = [str(args[name]) for name in spec.secret_args if args.get(name) not in (None, "")]
    return [v for v in values if len(v) >= 3]


def scrub(text: str | None, secrets: list[str]) -> str | None:
    """``text`` with every secret value replaced (a tool may echo its arguments in errors)."""
    if not text or not secrets:
        return text
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def short_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """A validation error as data that names each field, never the value it refused."""
    errors = []
    for e in exc.errors(include_input=False, include_url=False)[:MAX_ERRORS]:
        loc = ".".join(str(p) for p in e["loc"])
        errors.append(
            _err(f"{prefix}.{loc}" if prefix and loc else (loc or prefix), e["msg"], e["type"])
        )
    return errors


def _err(loc: str, msg: str, type_: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"loc": loc, "msg": msg}
    if type_:
        error["type"] = type_
    return error


def _from_bounds(exc: BoundsError) -> Refused:
    return Refused(_BOUNDS_CODES.get(exc.code, exc.code), [_err(exc.path, exc.detail, exc.code)])
