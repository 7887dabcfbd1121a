"""The live event store (``online/store.py``) on a real PostgreSQL server.

Runs only when ``XSELL_TEST_POSTGRES_URL`` names a database the test user owns (it creates a
schema per test), e.g.::

    XSELL_TEST_POSTGRES_URL=postgresql+psycopg://xsell:pw@127.0.0.1/xsell_test \\
        pytest tests/online/test_store_postgres.py

Needs the driver: ``pip install -e '.[postgres]'``. Each test opens the store in a schema of
its own (``search_path`` set through the URL) and drops it afterwards, so the database is left
as it was. The contract tests shared with SQLite are in ``test_store_contract.py``; the SQLite-only
ones in ``test_store.py``.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from store_rows import (
    NO_POSTGRES,
    POSTGRES_ENV,
    POSTGRES_URL,
    T0,
    event,
    postgres_schema,
    postgres_server,
    record,
)

from online import migrations as m
from online.records import Feedback, LiveEvent, RecommendationRecord
from online.store import TABLES, EventStore, SchemaVersionError, StoreError, migrate_store

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty schema of the test database, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture
def store(pg_url: str) -> Iterator[EventStore]:
    """A new store in a schema of its own."""
    opened = EventStore.open(pg_url)
    yield opened
    opened.close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- opening --------------------------------------------------------------------------------


def test_a_new_store_is_created_at_the_latest_schema(pg_url: str) -> None:
    store = EventStore.open(pg_url)
    try:
        assert store.schema_version == m.LATEST_VERSION
        assert store.counts() == {t.name: 0 for t in TABLES}
        assert store.check() is None
        with store._engine.connect() as conn:
            applied = conn.execute(sa.select(m.schema_migrations)).all()
            assert conn.execute(sa.text("SELECT current_schema()")).scalar() in pg_url
        assert [row.version for row in applied] == [step.version for step in m.MIGRATIONS]
        assert all(row.applied_at.tzinfo is None for row in applied)
    finally:
        store.close()
    reopened = EventStore.open(pg_url, create=False)
    assert reopened.schema_version == m.LATEST_VERSION
    reopened.close()


def test_the_migrations_build_exactly_the_declared_tables(store: EventStore) -> None:
    inspector = sa.inspect(store._engine)
    assert set(inspector.get_table_names()) == {t.name for t in TABLES} | {m.SCHEMA_MIGRATIONS}
    for table in TABLES:
        columns = inspector.get_columns(table.name)
        assert [c["name"] for c in columns] == [c.name for c in table.columns], table.name
        assert [c["nullable"] for c in columns] == [c.nullable for c in table.columns], table.name
        for got, declared in zip(columns, table.columns, strict=True):
            assert isinstance(got["type"], type(declared.type)), (table.name, got)
            if isinstance(declared.type, sa.DateTime):
                assert not got["type"].timezone  # TIMESTAMP WITHOUT TIME ZONE: naive values
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [
            c.name for c in table.primary_key.columns
        ]
        indexes = {(i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table.name)}
        declared_indexes = {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes}
        assert indexes == declared_indexes, table.name


def test_two_threads_creating_one_new_store_both_succeed(pg_url: str) -> None:
    barrier = threading.Barrier(2)
    opened: list[EventStore] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(EventStore.open(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [s.schema_version for s in opened] == [m.LATEST_VERSION] * 2
    for s in opened:
        s.close()


# --- events ---------------------------------------------------------------------------------


def test_a_batch_larger_than_one_insert_statement_is_counted_whole(store: EventStore) -> None:
    batch = [event(i, f"c{i % 7}") for i in range(2500)]  # several multi-row INSERTs
    assert store.add_events(batch) == (2500, 0)
    assert store.add_events([*batch, event(9999)]) == (1, 2500)
    assert store.counts()["events"] == 2501


@pytest.mark.parametrize(
    "ts",
    [
        datetime(1, 1, 1, 0, 0, 0, 1),  # the cutoff 1 µs before it is datetime.min
        datetime(999, 12, 31, 23, 59, 59, 999999),
        datetime(2025, 6, 1, 9, 5, 7, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ],
)
def test_naive_timestamps_round_trip_exactly(store: EventStore, ts: datetime) -> None:
    stored = LiveEvent("e", "view", "c1", "p1", ts)
    store.add_events([stored])
    got = store.customer_events("c1", ts - timedelta(microseconds=1))
    assert got == [stored]
    assert got[0].ts.tzinfo is None
    assert store.customer_events("c1", ts) == []  # strictly after


def test_the_stored_clock_is_naive_utc(store: EventStore) -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    store.add_events([event(1)])
    store.add_feedback([Feedback("f1", "r1", "click", "p2", T0)])
    after = datetime.now(UTC).replace(tzinfo=None)
    frames = store.tables()
    for name in ("events", "feedback"):
        received = frames[name]["received_at"].iloc[0].to_pydatetime()
        assert before <= received <= after, name


def test_two_threads_adding_the_same_batches_at_once_store_each_event_once(
    store: EventStore,
) -> None:
    batches = [[event(b * 100 + i, f"c{i % 5}") for i in range(100)] for b in range(20)]
    barrier = threading.Barrier(2)
    results: list[list[tuple[int, int]]] = [[], []]
    errors: list[BaseException] = []

    def add(me: int) -> None:
        try:
            for batch in batches:
                barrier.wait()  # both send this batch together
                results[me].append(store.add_events(batch))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=add, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for first, second in zip(*results, strict=True):
        assert first[0] + second[0] == 100  # every event stored by exactly one of them
        assert first[1] + second[1] == 100
    assert store.counts()["events"] == 2000


# --- recommendations and feedback -----------------------------------------------------------


# --- the frames: the same as on SQLite ------------------------------------------------------


def _fill(store: EventStore) -> None:
    store.add_events(
        [
            event(1),
            event(2, "c2", kind="add_to_cart"),
            LiveEvent("buy", "purchase", "c1", "p1", T0, "o1", 2.5, 3.0, None, "r1"),
        ]
    )
    store.add_recommendations(
        [record(), RecommendationRecord("r2", "c2", "checkout", "control", "6", T0, ())]
    )
    store.add_feedback(
        [Feedback("f1", "r1", "click", "p2", T0), Feedback("f2", "r1", "impression", None, T0)]
    )


def test_tables_equal_the_sqlite_stores_tables(store: EventStore, tmp_path: Path) -> None:
    sqlite_store = EventStore.open(tmp_path / "store")
    try:
        for empty in (True, False):
            if not empty:
                _fill(store)
                _fill(sqlite_store)
            ours, theirs = store.tables(), sqlite_store.tables()
            assert list(ours) == list(theirs) == [t.name for t in TABLES]
            for name, frame in ours.items():
                other = theirs[name]
                assert list(frame.columns) == list(other.columns), name
                assert list(frame.dtypes) == list(other.dtypes), name
                if "received_at" in frame:  # each store's own clock
                    frame, other = (
                        frame.drop(columns="received_at"),
                        other.drop(columns="received_at"),
                    )
                pd.testing.assert_frame_equal(frame, other, check_exact=True)
        assert store.counts() == sqlite_store.counts()
        assert store.counts() == {
            "events": 3,
            "recommendations": 2,
            "recommendation_items": 3,
            "feedback": 2,
        }
    finally:
        sqlite_store.close()


# --- health and store problems --------------------------------------------------------------


def test_check_is_healthy_and_finds_a_newer_schema(store: EventStore, pg_url: str) -> None:
    assert store.check() is None
    with store._engine.begin() as conn:
        conn.execute(
            sa.insert(m.schema_migrations).values(
                version=m.LATEST_VERSION + 1, description="from the future", applied_at=T0
            )
        )
    problem = store.check()
    assert problem is not None and "schema" in problem
    with pytest.raises(SchemaVersionError, match="newer than this code"):
        EventStore.open(pg_url)
    with pytest.raises(SchemaVersionError, match="newer than this code"):
        migrate_store(pg_url)


def test_the_password_is_masked_in_the_url_and_in_errors(store: EventStore, pg_url: str) -> None:
    password = postgres_server().password
    if not password:
        pytest.skip(f"{POSTGRES_ENV} has no password to mask")
    assert str(password) not in store.url
    assert "***@" in store.url
    wrong = sa.make_url(pg_url).set(password="wr0ng-" + uuid.uuid4().hex[:8])
    with pytest.raises(StoreError) as info:
        EventStore.open(wrong.render_as_string(hide_password=False))
    message = str(info.value)
    assert "cannot connect" in message
    assert str(wrong.password) not in message
    assert "\n" not in message
    bad_port = f"postgresql+psycopg://u:{password}@127.0.0.1:notaport/db"
    with pytest.raises(StoreError, match="invalid URL") as info:
        EventStore.open(bad_port)
    assert str(password) not in str(info.value)


def test_a_closed_port_is_a_store_error(pg_url: str) -> None:
    url = sa.make_url(pg_url).set(host="127.0.0.1", port=_closed_port())
    with pytest.raises(StoreError, match="cannot open: cannot connect") as info:
        EventStore.open(url.render_as_string(hide_password=False))
    assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)
    assert "\n" not in str(info.value)
    assert url.render_as_string(hide_password=True) in str(info.value)
    with pytest.raises(StoreError, match="cannot connect"):
        migrate_store(url.render_as_string(hide_password=False))


def test_a_store_whose_server_goes_away_reports_it(store: EventStore) -> None:
    """The engine pointed at a closed port afterwards: each call fails as a StoreError."""
    store.add_events([event(1)])
    url = store._engine.url.set(host="127.0.0.1", port=_closed_port())
    store._engine.dispose()
    store._engine = store._writer = sa.create_engine(url, pool_pre_ping=True)
    problem = store.check()
    assert problem is not None and "cannot connect" in problem
    with pytest.raises(StoreError, match="cannot add events: cannot connect"):
        store.add_events([event(2)])
    with pytest.raises(StoreError, match="cannot read events: cannot connect"):
        store.customer_events("c1", T0)
    with pytest.raises(StoreError, match="cannot count rows"):
        store.counts()


def test_a_schema_of_something_else_is_not_an_event_store(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id TEXT)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not an event store"):
        EventStore.open(pg_url)


# --- migrations -----------------------------------------------------------------------------


def _version_1_store(url: str) -> None:
    """A store created by the first release: only migration 1, one event in it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        assert m.apply_migrations(conn, target=1) == (0, 1)
        conn.execute(
            sa.text(
                "INSERT INTO events (event_id, event_type, customer_id, product_id, ts, quantity, "
                "received_at) VALUES ('old', 'view', 'c1', 'p1', :ts, 1, :ts)"
            ),
            {"ts": T0 + timedelta(hours=1)},
        )
    engine.dispose()


