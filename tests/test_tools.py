"""Tools: the @tool decorator, the registry, the executor, and the Redis effect journal."""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel, Field

from runtime.errors import ToolDefinitionError, ToolExecutionError
from runtime.keys import Keys
from runtime.tools.context import JOURNAL_TTL_S, ToolContext
from runtime.tools.executor import ToolOutcome, execute
from runtime.tools.registry import ToolRegistry, ToolSpec, tool

# --- models and tools (module level: the decorator resolves annotations here) ------------


class Args(BaseModel):
    ticket_id: str = "T-1"
    token: str = ""
    delay_s: float = Field(default=0, ge=0)
    mode: str = "ok"


class Out(BaseModel):
    value: int
    label: str = "x"


def ctx_for(
    client: redis.Redis | None = None, key: str | None = None, ns: str = "tt"
) -> ToolContext:
    return ToolContext(
        run_id="run-1",
        tenant_id="t1",
        route="r.basic",
        step=0,
        call_index=0,
        idempotency_key=key or f"run-{uuid.uuid4().hex[:8]}:0:0",
        fencing_token=None,
        redis=client if client is not None else redis.Redis(),
        keys=Keys(ns),
    )


@tool(
    "test.echo", side_effect="write", timeout_s=3, lock="ticket:{ticket_id}", secret_args=["token"]
)
def echo(args: Args, ctx: ToolContext) -> Out:
    """Echo a value.

    More text that is not part of the description."""
    if args.delay_s:
        time.sleep(args.delay_s)
    if args.mode == "raise":
        raise ValueError("kaboom")
    if args.mode == "expected":
        raise ToolExecutionError("backend returned 503", code="backend_unavailable")
    if args.mode == "bad_output":
        return {"value": "not a number"}  # type: ignore[return-value]
    if args.mode == "dict_output":
        return {"value": 7}  # type: ignore[return-value]
    return Out(value=len(args.ticket_id))


@tool("test.untyped_out", side_effect="read")
def untyped_out(args: Args, ctx: ToolContext) -> dict[str, Any]:
    return {"anything": [1, 2], "ticket": args.ticket_id}


#: the delays ``test.stubborn`` slept to their end (an interrupted sleep adds nothing)
SLEPT_THROUGH: list[float] = []


@tool("test.stubborn", side_effect="read", timeout_s=1)
def stubborn(args: Args, ctx: ToolContext) -> Out:
    """Swallows every Exception: the timeout must still get through."""
    try:
        time.sleep(args.delay_s)
        SLEPT_THROUGH.append(args.delay_s)
    except Exception:
        return Out(value=-1)
    return Out(value=1)


@tool("test.refund", side_effect="irreversible", description="Refund money")
def refund(args: Args, ctx: ToolContext) -> None:
    return None


# --- the decorator -----------------------------------------------------------------------


def test_decorator_builds_a_spec() -> None:
    assert isinstance(echo, ToolSpec)
    assert echo.name == "test.echo" and echo.side_effect == "write" and echo.timeout_s == 3
    assert echo.input_model is Args and echo.output_model is Out
    assert echo.description == "Echo a value."
    assert echo.secret_args == frozenset({"token"})
    assert echo.lock_name(Args(ticket_id="T-42")) == "ticket:T-42"
    assert echo.retry_unknown is True  # write: may run again after an unknown outcome
    assert echo.json_schema()["properties"]["ticket_id"]["type"] == "string"
    assert untyped_out.output_model is None and untyped_out.lock_name(Args()) is None
    assert untyped_out.description == "" and untyped_out.timeout_s == 10.0
    assert refund.retry_unknown is False  # irreversible: never repeated blind
    assert refund.description == "Refund money"
    assert refund(Args(), ctx_for()) is None  # a spec is callable like the function


def test_compensator_registers_the_undo() -> None:
    @tool("test.comp", side_effect="write")
    def comp(args: Args, ctx: ToolContext) -> None: ...

    @comp.compensator
    def undo(args: Args, result: Any, ctx: ToolContext) -> None: ...

    assert comp.compensate is undo


def _bad_signature_one(args: Args) -> None: ...


def _bad_signature_three(args: Args, ctx: ToolContext, extra: int) -> None: ...


def _dict_args(args: dict[str, Any], ctx: ToolContext) -> None: ...


def _unannotated(args, ctx):  # type: ignore[no-untyped-def]
    return None


