"""Tools: Python callables with pydantic input/output schemas and a side-effect class.

A tool module declares tools with the ``@tool`` decorator; ``tool_modules`` in the config
names the modules, and the registry collects every ``ToolSpec`` they define::

    class Search(BaseModel):
        query: str = Field(max_length=200)

    @tool("kb.search", side_effect="read", timeout_s=2)
    def search(args: Search, ctx: ToolContext) -> SearchResult: ...

Model-supplied arguments are validated against the input model before policy runs; a call
that fails validation is refused and never executed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import string
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from runtime.contract import SideEffectClass
from runtime.errors import ToolDefinitionError

ToolFn = Callable[[Any, Any], Any]
CompensateFn = Callable[[Any, Any, Any], Any]

_SIDE_EFFECTS = ("read", "write", "external", "irreversible")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass
class ToolSpec:
    name: str
    fn: ToolFn
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    side_effect: SideEffectClass
    timeout_s: float
    description: str
    #: lock key template rendered from the validated args, e.g. ``ticket:{ticket_id}``
    lock: str | None = None
    #: undo for a succeeded call: ``compensate(args, result, ctx)``
    compensate: CompensateFn | None = None
    #: may a call whose earlier attempt ended in an unknown state run again?
    retry_unknown: bool = True
    #: argument names never written to traces or logs
    secret_args: frozenset[str] = field(default_factory=frozenset)
    _schema: tuple[type[BaseModel], dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )

    def __call__(self, args: Any, ctx: Any) -> Any:
        return self.fn(args, ctx)

    def compensator(self, fn: CompensateFn) -> CompensateFn:
        """Decorator: register ``fn(args, result, ctx)`` as this tool's compensation."""
        self.compensate = fn
        return fn

    def lock_name(self, args: BaseModel) -> str | None:
        if not self.lock:
            return None
        return self.lock.format(**args.model_dump())

    def json_schema(self) -> dict[str, Any]:
        # pydantic rebuilds the schema on every call; it only changes with the model
        if self._schema is None or self._schema[0] is not self.input_model:
            self._schema = (self.input_model, self.input_model.model_json_schema())
        return self._schema[1]


def tool(
    name: str,
    *,
    side_effect: SideEffectClass,
    timeout_s: float = 10.0,
    lock: str | None = None,
    description: str | None = None,
    retry_unknown: bool | None = None,
    secret_args: Iterable[str] = (),
) -> Callable[[ToolFn], ToolSpec]:
    """Declare a tool. The first parameter's annotation is the input model, the return
    annotation (optional) the output model."""

    def decorate(fn: ToolFn) -> ToolSpec:
        if side_effect not in _SIDE_EFFECTS:
            raise ToolDefinitionError(f"tool {name!r}: side_effect must be one of {_SIDE_EFFECTS}")
        code = getattr(fn, "__code__", None)
        if code is None:
            raise ToolDefinitionError(f"tool {name!r}: decorate a plain function (args, ctx)")
        try:
            hints = typing.get_type_hints(fn)
        except (NameError, TypeError) as exc:
            raise ToolDefinitionError(
                f"tool {name!r}: cannot resolve its annotations ({exc}); define the models "
                "at module level"
            ) from exc
        params = list(code.co_varnames[: code.co_argcount])
        if len(params) != 2:
            raise ToolDefinitionError(f"tool {name!r}: signature must be (args, ctx)")
        input_model = hints.get(params[0])
        if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise ToolDefinitionError(
                f"tool {name!r}: annotate the first parameter with a pydantic model"
            )
        output = hints.get("return")
        output_model = (
            output if isinstance(output, type) and issubclass(output, BaseModel) else None
        )
        if lock:
            fields = {f for _, f, _, _ in string.Formatter().parse(lock) if f}
            missing = fields - set(input_model.model_fields)
            if missing:
                raise ToolDefinitionError(
                    f"tool {name!r}: lock template {lock!r} names unknown args {sorted(missing)}"
                )
        secret = frozenset(secret_args)
        unknown_secret = secret - set(input_model.model_fields)
        if unknown_secret:
            raise ToolDefinitionError(
                f"tool {name!r}: secret_args {sorted(unknown_secret)} unknown"
            )
        return ToolSpec(
            name=name,
            fn=fn,
            input_model=input_model,
            output_model=output_model,
            side_effect=side_effect,
            timeout_s=timeout_s,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            lock=lock,
            retry_unknown=(side_effect != "irreversible")
            if retry_unknown is None
            else retry_unknown,
            secret_args=secret,
        )

    return decorate


class ToolRegistry:
    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and existing is not spec:
            raise ToolDefinitionError(f"tool {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    @classmethod
    def from_modules(
        cls, modules: Iterable[str], problems: list[str] | None = None
    ) -> ToolRegistry:
        """Import each module and register the tools it defines (``@tool`` values at its
        top level). A module must be named by a dotted identifier, import cleanly and
        define at least one tool: anything else is a mistake in ``tool_modules``.

        Without ``problems``, the first mistake raises ``ToolDefinitionError``; with it,
        every mistake is appended there and the other modules still load."""
        registry = cls()

        def fail(message: str) -> None:
            if problems is None:
                raise ToolDefinitionError(message)
            problems.append(message)

        for module_name in modules:
            if not isinstance(module_name, str) or not _MODULE_NAME.match(module_name):
                fail(f"{module_name!r} is not a module name (dotted identifiers: myapp.tools)")
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                fail(f"tool module {module_name!r} cannot be imported: {exc}")
                continue
            except ToolDefinitionError as exc:
                fail(f"tool module {module_name!r}: {exc}")
                continue
            except Exception as exc:  # the module's own code failed while importing
                fail(f"tool module {module_name!r} failed to import: {type(exc).__name__}: {exc}")
                continue
            specs = [v for v in vars(module).values() if isinstance(v, ToolSpec)]
            if not specs:
                fail(f"module {module_name!r} registers no tools (no @tool at its top level)")
            for spec in specs:
                try:
                    registry.register(spec)
                except ToolDefinitionError as exc:
                    fail(f"tool module {module_name!r}: {exc}")
        return registry

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def schema_digest(self, names: Iterable[str], versions: dict[str, str]) -> str:
        """Version of the tool schemas a route exposes: a digest of names, versions, schemas."""
        doc = {
            n: {"version": versions.get(n, "?"), "schema": self._specs[n].json_schema()}
            for n in sorted(names)
            if n in self._specs
        }
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return "ts-" + hashlib.sha256(raw).hexdigest()[:12]
