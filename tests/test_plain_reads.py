"""The CLI's views for people read SQL on the DB-API driver (``runtime.store.plain``) and
show rows by ``runtime.run_rows``: one query mechanism and one field rule, no drift.

* ``PlainReads`` returns what ``RunStore`` returns - same rows, same order, same values,
  for the same filters - on SQLite and PostgreSQL, bad rows included, and its table
  layouts are the SQLModel tables';
* it reads the database URL as SQLAlchemy does, and the environment as ``Settings`` does;
* a ``PlainRun`` shows what the ``RunView`` of the same row shows (a property, over rows
  holding anything), so ``runs list/show`` and ``trace`` print what they printed before;
* it never writes: a database that does not exist, or has no tables, reads as empty.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import JSON, Boolean, insert, text
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import UTCDateTime

from runtime import locations
from runtime.cli import render
from runtime.cli.reads import PlainViews, Reads
from runtime.contract import RunView, TraceEvent
from runtime.run_rows import FIELDS, VIEW_COLUMNS, PlainRun, plain_run, trace_fields
from runtime.run_views import run_view
from runtime.settings import Settings
from runtime.store.cells import Unreadable
from runtime.store.db import default_sqlite_url, make_engine
from runtime.store.plain import TABLES, PlainReads, target
from runtime.store.runs import RunStore, runs_t
from tests.support import Deployment, pg_schema_url
from tests.test_cli_surface import run_main

USAGE = {"input_tokens": 100, "output_tokens": 20}
REPLY = {"type": "reply", "text": "ok", "usage": USAGE}
SEARCH = {"type": "tool_call", "tool": "kb.search", "args": {"query": "refund"}, "usage": USAGE}
UPDATE = {
    "type": "tool_call",
    "tool": "tickets.update",
    "args": {"ticket_id": "T-plain-1", "status": "pending"},
    "usage": USAGE,
}
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def rendered(renderable: Any, width: int) -> str:
    buf = io.StringIO()
    render.SafeConsole(file=buf, width=width, highlight=False).print(renderable)
    return buf.getvalue()


# --- the layouts and the URL ------------------------------------------------------------------


def test_the_table_layouts_are_the_sqlmodel_tables() -> None:
    import runtime.store.models  # noqa: F401  (registers the tables)

    for table in TABLES:
        columns = SQLModel.metadata.tables[table.name].c
        assert table.columns == tuple(c.name for c in columns), table.name
        assert table.json == {c.name for c in columns if isinstance(c.type, JSON)}, table.name
        assert table.times == {c.name for c in columns if isinstance(c.type, UTCDateTime)}
        assert table.flags == {c.name for c in columns if isinstance(c.type, Boolean)}
    # a view for people reads the columns of every view field but the input
    assert set(VIEW_COLUMNS) <= set(runs_t.c.keys()) and "input" not in VIEW_COLUMNS


SQLITE_URLS = [
    "sqlite:///relative/agentrt.db",
    "sqlite:////abs/dir/agentrt.db",
    "sqlite+pysqlite:////abs/with%20space/a.db",
    "sqlite:///./x/../y.db",
]
PG_URLS = [
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgres://user:p%40ss%3Aword@db.example:6543/app",
    "postgresql+psycopg://u@h/db?options=-csearch_path%3Dagentrt_x&sslmode=disable",
    "postgresql+psycopg://u:pw@[::1]:5432/db?application_name=agent+rt",
    "postgresql://h/db",
    "postgresql:///db",
]
#: forms the plain reads leave to the store
STORE_URLS = [
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///a.db?timeout=5",
    "sqlite:///file:a.db?mode=ro&uri=true",
    "mysql+pymysql://u@h/db",
    "postgresql+psycopg2://u@h/db",
    "postgresql://u@h/db?host=a&host=b",
    "postgresql://u@h:notaport/db",
    "not a url",
]


@pytest.mark.parametrize("url", SQLITE_URLS + PG_URLS)
def test_a_url_points_where_sqlalchemy_connects(url: str) -> None:
    engine = make_engine(url)
    try:
        args, params = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    where = target(url)
    assert where is not None
    if where.dialect == "sqlite":
        assert [where.path] == list(args)
    else:
        params.pop("context", None)  # psycopg's adapters: the default ones here
        assert where.params == params and not args


@pytest.mark.parametrize("url", STORE_URLS)
def test_other_url_forms_are_left_to_the_store(url: str) -> None:
    assert target(url) is None
    assert PlainReads.open(url) is None


ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"AGENTRT_HOME": "state"},
    {"AGENTRT_HOME": ""},
    {"agentrt_home": "lower"},
    {"AGENTRT_HOME": "first", "Agentrt_Home": "second"},
    {"AGENTRT_DATABASE_URL": "postgresql://u@h/db", "AGENTRT_HOME": "ignored"},
    {"AGENTRT_DATABASE_URL": "", "AGENTRT_HOME": "empty-url"},
    {"agentrt_database_url": "sqlite:////x/y.db"},
    {"AGENTRT_DATABASEURL": "typo", "AGENTRT_HOMES": "typo"},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_the_database_url_is_what_settings_give(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    built = Settings()
    assert locations.home(os.environ) == built.home
    expected = built.database_url or locations.sqlite_url(built.home)
    assert locations.database_url(os.environ) == expected
    assert not any(tmp_path.iterdir())  # reading the URL makes no directory
    # what the store uses (it makes the directory, for a writer)
    if not built.database_url:
        assert default_sqlite_url(built.home) == locations.database_url(os.environ)


# --- the same rows as the store ---------------------------------------------------------------


def hand_written(dep: Deployment, backend: str) -> list[str]:
    """Rows written by hand or by another version, as test_admission_boundary writes them."""
    svc = dep.svc
    ids = []
    for values in [
        {"status": "paused_v2"},
        {"priority": "urgent"},
        {"status": "unknown", "risk_class": "extreme", "version_set": {}},
        {"allowed_tools": [1, 2], "autonomy_level": "rogue", "input": ["not", "a", "dict"]},
        {"tenant_id": "t3", "goal": "multi\nline", "stop_reason": "failed:" + "x" * 150},
    ]:
        row = svc._new_row("t1", "r.basic", "g", {"script": []}, "hand", None, None, None, None)
        row.update(values)
        with svc.store._write() as conn:
            conn.execute(insert(runs_t), [row])
        ids.append(row["run_id"])
    if backend == "sqlite":  # SQLite stores anything: corrupt JSON, timestamps, types
        for update in [
            "input = 'not json{', output = '{', updated_at = 'yesterday', next_step = 'many'",
            "created_at = 'soon', version_set = '[', tenant_id = 7, route = x'00ff'",
            "started_at = 12, finished_at = 'x', allowed_tools = '\"one\"', admitted = 'yes'",
        ]:
            row = svc._new_row("t1", "r.basic", "g", {"script": []}, "hand", None, None, None, None)
            with svc.store._write() as conn:
                conn.execute(insert(runs_t), [row])
                conn.execute(
                    text(f"UPDATE runs SET {update} WHERE run_id = :id"), {"id": row["run_id"]}
                )
            ids.append(row["run_id"])
    return ids


@pytest.fixture
def populated(
    fresh_deployment_on: Deployment, backend: str
) -> Iterator[tuple[Deployment, dict[str, list[str]]]]:
    """A deployment on each backend with finished runs (steps, decisions, side effects,
    spend, traces), a refusal, and rows written by hand."""
    dep = fresh_deployment_on
    dep.start_worker(concurrency=1)
    finished = [
        dep.submit_script([SEARCH, UPDATE, REPLY], tenant="t1").run_id,
        dep.submit_script([REPLY], tenant="t3").run_id,
        dep.submit_script([SEARCH, REPLY], tenant="t2", route="r.lenient").run_id,
    ]
    refused = dep.svc.submit("nobody", "r.basic", "refused", {}, actor="t").run_id
    dep.wait_all(finished)
    yield dep, {"finished": finished, "refused": [refused], "bad": hand_written(dep, backend)}


FILTERS = [
    (tenant, status, route, limit)
    for tenant in (None, "", "t1", "t3", "nobody", "none-such")
    for status in (None, "succeeded", "refused", "unknown", "queued")
    for route in (None, "r.basic", "r.lenient")
    for limit in (1, 3, 100)
]


def test_plain_reads_return_what_the_store_returns(
    populated: tuple[Deployment, dict[str, list[str]]],
) -> None:
    dep, runs = populated
    store = dep.svc.store
    plain = PlainReads.open(dep.env["AGENTRT_DATABASE_URL"])
    assert plain is not None
    try:
        for f in FILTERS:
            expected = store.list_runs(*f)
            assert plain.list_runs(*f) == expected, f
            narrowed = [{c: r[c] for c in VIEW_COLUMNS} for r in expected]
            assert plain.list_runs(*f, columns=VIEW_COLUMNS) == narrowed, f
        every = [r["run_id"] for r in store.list_runs(limit=100)]
        assert set(every) == {i for ids in runs.values() for i in ids}
        for run_id in every:
            for tenant in (None, "t1", "t2"):
                try:
                    expected_run = store.read_run(run_id, tenant)
                except Exception as exc:
                    with pytest.raises(type(exc), match="no run with id"):
                        plain.read_run(run_id, tenant)
                else:
                    assert plain.read_run(run_id, tenant) == expected_run
        for run_id in runs["finished"] + runs["refused"]:
            for tenant in (None, "t1", "t3"):
                assert plain.steps(run_id, tenant) == store.steps(run_id, tenant)
                assert plain.trace(run_id, tenant) == store.trace(run_id, tenant)
            assert plain.policy_decisions(run_id) == store.policy_decisions(run_id)
            assert plain.side_effects(run_id) == store.side_effects(run_id=run_id)
            assert plain.spend(run_id) == store.spend(run_id=run_id)
        # the finished runs did everything that is read: the comparisons compared rows
        first = runs["finished"][0]
        assert plain.steps(first) and plain.policy_decisions(first) and plain.side_effects(first)
        assert plain.spend(first)["tokens"] > 0
    finally:
        plain.close()


def test_the_views_for_people_print_what_they_printed_before(
    populated: tuple[Deployment, dict[str, list[str]]],
) -> None:
    """``runs list``, ``runs show`` and ``trace``, rendered from the plain reads and from the
    store's views (what the commands printed before), are the same text."""
    dep, runs = populated
    reads = Reads(dep.settings)
    plain = PlainReads.open(dep.env["AGENTRT_DATABASE_URL"])
    assert plain is not None
    views = PlainViews(plain)
    try:
        for tenant, status, route, limit in [(None, None, None, 100), ("t1", None, "r.basic", 3)]:
            before = reads.runs(tenant, status, route, limit)
            after = views.runs(tenant, status, route, limit)
            assert [v.run_id for v in after] == [v.run_id for v in before]
            for width in (250, 80):  # the table, and two lines per run
                assert rendered(render.runs_view(after, width, NOW), width) == rendered(
                    render.runs_view(before, width, NOW), width
                )
        for run_id in runs["finished"] + runs["refused"] + runs["bad"]:
            old, new = reads.details(run_id), views.details(run_id)
            for width in (200, 80):
                assert rendered(
                    render.run_details(new.run, new.steps, new.spend, new.effects, new.decisions),
                    width,
                ) == rendered(
                    render.run_details(old.run, old.steps, old.spend, old.effects, old.decisions),
                    width,
                )
        for run_id in runs["finished"] + runs["refused"]:
            assert render.trace_lines(views.trace(run_id)) == render.trace_lines(
                reads.trace(run_id)
            )
    finally:
        reads.close()
        views.close()


