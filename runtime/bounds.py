"""Bounds on what crosses the boundary: JSON shape, depth and size, numbers, identifiers.

Everything a caller, a model or a file hands the runtime is untrusted. These checks run
where it enters (admission, a proposal, the CLI), never deeper: past the boundary, a value
is known to be JSON of bounded depth and size, and every number fits a 64-bit column.

The walks are iterative: a value nested thousands deep is refused with a reason, never a
``RecursionError``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from runtime.errors import BoundsError as BoundsError

#: deepest nesting of objects and arrays accepted anywhere JSON enters
MAX_JSON_DEPTH = 32
#: largest integer stored in a BIGINT column (and the ledger's 64-bit counters)
MAX_INT64 = 2**63 - 1
#: largest integer any JSON value may carry (beyond it, other languages lose precision)
MAX_JSON_INT = 2**63 - 1


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def check_json(value: Any, *, label: str = "", max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ``BoundsError`` unless ``value`` is plain JSON: dicts with string keys, lists,
    strings, finite floats, integers within 64 bits, bools and None, at most ``max_depth``
    deep. Iterative, so any nesting is refused cleanly."""
    stack: list[tuple[Any, str, int]] = [(value, label, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise BoundsError(
                    "too_deep", path or label, f"nested deeper than {max_depth} levels"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise BoundsError(
                            "not_json", path or label, f"object key {key!r} is not a string"
                        )
                    stack.append((child, _join(path, key), depth + 1))
            else:
                for i, child in enumerate(item):
                    stack.append((child, _join(path, i), depth + 1))
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_JSON_INT:
                raise BoundsError("number_out_of_range", path, "integer outside 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BoundsError("not_json", path, f"{item!r} is not a JSON number")
        else:
            raise BoundsError("not_json", path, f"{type(item).__name__} is not a JSON value")


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (call ``check_json`` first)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def parse_json(
    text: str | bytes, *, label: str = "", max_depth: int = MAX_JSON_DEPTH, max_bytes: int
) -> Any:
    """``json.loads`` for untrusted text: bounded size and depth, no NaN or Infinity."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise BoundsError("too_large", label, f"{size} bytes; at most {max_bytes} accepted")

    def no_constants(name: str) -> Any:
        raise BoundsError("not_json", label, f"{name} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise BoundsError("too_deep", label, f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise BoundsError(
            "not_json", label, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    check_json(value, label=label, max_depth=max_depth)
    return value
