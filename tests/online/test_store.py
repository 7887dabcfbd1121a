"""The live event store (``online/store.py``) and its migrations (``online/migrations.py``) on
real SQLite files: ingest and its idempotency, the per-customer read, recommendations,
feedback, the frames, durability under ``kill -9``, threads and processes, and every store
problem surfacing as a one-line ``StoreError``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_rows import T0, event, record

from online import migrations as m
from online.records import Feedback, LiveEvent, RecommendationRecord
from online.store import (
    BUSY_TIMEOUT_MS,
    DB_FILE,
    TABLES,
    EventStore,
    StoreError,
    _faster,
    _iso_text,
    _Sql,
    migrate_store,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    """A new store in ``tmp_path/store``."""
    opened = EventStore.open(tmp_path / "store")
    yield opened
    opened.close()


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running ``code`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- opening and settings -------------------------------------------------------------------


def test_a_new_store_is_created_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "store"
    store = EventStore.open(folder)
    try:
        assert store.schema_version == m.LATEST_VERSION
        assert store.url == f"sqlite:///{folder / DB_FILE}"
        assert store.counts() == {t.name: 0 for t in TABLES}
        assert store.check() is None
        with store._engine.connect() as conn:  # the settings every pooled connection gets
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
    finally:
        store.close()
    reopened = EventStore.open(folder, create=False)
    assert reopened.schema_version == m.LATEST_VERSION
    reopened.close()


def test_a_sqlite_url_works_like_a_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = EventStore.open(url)
    assert store.add_events([event(1)]) == (1, 0)
    store.close()
    assert EventStore.open(url, create=False).counts()["events"] == 1


def test_two_threads_creating_one_new_store_both_succeed(tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    opened: list[EventStore] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(EventStore.open(tmp_path / "store"))
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


def test_the_per_customer_read_is_one_covering_index_range(store: EventStore) -> None:
    assert store._customer_events.sql is not None
    with store._engine.connect() as conn:
        plan = conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {store._customer_events.sql}", ("c1", "2025")
        ).all()
    steps = [str(row[-1]) for row in plan]
    assert steps == [
        "SEARCH events USING COVERING INDEX ix_events_customer_read (customer_id=? AND ts>?)"
    ]  # no table lookups, no sort


def test_the_log_is_copied_into_the_database_in_the_background(tmp_path: Path) -> None:
    store = EventStore.open(tmp_path / "store")
    try:
        db = tmp_path / "store" / DB_FILE
        empty = db.stat().st_size
        store.add_events([event(i, f"c{i % 50}") for i in range(2000)])
        assert db.stat().st_size == empty  # committed to the log only
        deadline = time.monotonic() + 5
        while db.stat().st_size == empty and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stat().st_size > empty  # the checkpoint thread copied it, no commit did
    finally:
        store.close()
    store.close()  # idempotent


ADD_IN_A_LOOP = """
import sys
from datetime import datetime, timedelta
from online.records import LiveEvent
from online.store import EventStore

store = EventStore.open(sys.argv[1])
prefix, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
acknowledged = 0
for b in range(batches):
    batch = [
        LiveEvent(f"{prefix}-{b}-{i}", "view", f"c{i % 7}", "p1",
                  datetime(2025, 1, 1) + timedelta(seconds=b * size + i))
        for i in range(size)
    ]
    stored, _ = store.add_events(batch)
    acknowledged += stored
    print(b, acknowledged, flush=True)