# --- one field rule ---------------------------------------------------------------------------

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.datetimes(timezones=st.sampled_from([UTC, None])),
    st.builds(Unreadable, st.text(max_size=12)),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), st.integers(), max_size=3),
)
VERSIONS = st.fixed_dictionaries(
    {k: st.text(max_size=6) for k in ("model", "prompt", "policy", "tool_schema", "harness")},
    optional={"retriever": st.one_of(st.none(), st.text(max_size=6)), "extra": ANYTHING},
)
#: for each column, the values the runtime writes there, mixed with anything at all
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(
        ["queued", "running", "waiting", "succeeded", "failed", "refused", "cancelled", "unknown"]
    ),
    "priority": st.sampled_from(["critical", "high", "normal", "low", "unknown"]),
    "autonomy_level": st.sampled_from(["advisory", "bounded_autonomous", "drafts_for_review"]),
    "risk_class": st.sampled_from(["low", "medium", "high"]),
    "execution_mode": st.sampled_from(["sync", "async_job"]),
    "version_set": VERSIONS,
    "allowed_tools": st.lists(st.text(max_size=6), max_size=3),
    "next_step": st.integers(min_value=0, max_value=50),
    "input": st.dictionaries(st.text(max_size=4), ANYTHING, max_size=2),
    "created_at": st.datetimes(timezones=st.just(UTC)),
    "updated_at": st.datetimes(timezones=st.just(UTC)),
    "started_at": st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    "finished_at": st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
}


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for rule in FIELDS.values():
        good = GOOD.get(rule.column, st.text(max_size=12))
        if draw(st.booleans()):
            row[rule.column] = draw(good)
        elif draw(st.booleans()):  # or the column is missing altogether
            row[rule.column] = draw(ANYTHING)
    return row