def _plain(args: Args, ctx: ToolContext) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "fn", "message"),
    [
        ({"side_effect": "delete"}, _plain, "side_effect must be one of"),
        ({"side_effect": "read"}, _bad_signature_one, "signature must be (args, ctx)"),
        ({"side_effect": "read"}, _bad_signature_three, "signature must be (args, ctx)"),
        ({"side_effect": "read"}, _dict_args, "annotate the first parameter with a pydantic model"),
        (
            {"side_effect": "read"},
            _unannotated,
            "annotate the first parameter with a pydantic model",
        ),
        (
            {"side_effect": "write", "lock": "ticket:{ticket}"},
            _plain,
            "lock template 'ticket:{ticket}' names unknown args ['ticket']",
        ),
        (
            {"side_effect": "write", "lock": "{ticket_id}:{mode}:{nope}"},
            _plain,
            "names unknown args ['nope']",
        ),
        (
            {"side_effect": "read", "secret_args": ["token", "pin"]},
            _plain,
            "secret_args ['pin'] unknown",
        ),
        ({"side_effect": "read"}, print, "decorate a plain function"),
    ],
)
def test_decorator_rejects_bad_definitions(
    kwargs: dict[str, Any], fn: Callable[..., Any], message: str
) -> None:
    with pytest.raises(ToolDefinitionError) as info:
        tool("test.bad", **kwargs)(fn)
    assert "tool 'test.bad'" in str(info.value) and message in str(info.value)


def test_unresolvable_annotations_are_a_definition_error() -> None:
    class Local(BaseModel):  # not resolvable from the module's globals
        x: int = 0

    def fn(args: Local, ctx: ToolContext) -> None: ...

    with pytest.raises(ToolDefinitionError, match="cannot resolve its annotations"):
        tool("test.local", side_effect="read")(fn)


# --- the registry ----------------------------------------------------------------------------


def test_registry_lookup_and_duplicates() -> None:
    registry = ToolRegistry([echo, untyped_out])
    assert registry.names() == ["test.echo", "test.untyped_out"]
    assert registry.get("test.echo") is echo and registry.get("nope") is None
    registry.register(echo)  # the same spec again (re-exported by another module) is fine
    twin = tool("test.echo", side_effect="read")(_plain)
    with pytest.raises(ToolDefinitionError, match=r"'test\.echo' is registered twice"):
        registry.register(twin)
    with pytest.raises(ToolDefinitionError, match="registered twice"):
        ToolRegistry([echo, twin])


@pytest.fixture
def tool_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Two importable tool modules: one re-exports a demo tool, one clashes with it."""
    pkg = f"tmods_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "reexport.py").write_text("from runtime.demo.tools import kb_search\n")
    (tmp_path / pkg / "clash.py").write_text(
        textwrap.dedent("""
        from pydantic import BaseModel
        from runtime.tools.registry import tool

        class A(BaseModel):
            q: str

        @tool("kb.search", side_effect="read")
        def other_search(args: A, ctx: object) -> None: ...
    """)
    )
    (tmp_path / pkg / "broken.py").write_text(
        textwrap.dedent("""
        from pydantic import BaseModel
        from runtime.tools.registry import tool

        class A(BaseModel):
            q: str

        @tool("x.y", side_effect="read", lock="{missing}")
        def bad(args: A, ctx: object) -> None: ...
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]


def test_registry_from_modules(tool_modules: str) -> None:
    registry = ToolRegistry.from_modules(["runtime.demo.tools", f"{tool_modules}.reexport"])
    assert registry.names() == [
        "counter.increment",
        "kb.search",
        "payments.refund",
        "reports.generate",
        "tickets.update",
    ]
    with pytest.raises(ToolDefinitionError, match=r"'kb\.search' is registered twice"):
        ToolRegistry.from_modules(["runtime.demo.tools", f"{tool_modules}.clash"])
    with pytest.raises(
        ToolDefinitionError, match=r"tool module 'no\.such\.module' cannot be imported"
    ):
        ToolRegistry.from_modules(["no.such.module"])
    with pytest.raises(ToolDefinitionError, match="names unknown args"):
        ToolRegistry.from_modules([f"{tool_modules}.broken"])