"""


def test_two_processes_adding_to_one_file_store_everything(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    EventStore.open(folder).close()
    children = [_child(ADD_IN_A_LOOP, str(folder), name, "20", "50") for name in ("a", "b")]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    store = EventStore.open(folder)
    assert store.counts()["events"] == 2 * 20 * 50
    store.close()


def test_every_acknowledged_event_survives_kill_9(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    EventStore.open(folder).close()
    child = _child(ADD_IN_A_LOOP, str(folder), "k", "1000000", "200")
    assert child.stdout is not None
    lines = [child.stdout.readline() for _ in range(5)]  # a few committed batches, then kill
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # Acknowledged before the kill landed (a line cut short by the kill does not count).
    lines += [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    last_batch, acknowledged = (int(x) for x in lines[-1].split())
    assert acknowledged == 200 * (last_batch + 1) >= 1000
    store = EventStore.open(folder)
    try:
        ids = set(store.tables()["events"]["event_id"])
        assert store.counts()["events"] >= acknowledged
        assert {f"k-{b}-{i}" for b in range(last_batch + 1) for i in range(200)} <= ids
        assert len(ids) % 200 == 0  # a batch is stored whole or not at all
    finally:
        store.close()


# --- recommendations and feedback -----------------------------------------------------------


def test_a_recommendation_without_items_round_trips(store: EventStore) -> None:
    empty = RecommendationRecord("r0", "c9", "checkout", "control", "6", T0, ())
    store.add_recommendation(empty)
    assert store.recommendation("r0") == empty


def test_tables_have_the_record_fields_as_columns(store: EventStore) -> None:
    store.add_events([event(1)])
    store.add_recommendation(record())
    store.add_feedback([Feedback("f1", "r1", "click", "p2", T0)])
    frames = store.tables()
    assert list(frames) == ["events", "recommendations", "recommendation_items", "feedback"]
    assert list(frames["events"].columns) == [f.name for f in fields(LiveEvent)] + ["received_at"]
    assert list(frames["feedback"].columns) == [f.name for f in fields(Feedback)] + ["received_at"]
    assert list(frames["recommendations"].columns) == [
        f.name for f in fields(RecommendationRecord) if f.name != "items"
    ]
    assert list(frames["recommendation_items"].columns) == [
        "recommendation_id",
        "task",
        "position",
        "product_id",
        "score",
        "price",
    ]
    assert [len(f) for f in frames.values()] == [1, 1, 3, 1]
    assert str(frames["events"]["ts"].dtype) == "datetime64[ns]"
    assert str(frames["recommendation_items"]["position"].dtype) == "int64"
    assert frames["events"]["ts"].iloc[0] == T0 + timedelta(minutes=1)


def test_tables_of_an_empty_store_are_typed_and_empty(store: EventStore) -> None:
    frames = store.tables()
    assert all(len(f) == 0 for f in frames.values())
    assert str(frames["feedback"]["ts"].dtype) == "datetime64[ns]"


def test_the_raw_sqlite_reads_match_the_core_reads(store: EventStore) -> None:
    """The hot reads run as raw SQL on SQLite; Core (the PostgreSQL path) must agree."""
    store.add_events([event(i, minutes=i * 0.5) for i in range(20)])
    store.add_events([LiveEvent("buy", "purchase", "c1", "p1", T0, "o1", 2.5, 3.0, None, "r1")])
    store.add_recommendation(record())
    for read, params in [
        (store._customer_events, {"customer_id": "c1", "after": T0 - timedelta(days=1)}),
        (store._recommendation, {"recommendation_id": "r1"}),
    ]:
        assert read.sql is not None
        through_core = store._fetch(_Sql(read.statement), params)
        assert store._fetch(read, params) == through_core
        assert len(through_core) in (21, 3)


@pytest.mark.parametrize(
    "ts",
    [
        datetime(1, 1, 1),
        datetime(999, 12, 31, 23, 59, 59, 999999),
        datetime(2025, 6, 1, 9, 5, 7, 1),
        datetime(9999, 12, 31, 23, 59, 59),
    ],
)
def test_timestamps_are_written_as_sqlalchemy_writes_them(ts: datetime) -> None:
    dialect = sa.create_engine("sqlite://").dialect
    sqlalchemy_text = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert _faster(sqlalchemy_text) is _iso_text
    assert _iso_text(ts) == sqlalchemy_text(ts)
    assert datetime.fromisoformat(str(_iso_text(ts))) == ts


def test_the_raw_sqlite_writes_store_what_core_stores(tmp_path: Path) -> None:
    """Byte for byte: the same rows written by add_events and by the Core insert."""
    raw, core = EventStore.open(tmp_path / "raw"), EventStore.open(tmp_path / "core")
    batch = [
        event(1),
        LiveEvent("buy", "purchase", "c1", "p1", datetime(2025, 6, 1, 9, 0, 0, 7), "o1", 2, 3),
    ]
    raw.add_events(batch)
    received = raw.tables()["events"]["received_at"].iloc[0].to_pydatetime()
    with core._writer.begin() as conn:
        conn.execute(
            core._insert_events.statement, [{**vars(e), "received_at": received} for e in batch]
        )
    raw.close()
    core.close()
    dumps = []
    for name in ("raw", "core"):
        with sqlite3.connect(tmp_path / name / DB_FILE) as conn:
            dumps.append(conn.execute("SELECT * FROM events ORDER BY event_id").fetchall())
    assert dumps[0] == dumps[1]
    assert dumps[0][0][4] == "2025-06-01 09:00:00.000007"


# --- store problems -------------------------------------------------------------------------


def test_a_corrupt_file_is_a_store_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / DB_FILE).write_bytes(b"this is not a database, just garbage bytes " * 200)
    with pytest.raises(StoreError, match="not a database") as info:
        EventStore.open(folder)
    assert str(folder / DB_FILE) in str(info.value)
    assert "\n" not in str(info.value)


def _limit_pages(store: EventStore, pages: int) -> None:
    """Cap every connection of ``store`` at ``pages`` pages (SQLite's own size limit)."""

    def cap(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(store._engine, "connect", cap)
    store._engine.dispose()  # reconnect: every new connection gets the cap


def test_a_full_store_is_a_store_error_and_keeps_what_it_had(store: EventStore) -> None:
    store.add_events([event(i) for i in range(10)])
    with store._engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    _limit_pages(store, pages + 2)
    big = [LiveEvent(f"big{i}", "view", f"c{i}", "p" * 200, T0) for i in range(2000)]
    with pytest.raises(StoreError, match="the store is full") as info:
        store.add_events(big)
    assert store.url in str(info.value)
    problem = store.check()
    assert problem is not None and "full" in problem
    assert store.counts()["events"] == 10


def test_a_read_only_store_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    EventStore.open(folder).close()
    read_only = EventStore.open(f"sqlite:///file:{folder / DB_FILE}?mode=ro&uri=true")
    try:
        assert read_only.counts()["events"] == 0  # reads work
        with pytest.raises(StoreError, match="read-only"):
            read_only.add_events([event(1)])
        problem = read_only.check()
        assert problem is not None and "read-only" in problem
    finally:
        read_only.close()


def test_an_unreachable_store_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    with pytest.raises(StoreError, match="cannot create the folder"):
        EventStore.open(blocker / "store")
    with pytest.raises(StoreError, match="no event store there"):
        EventStore.open(tmp_path / "missing", create=False)
    with pytest.raises(StoreError, match="no database file"):
        EventStore.open(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", create=False)
    with pytest.raises(StoreError, match="cannot open the database file"):
        EventStore.open(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_a_store_whose_folder_disappears_reports_it(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    store = EventStore.open(folder)
    store._engine.dispose()  # no pooled connection keeps the old file open
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("now a file")
    try:
        problem = store.check()
        assert problem is not None and "cannot open the database file" in problem
        with pytest.raises(StoreError, match="cannot read events: cannot open"):
            store.customer_events("c1", T0)
    finally:
        store.close()


def test_a_server_url_masks_its_password(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        store = EventStore.open("postgresql+psycopg://xsell:s3cret@127.0.0.1:9/shop")
        try:  # psycopg installed: port 9 is closed
            store.check()
        finally:
            store.close()
    assert "s3cret" not in str(info.value)
    assert "xsell:***@127.0.0.1:9/shop" in str(info.value)


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("sqlite://", "in-memory SQLite is not supported"),
        ("postgresql+nodriver://u@h/db", "cannot load the driver"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("not a url://", "invalid URL"),
    ],
)
def test_unsupported_locations_are_store_errors(location: str, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        EventStore.open(location)


def test_a_database_of_something_else_is_not_an_event_store(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id TEXT)")
    with pytest.raises(StoreError, match="not an event store"):
        EventStore.open(f"sqlite:///{db}")


# --- migrations -----------------------------------------------------------------------------


def _version_1_store(folder: Path) -> None:
    """A store created by the first release: only migration 1, one event in it."""
    folder.mkdir()
    engine = sa.create_engine(f"sqlite:///{folder / DB_FILE}")
    with engine.begin() as conn:
        assert m.apply_migrations(conn, target=1) == (0, 1)
        conn.exec_driver_sql(
            "INSERT INTO events (event_id, event_type, customer_id, product_id, ts, quantity, "
            "received_at) VALUES ('old', 'view', 'c1', 'p1', '2025-06-01 13:00:00.000000', 1, "
            "'2025-06-01 13:00:00.000000')"
        )
    engine.dispose()


def test_migrations_are_numbered_one_by_one() -> None:
    assert [step.version for step in m.MIGRATIONS] == list(range(1, len(m.MIGRATIONS) + 1))
    assert m.LATEST_VERSION == len(m.MIGRATIONS) >= 2


def test_an_old_store_asks_for_migrate_then_migrates_keeping_its_rows(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    _version_1_store(folder)
    with pytest.raises(StoreError, match=f"run `xsell store migrate --store {folder}`"):
        EventStore.open(folder)
    assert migrate_store(folder) == (1, m.LATEST_VERSION)
    assert migrate_store(folder) == (m.LATEST_VERSION, m.LATEST_VERSION)
    store = EventStore.open(folder)
    try:
        assert store.schema_version == m.LATEST_VERSION
        assert [e.event_id for e in store.customer_events("c1", T0)] == ["old"]
        with store._engine.connect() as conn:
            applied = conn.execute(sa.select(m.schema_migrations)).all()
        assert [row.version for row in applied] == [step.version for step in m.MIGRATIONS]
        assert all(isinstance(row.applied_at, datetime) for row in applied)
    finally:
        store.close()


def test_open_with_migrate_applies_the_pending_migrations(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    _version_1_store(folder)
    store = EventStore.open(folder, migrate=True)
    assert store.schema_version == m.LATEST_VERSION
    store.close()


def test_a_store_newer_than_the_code_is_refused(store: EventStore, tmp_path: Path) -> None:
    with store._engine.begin() as conn:
        conn.execute(
            sa.insert(m.schema_migrations).values(
                version=m.LATEST_VERSION + 1, description="from the future", applied_at=T0
            )
        )
    with pytest.raises(StoreError, match="newer than this code"):
        EventStore.open(tmp_path / "store")
    problem = store.check()
    assert problem is not None and "schema" in problem
    with pytest.raises(StoreError, match="newer than this code"):
        migrate_store(tmp_path / "store")


def test_migrate_store_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no event store there"):
        migrate_store(tmp_path / "nothing")


def test_the_migrations_build_exactly_the_declared_tables(store: EventStore) -> None:
    inspector = sa.inspect(store._engine)
    for table in TABLES:
        columns = inspector.get_columns(table.name)
        assert [c["name"] for c in columns] == [c.name for c in table.columns], table.name
        assert [c["nullable"] for c in columns] == [c.nullable for c in table.columns], table.name
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [
            c.name for c in table.primary_key.columns
        ]
        indexes = {(i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table.name)}
        declared = {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes}
        assert indexes == declared, table.name