def same_fields(plain: PlainRun, view: RunView) -> None:
    for f in fields(plain):
        if f.name == "unreadable":
            marked = tuple(f for f in view.unreadable_fields or {} if f != "input")
            assert plain.unreadable == marked, view.unreadable_fields
        elif f.name == "version_set":
            assert vars(plain.version_set) == view.version_set.model_dump()
        else:
            shown, viewed = getattr(plain, f.name), getattr(view, f.name)
            # a NaN read back (any stored value is passed on) equals nothing, itself included
            both_nan = shown != shown and viewed != viewed
            assert shown == viewed or both_nan, f.name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_a_plain_run_shows_what_the_run_view_shows(row: dict[str, Any]) -> None:
    same_fields(plain_run(row), run_view(row))


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "run_id": st.one_of(st.text(max_size=6), ANYTHING),
            "trace_id": st.one_of(st.text(max_size=6), ANYTHING),
            "step_no": st.one_of(st.none(), st.integers(0, 9), ANYTHING),
            "at": st.one_of(st.datetimes(timezones=st.just(UTC)), ANYTHING),
            "kind": st.one_of(st.sampled_from(["admission", "stop"]), ANYTHING),
            "data": st.one_of(st.dictionaries(st.text(max_size=4), st.integers()), ANYTHING),
        },
    ),
    st.integers(0, 100),
)
def test_a_trace_event_of_any_row_is_built(row: dict[str, Any], seq: int) -> None:
    """Whatever a stored event holds, both readers build it (never an error), the same."""
    built = trace_fields(row, seq)
    event = TraceEvent(**built)
    assert event.model_dump() == built
    render.trace_lines([event])