def test_schema_digest() -> None:
    registry = ToolRegistry.from_modules(["runtime.demo.tools"])
    names = ["kb.search", "tickets.update"]
    versions = {"kb.search": "1", "tickets.update": "1"}
    digest = registry.schema_digest(names, versions)
    assert digest.startswith("ts-") and len(digest) == 15
    # stable: same inputs, other order, unknown names ignored, a fresh registry
    assert registry.schema_digest(list(reversed(names)), versions) == digest
    assert registry.schema_digest([*names, "not.registered"], versions) == digest
    assert (
        ToolRegistry.from_modules(["runtime.demo.tools"]).schema_digest(names, versions) == digest
    )
    # changes with a version, with the set of tools, with a schema
    assert registry.schema_digest(names, {**versions, "kb.search": "2"}) != digest
    assert registry.schema_digest(["kb.search"], versions) != digest
    assert registry.schema_digest(names, {}) != digest  # unknown versions are "?"

    class Search2(BaseModel):
        query: str
        language: str = "en"

    changed = ToolRegistry(
        [s for n in registry.names() if (s := registry.get(n)) and n != "kb.search"]
    )
    spec = registry.get("kb.search")
    assert spec is not None
    changed.register(ToolSpec(**{**spec.__dict__, "input_model": Search2}))
    assert changed.schema_digest(names, versions) != digest


# --- the executor ---------------------------------------------------------------------------


def run(spec: ToolSpec, timeout_s: float = 5.0, **args: Any) -> ToolOutcome:
    return execute(spec, spec.input_model(**args), ctx_for(), timeout_s)


def on_helper_thread(fn: Callable[[], ToolOutcome]) -> ToolOutcome:
    box: dict[str, ToolOutcome] = {}
    t = threading.Thread(target=lambda: box.update(out=fn()))
    t.start()
    t.join(30)
    return box["out"]


def test_success_is_dumped_as_json_data() -> None:
    out = run(echo, ticket_id="T-1234")
    assert out.ok and out.result == {"value": 6, "label": "x"} and out.error_code is None
    assert out.duration_ms >= 0 and not out.outcome_unknown
    # a dict is validated against the output model
    assert run(echo, mode="dict_output").result == {"value": 7, "label": "x"}
    # without an output model the value passes as it is
    assert run(untyped_out).result == {"anything": [1, 2], "ticket": "T-1"}


def test_errors_map_to_codes() -> None:
    expected = run(echo, mode="expected")
    assert not expected.ok and expected.error_code == "backend_unavailable"
    assert expected.error == "backend returned 503" and not expected.outcome_unknown

    crashed = run(echo, mode="raise")
    assert crashed.error_code == "tool_error" and crashed.error == "ValueError: kaboom"

    invalid = run(echo, mode="bad_output")
    assert invalid.error_code == "invalid_output"
    assert invalid.error is not None and invalid.error.startswith(
        "test.echo returned invalid output"
    )


def test_helper_thread_errors_map_to_codes_too() -> None:
    assert on_helper_thread(lambda: run(echo, mode="expected")).error_code == "backend_unavailable"
    assert on_helper_thread(lambda: run(echo, mode="raise")).error_code == "tool_error"
    assert on_helper_thread(lambda: run(echo, mode="bad_output")).error_code == "invalid_output"
    assert on_helper_thread(lambda: run(echo)).result == {"value": 3, "label": "x"}


def test_timeout_on_the_main_thread_interrupts_the_tool() -> None:
    assert threading.current_thread() is threading.main_thread()
    previous_handler = signal.getsignal(signal.SIGALRM)
    SLEPT_THROUGH.clear()

    # a tool that swallows every Exception still cannot outlive its timeout: its 5 s sleep
    # is interrupted (it never gets past it), not waited out and then called a timeout
    out = run(stubborn, timeout_s=0.2, delay_s=5)

    assert SLEPT_THROUGH == []
    assert not out.ok and out.error_code == "tool_timeout" and out.outcome_unknown
    assert out.error == "tool 'test.stubborn' exceeded its 0.2s timeout"
    assert out.duration_ms >= 150  # the timeout does not fire early
    # the alarm is disarmed and the previous handler is back
    assert signal.getsignal(signal.SIGALRM) == previous_handler
    assert run(stubborn, timeout_s=0.2, delay_s=0).ok
    assert SLEPT_THROUGH == [0]


def test_an_enclosing_interval_timer_survives_a_tool_call() -> None:
    # Given an application timer (its own handler) with 30 s left
    fired: list[int] = []
    old_handler = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    arming = time.monotonic()
    old_timer = signal.setitimer(signal.ITIMER_REAL, 30)
    armed = time.monotonic()
    try:
        # When a tool runs (and when one times out)
        assert run(echo).ok
        assert run(stubborn, timeout_s=0.1, delay_s=2).error_code == "tool_timeout"

        # Then the application's timer is still armed, with its handler and its deadline:
        # what is left is 30 s less the time since it was armed, however long that took
        # (neither lost nor re-armed from the start)
        at_least = time.monotonic() - armed
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        at_most = time.monotonic() - arming
        assert 30 - at_most - 0.01 <= remaining <= 30 - at_least + 0.01, (remaining, at_least)
        assert fired == []

        # and one that came due during the tool fires right after it
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert run(echo, delay_s=0.2).ok
        from tests.support import wait_for

        wait_for(lambda: fired, timeout=60, message="the enclosing timer to fire")
    finally:
        signal.setitimer(signal.ITIMER_REAL, *old_timer)
        signal.signal(signal.SIGALRM, old_handler)


