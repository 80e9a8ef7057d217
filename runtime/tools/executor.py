"""Run one tool call within its timeout and turn the outcome into data.

In a prefork or solo worker the step runs on the process's main thread, so a timeout
interrupts the tool with SIGALRM. Elsewhere (threads pool, tests) the call runs on a helper
thread and is abandoned at the deadline; its outcome is then unknown and recorded so.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from runtime.bounds import BoundsError, check_json, json_size
from runtime.errors import ToolExecutionError, ToolOutputNotStorable, ToolTimeout
from runtime.tools.context import ToolContext
from runtime.tools.registry import ToolSpec


@dataclass
class ToolOutcome:
    ok: bool
    result: Any = None
    #: short machine code: tool_error, tool_timeout, invalid_output, or the tool's own
    error_code: str | None = None
    error: str | None = None
    duration_ms: int = 0
    #: the tool may have run partly (timeout on a helper thread)
    outcome_unknown: bool = False


class _Alarm(BaseException):  # BaseException: a tool's `except Exception` cannot swallow it
    pass


@contextlib.contextmanager
def _alarm(timeout_s: float) -> Iterator[None]:
    def on_alarm(_sig: int, _frame: Any) -> None:
        raise _Alarm()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:
            # re-arm an enclosing timer (the application's, a test runner's) instead of
            # silently cancelling it; one that came due during the tool fires now
            remaining = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001), outer_interval)


#: a tool result larger than this (as JSON) is not stored: the call counts as invalid_output
MAX_RESULT_BYTES = 1024 * 1024
#: an error code a tool raises becomes part of a stop reason: short and plain
_CODE = re.compile(r"[a-z0-9_.\-]{1,60}")


def _to_jsonable(spec: ToolSpec, value: Any) -> Any:
    if spec.output_model is not None and not isinstance(value, spec.output_model):
        value = spec.output_model.model_validate(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    # the result is stored with the step: what cannot be stored is known now, before the
    # checkpoint, not after it fails
    try:
        check_json(value, label="result")
        size = json_size(value)
    except BoundsError as exc:
        raise ToolOutputNotStorable(
            f"{spec.name} returned a result that is not storable JSON: {exc}"
        ) from None
    if size > MAX_RESULT_BYTES:
        raise ToolOutputNotStorable(
            f"{spec.name} returned {size} bytes; at most {MAX_RESULT_BYTES} are kept"
        )
    return value


def _code(code: Any) -> str:
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "tool_error"


def execute(spec: ToolSpec, args: BaseModel, ctx: ToolContext, timeout_s: float) -> ToolOutcome:
    started = time.monotonic()

    def done(**kw: Any) -> ToolOutcome:
        return ToolOutcome(duration_ms=int((time.monotonic() - started) * 1000), **kw)

    try:
        if threading.current_thread() is threading.main_thread():
            try:
                with _alarm(timeout_s):
                    value = spec.fn(args, ctx)
            except _Alarm:
                raise ToolTimeout(spec.name, timeout_s) from None
        else:
            value = _run_on_thread(spec, args, ctx, timeout_s)
        return done(ok=True, result=_to_jsonable(spec, value))
    except ToolTimeout as exc:
        return done(ok=False, error_code="tool_timeout", error=str(exc), outcome_unknown=True)
    except ToolExecutionError as exc:
        return done(ok=False, error_code=_code(exc.code), error=str(exc)[:5000])
    except ValidationError as exc:
        return done(
            ok=False,
            error_code="invalid_output",
            error=f"{spec.name} returned invalid output: {exc}"[:5000],
        )
    except ToolOutputNotStorable as exc:
        return done(ok=False, error_code="invalid_output", error=str(exc)[:5000])
    except Exception as exc:
        return done(ok=False, error_code="tool_error", error=f"{type(exc).__name__}: {exc}"[:5000])


def _run_on_thread(spec: ToolSpec, args: BaseModel, ctx: ToolContext, timeout_s: float) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = spec.fn(args, ctx)
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"tool:{spec.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ToolTimeout(spec.name, timeout_s)
    if "error" in box:
        raise box["error"]
    return box.get("value")