# --- read-only ----------------------------------------------------------------------------------


def test_a_database_that_does_not_exist_reads_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "never"
    monkeypatch.setenv("AGENTRT_HOME", str(home))
    code, out, err = run_main("runs", "list")
    assert (code, err) == (0, "") and "no runs match" in out
    for command in (["runs", "show", "0" * 32], ["trace", "0" * 32]):
        code, out, err = run_main(*command)
        assert code == 1 and err.strip() == f"error: no run with id {'0' * 32!r}"
    assert not home.exists()

    # an empty SQLite file: still no table made in it
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    monkeypatch.setenv("AGENTRT_DATABASE_URL", f"sqlite:///{db}")
    code, out, _ = run_main("runs", "list", "--status", "succeeded")
    assert code == 0 and "no runs match" in out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_a_postgresql_schema_without_tables_reads_as_empty(
    pg_base_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    schema = f"agentrt_e_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("AGENTRT_DATABASE_URL", pg_schema_url(pg_base_url, schema))
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path / "home"))
    code, out, err = run_main("runs", "list")
    assert (code, err) == (0, "") and "no runs match" in out
    code, _, err = run_main("trace", "0" * 32)
    assert code == 1 and "no run with id" in err
    with psycopg.connect(pg_base_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", [schema]
        ).fetchone()
    assert tables == (0,)


def test_an_older_schema_is_left_to_the_store_which_names_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT)")
    url = f"sqlite:///{db}"
    assert PlainReads.open(url) is None  # tables without the code's schema revision
    monkeypatch.setenv("AGENTRT_DATABASE_URL", url)
    code, _, err = run_main("runs", "list")
    assert code == 1 and "predate the baseline schema" in err and "agentrt db upgrade" in err
    with sqlite3.connect(db) as conn:  # a recorded older revision, whatever the tables
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0004_admission_boundary')")
    assert PlainReads.open(url) is None
    code, _, err = run_main("runs", "list")
    assert code == 1 and "run `agentrt db upgrade`" in err


def test_an_unreachable_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socketless_port() as port:
        monkeypatch.setenv("AGENTRT_DATABASE_URL", f"postgresql://u@127.0.0.1:{port}/db")
        for args in (["runs", "list"], ["runs", "list", "--json"]):
            code, out, err = run_main(*args)
            assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
            assert err.startswith("error: database: OperationalError: "), err
            assert err.rstrip().endswith("(check AGENTRT_DATABASE_URL)")
    (tmp_path / "dir.db").mkdir()
    monkeypatch.setenv("AGENTRT_DATABASE_URL", f"sqlite:///{tmp_path / 'dir.db'}")
    code, _, err = run_main("runs", "list")
    assert code == 1 and err.startswith("error: database: OperationalError: "), err