def test_timeout_on_a_helper_thread_abandons_the_call() -> None:
    release = threading.Event()
    finished = threading.Event()

    @tool("test.hang", side_effect="write", timeout_s=5)
    def hang(args: Args, ctx: ToolContext) -> Out:
        release.wait(60)  # until the test releases it (a minute: only a failure bound)
        finished.set()
        return Out(value=1)

    out = on_helper_thread(lambda: run(hang, timeout_s=0.2))
    assert out.error_code == "tool_timeout" and out.outcome_unknown
    # the call returned while the tool still runs (it cannot end before the release): the
    # caller was not made to wait for it, and its outcome is genuinely unknown
    assert not finished.is_set()
    release.set()
    assert finished.wait(5)


# --- the Redis effect journal ---------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_redis_effect_runs_once_per_idempotency_key(client: redis.Redis) -> None:
    ns = f"tt{uuid.uuid4().hex[:8]}"
    counter = Keys(ns).demo("counter")
    calls: list[int] = []

    def incr(pipe: Any) -> None:
        calls.append(1)
        pipe.incrby(counter, 5)
        pipe.get(counter)

    # Given a first execution
    first = ctx_for(client, "run-a:0:0", ns).redis_effect(incr)
    assert first == [5, "5"]  # results of the queued commands, bytes decoded

    # When the same call is delivered again (a new context, same key)
    again = ctx_for(client, "run-a:0:0", ns).redis_effect(incr)

    # Then the writes are skipped and the first results come back
    assert again == [5, "5"]
    assert calls == [1]
    assert client.get(counter) == b"5"
    marker = Keys(ns).effect("run-a:0:0")
    assert client.get(marker) == b"1"
    assert JOURNAL_TTL_S - 60 < client.ttl(marker) <= JOURNAL_TTL_S

    # and another call (another key) writes again
    assert ctx_for(client, "run-a:1:0", ns).redis_effect(incr) == [10, "10"]
    assert client.get(counter) == b"10"


def test_a_failing_apply_writes_nothing_and_may_run_again(client: redis.Redis) -> None:
    ns = f"tt{uuid.uuid4().hex[:8]}"
    counter = Keys(ns).demo("counter")

    def broken(pipe: Any) -> None:
        pipe.incr(counter)
        raise RuntimeError("tool bug before EXEC")

    with pytest.raises(RuntimeError):
        ctx_for(client, "run-b:0:0", ns).redis_effect(broken)
    assert client.get(counter) is None
    assert not client.exists(Keys(ns).effect("run-b:0:0"))
    assert ctx_for(client, "run-b:0:0", ns).redis_effect(lambda p: p.incr(counter)) == [1]


def test_racing_copies_of_one_call_write_once(redis_url: str) -> None:
    # Given two copies of the same call (same idempotency key) on two threads, many times over
    ns = f"tt{uuid.uuid4().hex[:8]}"
    counter = Keys(ns).demo("counter")
    rounds = 40
    results: dict[int, list[list[Any]]] = {i: [] for i in range(rounds)}
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def copy() -> None:
        client = redis.Redis.from_url(redis_url)
        for i in range(rounds):
            ctx = ctx_for(client, f"run-race:{i}:0", ns)
            barrier.wait(10)
            got = ctx.redis_effect(lambda pipe: pipe.incr(counter))
            with lock:
                results[i].append(got)
        client.close()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    # Then every call incremented exactly once
    check = redis.Redis.from_url(redis_url)
    assert int(check.get(counter) or 0) == rounds
    values = []
    for i in range(rounds):
        pair = results[i]
        assert len(pair) == 2
        # one copy wrote; the other got the saved result, or nothing if it lost the race
        # before the winner saved it (the demo counter reports None then)
        written = [r for r in pair if r]
        assert written and all(r == written[0] for r in written), pair
        values.append(written[0][0])
    assert sorted(values) == list(range(1, rounds + 1))
    check.close()
