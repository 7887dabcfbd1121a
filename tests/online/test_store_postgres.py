"""The live event store (``online/store.py``) on a real PostgreSQL server.

Runs only when ``XSELL_TEST_POSTGRES_URL`` names a database the test user owns (it creates a
schema per test), e.g.::

    XSELL_TEST_POSTGRES_URL=postgresql+psycopg://xsell:pw@127.0.0.1/xsell_test \\
        pytest tests/online/test_store_postgres.py

Needs the driver: ``pip install -e '.[postgres]'``. Each test opens the store in a schema of
its own (``search_path`` set through the URL) and drops it afterwards, so the database is left
as it was. The SQLite equivalents are in ``test_store.py``.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from online import migrations as m
from online.records import Feedback, LiveEvent, RecommendationRecord, RecommendedItem
from online.store import TABLES, EventStore, SchemaVersionError, StoreError, migrate_store

ENV = "XSELL_TEST_POSTGRES_URL"
SERVER_URL = os.environ.get(ENV, "")
pytestmark = pytest.mark.skipif(
    not SERVER_URL, reason=f"{ENV} is not set (a postgresql+psycopg:// URL of a test database)"
)
T0 = datetime(2025, 6, 1, 12, 0)


def event(
    i: int, customer: str = "c1", *, minutes: float | None = None, kind: str = "view"
) -> LiveEvent:
    """Event ``e{i}`` of ``customer``, ``minutes`` (default ``i``) after T0."""
    return LiveEvent(
        event_id=f"e{i}",
        event_type=kind,
        customer_id=customer,
        product_id=f"p{i % 5}",
        ts=T0 + timedelta(minutes=i if minutes is None else minutes),
        session_id="s1",
    )


def record(rec_id: str = "r1") -> RecommendationRecord:
    """A two-task answer, items in (task, position) order."""
    return RecommendationRecord(
        recommendation_id=rec_id,
        customer_id="c1",
        placement="cart",
        variant="treatment",
        model_version="7",
        ts=T0,
        items=(
            RecommendedItem("cross_sell", 1, "p2", 0.9, 19.9),
            RecommendedItem("cross_sell", 2, "p3", 0.5, 9.5),
            RecommendedItem("upsell", 1, "p4", 0.7, 99.0),
        ),
    )


def _server() -> sa.URL:
    return sa.make_url(SERVER_URL)


def _in_schema(schema: str) -> str:
    """The server URL with ``search_path`` set to ``schema`` (password in clear)."""
    url = _server().update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty schema of the test database, dropped afterwards."""
    schema = f"xsell_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_server())
    try:
        with admin.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
        yield _in_schema(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        admin.dispose()


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


def test_the_same_batch_twice_is_stored_once(store: EventStore) -> None:
    batch = [event(i) for i in range(10)]
    assert store.add_events(batch) == (10, 0)
    assert store.add_events(batch) == (0, 10)
    assert store.add_events([*batch[:3], event(10)]) == (1, 3)
    assert store.counts()["events"] == 11


def test_a_batch_larger_than_one_insert_statement_is_counted_whole(store: EventStore) -> None:
    batch = [event(i, f"c{i % 7}") for i in range(2500)]  # several multi-row INSERTs
    assert store.add_events(batch) == (2500, 0)
    assert store.add_events([*batch, event(9999)]) == (1, 2500)
    assert store.counts()["events"] == 2501


def test_a_repeated_id_within_a_batch_is_a_duplicate_and_the_first_wins(store: EventStore) -> None:
    first = event(1)
    again = LiveEvent("e1", "add_to_cart", "c1", "p9", T0)
    assert store.add_events([first, event(2), again]) == (2, 1)
    assert store.customer_events("c1", T0 - timedelta(days=1))[0] == first
    assert store.add_events([]) == (0, 0)


def test_customer_events_are_the_customers_after_the_cutoff_by_ts_then_id(
    store: EventStore,
) -> None:
    store.add_events(
        [
            event(5, minutes=30),
            event(3, minutes=10),
            event(4, minutes=10),  # same ts as e3: event_id breaks the tie
            event(1, minutes=0),  # at the cutoff: excluded (strictly after)
            event(2, "c2", minutes=20),  # another customer
            event(0, minutes=-30),
        ]
    )
    assert [e.event_id for e in store.customer_events("c1", T0)] == ["e3", "e4", "e5"]
    assert [e.event_id for e in store.customer_events("c1", T0 - timedelta(minutes=10))] == [
        "e1",
        "e3",
        "e4",
        "e5",
    ]
    assert [e.event_id for e in store.customer_events("c2", T0)] == ["e2"]
    assert store.customer_events("nobody", T0) == []


def test_every_field_of_an_event_round_trips(store: EventStore) -> None:
    purchase = LiveEvent(
        event_id="buy-1",
        event_type="purchase",
        customer_id="c1",
        product_id="p1",
        ts=datetime(2025, 6, 1, 12, 0, 1, 123456),
        order_id="o1",
        unit_price=19.99,
        quantity=-2.0,
        session_id=None,
        recommendation_id="r1",
    )
    store.add_events([purchase])
    got = store.customer_events("c1", T0)
    assert got == [purchase]
    assert got[0].ts.tzinfo is None


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


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (LiveEvent("x", "bought", "c1", "p1", T0), "unknown event_type 'bought'"),
        (LiveEvent("x", "view", "c1", "p1", T0.replace(tzinfo=UTC)), "naive datetime"),
    ],
)
def test_an_invalid_event_stores_nothing_of_its_batch(
    store: EventStore, bad: LiveEvent, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        store.add_events([event(1), bad])
    with pytest.raises(ValueError, match="naive datetime"):
        store.customer_events("c1", T0.replace(tzinfo=UTC))
    assert store.counts()["events"] == 0


def test_four_threads_adding_disjoint_batches_store_everything(store: EventStore) -> None:
    def add(thread: int) -> None:
        for b in range(10):
            batch = [event(thread * 10_000 + b * 100 + i, f"c{thread}") for i in range(100)]
            results.append(store.add_events(batch))

    results: list[tuple[int, int]] = []
    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(100, 0)] * 40
    assert store.counts()["events"] == 4000
    assert len(store.customer_events("c3", T0 - timedelta(days=1))) == 1000


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