class socketless_port:
    """A local port nothing listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_corrupt_cells_are_shown_never_a_crash(
    fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps whatever is written: the views for people show such rows and events."""
    dep = fresh_deployment
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    bad = hand_written(dep, "sqlite")
    run = dep.submit_script([REPLY])
    with dep.svc.store._write() as conn:
        conn.execute(
            text(
                "INSERT INTO trace_events (run_id, tenant_id, trace_id, step_no, at, kind, data) "
                "VALUES (:r, 't1', :t, 'x', 'soon', 'odd', '{not json'), "
                "(:r, 't1', :t, 1, :at, 'stop', '[1, 2]')"
            ),
            {"r": run.run_id, "t": run.trace_id, "at": "2030-01-01 00:00:00.000000"},
        )
    code, out, err = run_main("runs", "list", "--limit", "100")
    assert code == 0, err
    assert all(run_id in out for run_id in bad)
    for run_id in bad:
        code, out, err = run_main("runs", "show", run_id)
        assert code == 0 and run_id in out, err
    code, out, err = run_main("trace", run.run_id)
    assert code == 0, err
    assert "odd" in out and "unreadable={not json" in out
    # the store's views mark the same fields
    listed = {v.run_id: v for v in dep.svc.list_runs(limit=100)}
    views = PlainViews(PlainReads.open(dep.env["AGENTRT_DATABASE_URL"]))  # type: ignore[arg-type]
    try:
        for v in views.runs(None, None, None, 100):
            marked = listed[v.run_id].unreadable_fields or {}
            assert v.unreadable == tuple(f for f in marked if f != "input")
    finally:
        views.close()


def test_input_never_reaches_a_view_for_people(fresh_deployment: Deployment) -> None:
    dep = fresh_deployment
    run = dep.svc.submit(
        "t1", "r.basic", "g", {"script": [REPLY], "api_key": "sk-live-123"}, actor="t"
    )
    plain = PlainReads.open(dep.env["AGENTRT_DATABASE_URL"])
    assert plain is not None
    views = PlainViews(plain)
    try:
        shown = views.run(run.run_id)
        assert "sk-live-123" not in json.dumps(vars(shown), default=str)
        assert not hasattr(shown, "input")
    finally:
        views.close()


def test_timestamps_are_utc_whatever_the_session_time_zone(pg_base_url: str) -> None:
    """psycopg hands back timestamps in the session's time zone; both readers give UTC."""
    schema = f"agentrt_z_{uuid.uuid4().hex[:10]}"
    # the options value comes last in the URL: add a time zone to it
    url = pg_schema_url(pg_base_url, schema) + urllib.parse.quote(
        " -ctimezone=Asia/Kolkata", safe=""
    )
    engine = make_engine(url)
    try:
        store = RunStore(engine)
        store.create_schema()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO trace_events (run_id, tenant_id, trace_id, at, kind, data) "
                    "VALUES ('r', 't', 'x', :at, 'k', '{}')"
                ),
                {"at": datetime(2030, 1, 1, 12, tzinfo=UTC)},
            )
            zone = conn.execute(text("SHOW timezone")).scalar()
        assert zone == "Asia/Kolkata"
        plain = PlainReads.open(url)
        assert plain is not None
        try:
            (event,) = plain.trace("r")
        finally:
            plain.close()
        assert [event] == store.trace("r")
    finally:
        engine.dispose()
    assert event["at"] == datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert event["at"].utcoffset() == timedelta(0)


def test_a_url_the_plain_reads_leave_to_the_store_is_read_through_it(
    fresh_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = fresh_deployment
    run = dep.submit_script([REPLY], goal="through the store")
    for name, value in dep.env.items():
        monkeypatch.setenv(name, value)
    url = dep.env["AGENTRT_DATABASE_URL"] + "?timeout=5"
    assert PlainReads.open(url) is None
    monkeypatch.setenv("AGENTRT_DATABASE_URL", url)
    for args, expected in [
        (["runs", "list"], run.run_id),
        (["runs", "show", run.run_id], "through the store"),
        (["trace", run.run_id], "admission"),
    ]:
        code, out, err = run_main(*args)
        assert code == 0 and expected in out, err