def test_an_old_store_asks_for_migrate_then_migrates_keeping_its_rows(pg_url: str) -> None:
    _version_1_store(pg_url)
    with pytest.raises(SchemaVersionError, match="run `xsell store migrate --store ") as info:
        EventStore.open(pg_url)
    password = postgres_server().password
    if password:
        assert str(password) not in str(info.value)
    assert migrate_store(pg_url) == (1, m.LATEST_VERSION)
    assert migrate_store(pg_url) == (m.LATEST_VERSION, m.LATEST_VERSION)
    store = EventStore.open(pg_url)
    try:
        assert store.schema_version == m.LATEST_VERSION
        assert [e.event_id for e in store.customer_events("c1", T0)] == ["old"]
        with store._engine.connect() as conn:
            applied = conn.execute(sa.select(m.schema_migrations)).all()
        assert [row.version for row in applied] == [step.version for step in m.MIGRATIONS]
        indexes = {i["name"] for i in sa.inspect(store._engine).get_indexes("events")}
        assert indexes == {"ix_events_customer_read", "ix_events_recommendation_id"}
        assert store.add_events([event(1)]) == (1, 0)
    finally:
        store.close()


def test_open_with_migrate_applies_the_pending_migrations(pg_url: str) -> None:
    _version_1_store(pg_url)
    store = EventStore.open(pg_url, migrate=True)
    try:
        assert store.schema_version == m.LATEST_VERSION
        assert store.check() is None
    finally:
        store.close()