def test_a_recommendation_round_trips_with_its_items(store: EventStore) -> None:
    rec = record()
    store.add_recommendation(rec)
    store.add_recommendation(rec)  # a retry is ignored
    assert store.recommendation("r1") == rec
    assert store.recommendation("unknown") is None
    assert store.counts()["recommendations"] == 1
    assert store.counts()["recommendation_items"] == 3


def test_recommendations_in_a_batch_are_stored_once_with_the_first_items(store: EventStore) -> None:
    other = RecommendationRecord("r2", "c2", "checkout", "control", "6", T0, ())
    clash = RecommendationRecord(
        "r1", "c9", "cart", "control", "6", T0, (RecommendedItem("upsell", 9, "p9", 0.1, 1.0),)
    )
    assert store.add_recommendations([record(), other, clash]) == (2, 1)
    assert store.add_recommendations([clash]) == (0, 1)  # a retry adds none of its items
    assert store.recommendation("r1") == record()
    assert store.recommendation("r2") == other
    assert store.counts()["recommendation_items"] == 3


def test_feedback_is_idempotent_by_feedback_id(store: EventStore) -> None:
    store.add_recommendation(record())
    rows = [
        Feedback("f1", "r1", "impression", None, T0),
        Feedback("f2", "r1", "click", "p2", T0 + timedelta(seconds=5)),
        Feedback("f3", "r1", "purchase", "p2", T0 + timedelta(minutes=3), 2.0, 19.9),
    ]
    assert store.add_feedback(rows) == (3, 0)
    assert store.add_feedback([*rows, Feedback("f4", "r1", "add_to_cart", "p3", T0)]) == (1, 3)
    assert store.add_feedback([rows[0], rows[0]]) == (0, 2)
    with pytest.raises(ValueError, match="unknown event_type 'like'"):
        store.add_feedback([Feedback("f5", "r1", "like", "p2", T0)])
    assert store.counts()["feedback"] == 4
    got = store.tables()["feedback"].drop(columns="received_at")
    assert list(got.itertuples(index=False, name=None))[2] == (
        "f3",
        "r1",
        "purchase",
        "p2",
        pd.Timestamp(T0 + timedelta(minutes=3)),
        2.0,
        19.9,
    )


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
    password = _server().password
    if not password:
        pytest.skip(f"{ENV} has no password to mask")
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
    password = _server().password
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
