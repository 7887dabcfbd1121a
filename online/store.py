"""The live event store: live events, served recommendations and feedback, durably kept.

One :class:`EventStore` per process, shared by its threads. The store is a SQLAlchemy Core
database: a folder holding ``events.db`` (SQLite) for one machine, or a PostgreSQL URL for
several. On SQLite every connection runs in WAL mode with ``synchronous=FULL`` (a committed
batch is in the write-ahead log on disk before the call returns, so an acknowledged event
survives ``kill -9`` and a power cut) and a busy timeout, so several server processes share
one file: readers never block, writers queue for up to :data:`BUSY_TIMEOUT_MS`. Write
transactions start with ``BEGIN IMMEDIATE`` so a writer waits for the lock instead of failing
half-way.

Ingest is idempotent: a repeated ``event_id`` (or ``feedback_id``, or ``recommendation_id``)
is ignored, within a batch and across batches, and counted as a duplicate.

Speed on SQLite (figures from ``benchmarks/store.py``): the statements on the request and
ingest paths are SQLAlchemy Core statements compiled once, and on SQLite run as that SQL on
the pooled raw DBAPI connection, because Core's per-call work is as large as the query
itself there (see :class:`_Sql`); every other database runs them through Core. The write-ahead
log is copied into the database by a background thread (:class:`_Checkpointer`), not inside
an ingest call, and the per-customer read is served from one covering index (migration 3).

Every store problem (unreachable, read-only, full, corrupt, schema mismatch) is raised as
:class:`StoreError` with one line saying which and where; the URL is shown with its password
masked. Arguments that break the records' contract (an unknown event type, an aware
timestamp) raise ``ValueError``.

Timestamps are naive ``datetime`` values on the shop's clock; ``received_at`` is the store's
own clock, naive UTC.
"""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect

from online import migrations as m
from online.records import (
    EVENT_TYPES,
    FEEDBACK_TYPES,
    Feedback,
    LiveEvent,
    RecommendationRecord,
    RecommendedItem,
)

log = logging.getLogger(__name__)

DB_FILE = "events.db"
BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5
# SQLite: the committing writer copies the write-ahead log into the database only past this
# many pages (a backstop: 160 MB of log with 4 KiB pages); the store's background thread does
# it every CHECKPOINT_INTERVAL_S. After a checkpoint the log file is cut back to
# WAL_SIZE_LIMIT_BYTES.
WAL_AUTOCHECKPOINT_PAGES = 40_000
CHECKPOINT_INTERVAL_S = 0.25
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# check() calls a SQLite store full with less room than this (page limit or file system).
MIN_FREE_BYTES = 16 * 1024 * 1024
_BEGIN = "xsell_begin"  # execution option: the statement that opens a SQLite transaction
_PG_MIGRATION_LOCK = 0x7853454C4C  # pg_advisory_xact_lock key serialising migrations

_EVENT_FIELDS = tuple(f.name for f in fields(LiveEvent))
_RECOMMENDATION_FIELDS = tuple(f.name for f in fields(RecommendationRecord) if f.name != "items")
_ITEM_FIELDS = tuple(f.name for f in fields(RecommendedItem))
# customer_events filters on the first two and orders by the first three; the rest of the
# index is every other column it returns, so the read never touches the table.
_CUSTOMER_READ_KEY = ("customer_id", "ts", "event_id")
_CUSTOMER_READ_INDEX = (
    *_CUSTOMER_READ_KEY,
    *(name for name in _EVENT_FIELDS if name not in _CUSTOMER_READ_KEY),
)

# The tables as this code reads and writes them. Their history is online.migrations; a test
# checks that applying every migration gives exactly these columns and indexes. Columns are
# in record field order (plus received_at), which tables() keeps.
metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String, primary_key=True),
    sa.Column("event_type", sa.String, nullable=False),
    sa.Column("customer_id", sa.String, nullable=False),
    sa.Column("product_id", sa.String, nullable=False),
    sa.Column("ts", sa.DateTime, nullable=False),
    sa.Column("order_id", sa.String),
    sa.Column("unit_price", sa.Float),
    sa.Column("quantity", sa.Float, nullable=False),
    sa.Column("session_id", sa.String),
    sa.Column("recommendation_id", sa.String),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Index("ix_events_customer_read", *_CUSTOMER_READ_INDEX),
    sa.Index("ix_events_recommendation_id", "recommendation_id"),
)
recommendations = sa.Table(
    "recommendations",
    metadata,
    sa.Column("recommendation_id", sa.String, primary_key=True),
    sa.Column("customer_id", sa.String, nullable=False),
    sa.Column("placement", sa.String, nullable=False),
    sa.Column("variant", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("ts", sa.DateTime, nullable=False),
)
recommendation_items = sa.Table(
    "recommendation_items",
    metadata,
    sa.Column("recommendation_id", sa.String, primary_key=True),
    sa.Column("task", sa.String, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.String, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("price", sa.Float, nullable=False),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.String, primary_key=True),
    sa.Column("recommendation_id", sa.String, nullable=False),
    sa.Column("event_type", sa.String, nullable=False),
    sa.Column("product_id", sa.String),
    sa.Column("ts", sa.DateTime, nullable=False),
    sa.Column("quantity", sa.Float, nullable=False),
    sa.Column("unit_price", sa.Float),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Index("ix_feedback_recommendation_id", "recommendation_id"),
)
TABLES: tuple[sa.Table, ...] = (events, recommendations, recommendation_items, feedback)

_EVENT_TYPES = frozenset(EVENT_TYPES)
_FEEDBACK_TYPES = frozenset(FEEDBACK_TYPES)

# SQLite primary result codes (https://sqlite.org/rescode.html) and PostgreSQL SQLSTATE
# classes, each with what it means for the store.
_SQLITE_PROBLEMS = {
    3: "permission denied",
    5: "busy: locked by another process for longer than the busy timeout",
    6: "locked",
    8: "the store is read-only",
    10: "disk I/O error",
    11: "the database file is corrupt",
    13: "the store is full (no space left or size limit reached)",
    14: "cannot open the database file (unreachable)",
    26: "the file is not a database or is corrupt",
}
_PG_PROBLEMS = {
    "53100": "the store is full (disk full)",
    "25006": "the store is read-only",
    "08": "cannot connect",
    "57P": "the server is unavailable",
    "42P01": "schema mismatch (missing table)",
    "42703": "schema mismatch (missing column)",
    "53": "the server is out of resources",
}


class StoreError(RuntimeError):
    """The store cannot serve: unreachable, read-only, full, corrupt or at another schema.

    The message says which and names the store (URL with the password masked).
    """


class SchemaVersionError(StoreError):
    """The store is at another schema version than this code (migrate it, or upgrade xsell):
    a service refuses to start on it rather than serve without its store."""


@dataclass(frozen=True)
class _Target:
    """Where a location points: the SQLAlchemy URL and, for SQLite, the database file."""

    url: sa.URL
    sqlite_file: Path | None


def describe_error(exc: BaseException) -> str:
    """One line saying what a database error means for the store (full, read-only, ...)."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        problem = _SQLITE_PROBLEMS.get(code & 0xFF)
        if problem is None and ("no such table" in detail or "no such column" in detail):
            problem = "schema mismatch"
        return f"{problem or 'database error'} ({detail})"
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str):
        for prefix in sorted(_PG_PROBLEMS, key=len, reverse=True):
            if sqlstate.startswith(prefix):
                return f"{_PG_PROBLEMS[prefix]} ({detail})"
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return f"lost the connection ({detail})"
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return f"cannot connect ({detail})"
    if isinstance(exc, OSError):
        return f"file system error ({detail})"
    return f"database error ({detail})"


def _masked(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _resolve(location: str | Path, *, create: bool) -> _Target:
    """The URL and SQLite file of a location (a URL, or a folder holding ``events.db``).

    Raises:
        StoreError: Invalid URL, in-memory SQLite, folder that cannot be created, or (with
            ``create=False``) no database there.
    """
    text = str(location)
    if "://" not in text:
        folder = Path(location)
        db = folder / DB_FILE
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"event store {db}: cannot create the folder {folder} ({exc})"
                ) from exc
        elif not db.is_file():
            raise StoreError(f"event store {db}: no event store there (no {DB_FILE} in {folder})")
        return _Target(sa.URL.create("sqlite", database=str(db)), db)
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        shown = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", text)  # mask a password
        raise StoreError(f"event store {shown!r}: invalid URL ({exc})") from exc
    if url.get_backend_name() != "sqlite":
        return _Target(url, None)
    database = url.database or ""
    if database in ("", ":memory:") or "mode=memory" in database:
        raise StoreError(
            f"event store {_masked(url)}: in-memory SQLite is not supported "
            "(each connection would see its own empty database); give a file"
        )
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    path = Path(database.removeprefix("file:").split("?")[0] if uri else database)
    if not create and not path.is_file():
        raise StoreError(f"event store {_masked(url)}: no database file {path}")
    return _Target(url, path)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings: our own BEGIN, busy timeout, WAL, synchronous=FULL."""
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; _on_sqlite_begin does
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("event store: SQLite journal mode is %s, not wal", mode)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: sa.Connection) -> None:
    """Open a SQLite transaction: ``BEGIN IMMEDIATE`` for writes (waits for the lock).

    Sent on the driver connection itself: through Core it would cost a statement execution
    per transaction.
    """
    driver = conn.connection.driver_connection
    assert driver is not None  # inside the begin event the connection is checked out
    driver.execute(conn.get_execution_options().get(_BEGIN, "BEGIN"))


def _create_engine(target: _Target) -> sa.Engine:
    """An engine with the store's connection settings for SQLite or PostgreSQL.

    Raises:
        StoreError: Unsupported database or missing driver.
    """
    backend = target.url.get_backend_name()
    try:
        if backend == "sqlite":
            engine = sa.create_engine(target.url)
            sa.event.listen(engine, "connect", _on_sqlite_connect)
            sa.event.listen(engine, "begin", _on_sqlite_begin)
            return engine
        if backend == "postgresql":
            return sa.create_engine(
                target.url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(
            f"event store {_masked(target.url)}: cannot load the driver ({exc})"
        ) from exc
    raise StoreError(
        f"event store {_masked(target.url)}: unsupported database {backend!r} "
        "(use a folder, a sqlite:/// URL or a postgresql+psycopg:// URL)"
    )


def _insert_ignoring_duplicates(table: sa.Table, backend: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``table`` in the backend's dialect.

    On PostgreSQL it returns the keys it inserted, counted as the rows stored: through
    SQLAlchemy the driver's rowcount of an INSERT is -1 there (for one row and for a batch).
    """
    if backend == "sqlite":
        return sqlite_dialect.insert(table).on_conflict_do_nothing()
    return pg.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def _naive(ts: datetime, what: str) -> datetime:
    if ts.tzinfo is not None:
        raise ValueError(f"{what}: ts must be a naive datetime on the shop clock, got {ts!r}")
    return ts


def _event_row(event: LiveEvent, received_at: datetime) -> dict[str, Any]:
    if event.event_type not in _EVENT_TYPES:
        raise ValueError(
            f"event {event.event_id!r}: unknown event_type {event.event_type!r} "
            f"(allowed: {', '.join(EVENT_TYPES)})"
        )
    _naive(event.ts, f"event {event.event_id!r}")
    return {**vars(event), "received_at": received_at}


def _feedback_row(row: Feedback, received_at: datetime) -> dict[str, Any]:
    if row.event_type not in _FEEDBACK_TYPES:
        raise ValueError(
            f"feedback {row.feedback_id!r}: unknown event_type {row.event_type!r} "
            f"(allowed: {', '.join(FEEDBACK_TYPES)})"
        )
    _naive(row.ts, f"feedback {row.feedback_id!r}")
    return {**vars(row), "received_at": received_at}


def _recommendation_rows(
    record: RecommendationRecord,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``recommendations`` row and the ``recommendation_items`` rows of a record."""
    _naive(record.ts, f"recommendation {record.recommendation_id!r}")
    head = {name: getattr(record, name) for name in _RECOMMENDATION_FIELDS}
    items = [{"recommendation_id": record.recommendation_id, **vars(item)} for item in record.items]
    return head, items


def _unique_by(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """First row per ``key`` value, in order (duplicates within one batch)."""
    first: dict[Any, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row[key], row)
    return list(first.values())


def _index_order(row: dict[str, Any]) -> tuple[str, datetime]:
    return row["customer_id"], row["ts"]


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _frame(rows: Sequence[sa.Row[Any]], table: sa.Table) -> pd.DataFrame:
    """Rows of ``table`` as a frame: timestamps datetime64[ns], numbers float64/int64."""
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[c.name for c in table.columns])
    for column in table.columns:
        if isinstance(column.type, sa.DateTime):
            frame[column.name] = pd.to_datetime(frame[column.name]).astype("datetime64[ns]")
        elif isinstance(column.type, sa.Float):
            frame[column.name] = frame[column.name].astype("float64")
        elif isinstance(column.type, sa.Integer):
            frame[column.name] = frame[column.name].astype("int64")
    return frame


class _Checkpointer:
    """Copies a SQLite store's write-ahead log into the database file off the commit path.

    SQLite's automatic checkpoint (every 1,000 pages by default) runs inside the commit that
    crosses the threshold, so on a store of a million events one 500-event ``add_events`` in
    two paid for copying everyone's pages: p50 50-60 ms instead of 20-25
    (``benchmarks/store.py``). Here the writers' automatic checkpoint is only a backstop
    (:data:`WAL_AUTOCHECKPOINT_PAGES`), and a daemon thread runs a ``PASSIVE`` checkpoint,
    which never waits for readers or writers, at most every :data:`CHECKPOINT_INTERVAL_S`
    while there are new commits. Under a sustained maximal ingest the log still grows to the
    backstop now and then, and that commit pays for the frames the thread had not copied yet.
    Several processes on one file each run their own; one busy with it makes the others skip
    a turn.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="xsell-store-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """Note a commit: the next turn checkpoints."""
        self._pending.set()

    def stop(self) -> None:
        """Stop the thread after its current checkpoint (idempotent)."""
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
            if self._pending.is_set():
                self._pending.clear()
                self.checkpoint()

    def checkpoint(self) -> None:
        """One ``PASSIVE`` checkpoint; a failure is logged (the backstop still applies)."""
        try:
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                cursor.close()
            finally:
                raw.close()
        except (sa.exc.SQLAlchemyError, sqlite3.Error) as exc:
            log.warning("event store: background checkpoint failed: %s", describe_error(exc))


@dataclass(frozen=True)
class _Sql:
    """A statement on a hot path: its Core form and, on SQLite, the same statement compiled
    once to ``?`` SQL for the raw DBAPI connection.

    On SQLite, Core's per-execution work (parameter processing per row, result processing,
    the statement machinery) costs as much as the query on the per-request reads and about a
    third of an ``add_events`` call (``benchmarks/store.py`` prints both paths). The SQL is
    compiled from the Core statement and values go through SQLAlchemy's own SQLite bind
    processors (DATETIME through an equivalent C formatter, checked against SQLAlchemy's when
    the statement is built), so both paths read and write identical rows (tested); other
    databases run the Core statement.

    Attributes:
        statement: The Core statement (named bind parameters).
        sql: Its SQLite SQL (None: run ``statement`` through Core).
        params: Parameter names in placeholder order.
        binders: ``(position, processor)`` for the parameters whose type has a bind processor.
        timestamps: Positions of the selected DateTime columns (ISO text on SQLite).
    """

    statement: Any
    sql: str | None = None
    params: tuple[str, ...] = ()
    binders: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
    timestamps: tuple[int, ...] = ()

    @classmethod
    def of(
        cls, statement: Any, dialect: sa.Dialect, *, columns: Sequence[str] | None = None
    ) -> _Sql:
        """``statement`` for ``dialect``; ``columns``: the keys an insert's rows carry."""
        if dialect.name != "sqlite":
            return cls(statement)
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        params = tuple(compiled.positiontup or ())
        binders = []
        for i, name in enumerate(params):
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                binders.append((i, _faster(process)))
        selected = getattr(statement, "selected_columns", ())
        timestamps = tuple(i for i, c in enumerate(selected) if isinstance(c.type, sa.DateTime))
        return cls(statement, str(compiled), params, tuple(binders), timestamps)

    def args(self, values: dict[str, Any]) -> list[Any]:
        """The positional SQLite parameters of one set of named values."""
        return self.many([values])[0]

    def many(self, rows: list[dict[str, Any]]) -> list[list[Any]]:
        """The positional SQLite parameters of each row (a value repeated across the rows,
        such as a batch's ``received_at``, is converted once)."""
        names = self.params
        out = [[row[name] for name in names] for row in rows]
        for i, process in self.binders:
            converted: dict[Any, Any] = {}
            for args in out:
                value = args[i]
                text = converted.get(value)
                if text is None:
                    text = converted[value] = process(value)
                args[i] = text
        return out

    def parse(self, fetched: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """SQLite rows with their timestamp text parsed to ``datetime``."""
        if not self.timestamps:
            return fetched
        out = []
        for row in fetched:
            cells = list(row)
            for i in self.timestamps:
                if cells[i] is not None:
                    cells[i] = datetime.fromisoformat(cells[i])
            out.append(tuple(cells))
        return out


Run = Callable[[_Sql, list[dict[str, Any]]], int]
_PROBE = datetime(2025, 1, 2, 3, 4, 5, 60)


def _iso_text(value: datetime | None) -> str | None:
    """A naive datetime as SQLite DATETIME text, ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    return None if value is None else value.isoformat(" ", "microseconds")


def _faster(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process``, or a C-speed equivalent: SQLAlchemy's SQLite DATETIME processor formats
    each value in Python (about 4 ms of a 500-event batch); ``datetime.isoformat`` writes the
    same text when SQLAlchemy's storage format is the default one, checked here."""
    try:
        same = process(_PROBE) == _iso_text(_PROBE)
    except (TypeError, ValueError):
        same = False
    return _iso_text if same else process


class EventStore:
    """The live event store. Open with :meth:`open`; safe to share between threads.

    Attributes:
        url: The database URL with its password masked.
        schema_version: The database's schema version (always the latest once open).
    """

    def __init__(
        self, engine: sa.Engine, url: str, schema_version: int, sqlite_file: Path | None = None
    ) -> None:
        """Wrap an engine already prepared by :meth:`open` (use that instead)."""
        self._engine = engine
        backend = engine.dialect.name
        self._sqlite_file = sqlite_file
        self._checkpointer = _Checkpointer(engine) if backend == "sqlite" else None
        if self._checkpointer is not None:  # a store dropped without close() stops it too
            weakref.finalize(self, self._checkpointer.stop)
        # SQLite: writes open with BEGIN IMMEDIATE (the connection waits for the write lock).
        self._writer = engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
        self.url = url
        self.schema_version = schema_version
        dialect = engine.dialect

        def insert(table: sa.Table) -> _Sql:
            return _Sql.of(
                _insert_ignoring_duplicates(table, backend),
                dialect,
                columns=[c.name for c in table.columns],
            )

        self._insert_events = insert(events)
        self._insert_feedback = insert(feedback)
        self._insert_recommendation = insert(recommendations)
        self._insert_items = insert(recommendation_items)
        customer_events = (
            sa.select(*(events.c[name] for name in _EVENT_FIELDS))
            .where(
                events.c.customer_id == sa.bindparam("customer_id"),
                events.c.ts > sa.bindparam("after", type_=sa.DateTime),
            )
            .order_by(events.c.ts, events.c.event_id)
        )
        recommendation = (
            sa.select(
                *(recommendations.c[name] for name in _RECOMMENDATION_FIELDS),
                *(recommendation_items.c[name] for name in _ITEM_FIELDS),
            )
            .select_from(
                recommendations.outerjoin(
                    recommendation_items,
                    recommendation_items.c.recommendation_id == recommendations.c.recommendation_id,
                )
            )
            .where(recommendations.c.recommendation_id == sa.bindparam("recommendation_id"))
            .order_by(recommendation_items.c.task, recommendation_items.c.position)
        )
        self._customer_events = _Sql.of(customer_events, dialect)
        self._recommendation = _Sql.of(recommendation, dialect)

    @classmethod
    def open(
        cls, location: str | Path, *, create: bool = True, migrate: bool = False
    ) -> EventStore:
        """Open (and, when new, create) the store at ``location``.

        Args:
            location: A SQLAlchemy URL (any string containing ``://``, e.g.
                ``postgresql+psycopg://user:pw@host/db`` or ``sqlite:///path/events.db``), or
                a folder holding ``events.db``.
            create: Create the folder and the database when missing. With False a missing
                SQLite database is an error (a PostgreSQL database must always exist).
            migrate: Apply pending migrations to a database at an older schema version
                (logged). Without it such a database is an error.

        Returns:
            The open store; a new, empty database gets the latest schema.

        Raises:
            StoreError: The store is unreachable, corrupt, not an event store, at an older
                schema (run ``xsell store migrate --store LOCATION``) or newer than this code.
        """
        target = _resolve(location, create=create)
        engine = _create_engine(target)
        url = _masked(target.url)
        try:
            _, version = _prepare(engine, url, location, migrate=migrate)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url, version, target.sqlite_file)

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn any database or file-system error raised inside into a :class:`StoreError`."""
        try:
            yield
        except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"event store {self.url}: cannot {action}: {describe_error(exc)}"
            ) from exc

    @contextmanager
    def _raw_cursor(self) -> Iterator[Any]:
        """A cursor on a pooled raw SQLite connection (the connect-time PRAGMAs apply)."""
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            raw.close()

    def _fetch(self, read: _Sql, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of a select as tuples of Python values (timestamps as ``datetime``)."""
        if read.sql is None:
            with self._engine.connect() as conn:
                return [tuple(row) for row in conn.execute(read.statement, values)]
        with self._raw_cursor() as cursor:
            return read.parse(cursor.execute(read.sql, read.args(values)).fetchall())

    @contextmanager
    def _writing(self) -> Iterator[Run]:
        """One write transaction, committed on a clean exit (durable before the caller goes
        on) and rolled back otherwise; yields ``run(statement, rows) -> rows inserted``."""
        if self._checkpointer is None:  # not SQLite: through Core
            with self._writer.begin() as conn:

                def run(stmt: _Sql, rows: list[dict[str, Any]]) -> int:
                    result = conn.execute(stmt.statement, rows)
                    return len(result.all()) if result.returns_rows else int(result.rowcount)

                yield run
            return
        with self._raw_cursor() as cursor:
            cursor.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the lock
            try:
                yield lambda stmt, rows: int(cursor.executemany(stmt.sql, stmt.many(rows)).rowcount)
                cursor.execute("COMMIT")
            except BaseException:
                if cursor.connection.in_transaction:
                    with suppress(sqlite3.Error):  # keep the original error
                        cursor.execute("ROLLBACK")
                raise
        self._checkpointer.committed()

    def add_events(self, events: Sequence[LiveEvent]) -> tuple[int, int]:
        """Store a batch of live events in one transaction, committed before returning.

        Args:
            events: The batch; an ``event_id`` already stored or repeated within the batch
                is ignored (the first occurrence in the batch wins).

        Returns:
            ``(stored, duplicates)``, summing to ``len(events)``.

        Raises:
            ValueError: An unknown event type or an aware timestamp (nothing is stored).
            StoreError: The store cannot take the batch (nothing is stored).
        """
        if not events:
            return 0, 0
        received_at = _utc_now()
        rows = _unique_by([_event_row(e, received_at) for e in events], "event_id")
        rows.sort(key=_index_order)  # neighbours in the (customer_id, ts) index: fewer pages
        with self._guard("add events"), self._writing() as run:
            stored = run(self._insert_events, rows)
        return stored, len(events) - stored

    def customer_events(self, customer_id: str, after: datetime) -> list[LiveEvent]:
        """One customer's events with ``ts > after``, ordered by ``(ts, event_id)``.

        Read from one range of the covering index ``ix_events_customer_read`` (no table
        lookups, no sort).

        Raises:
            StoreError: The store cannot be read.
        """
        params = {"customer_id": customer_id, "after": _naive(after, "customer_events")}
        with self._guard("read events"):
            rows = self._fetch(self._customer_events, params)
        return [LiveEvent(*row) for row in rows]

    def add_recommendation(self, record: RecommendationRecord) -> None:
        """Store one served recommendation and its items (a repeated id is ignored).

        Raises:
            ValueError: An aware timestamp.
            StoreError: The store cannot take the record (nothing is stored).
        """
        self.add_recommendations([record])

    def add_recommendations(self, records: Sequence[RecommendationRecord]) -> tuple[int, int]:
        """Store served recommendations and their items in one transaction.

        A ``recommendation_id`` already stored (or repeated in ``records``) is ignored with its
        items: the first record stored under an id keeps its items.

        Returns:
            ``(stored, duplicates)``.

        Raises:
            ValueError: An aware timestamp (nothing is stored).
            StoreError: The store cannot take the records (nothing is stored).
        """
        if not records:
            return 0, 0
        rows = [_recommendation_rows(record) for record in records]
        stored = 0
        with self._guard("add recommendations"), self._writing() as run:
            for head, items in rows:
                if run(self._insert_recommendation, [head]):
                    stored += 1
                    if items:
                        run(self._insert_items, items)
        return stored, len(records) - stored

    def recommendation(self, recommendation_id: str) -> RecommendationRecord | None:
        """The recommendation stored under ``recommendation_id`` (items by task, position).

        Raises:
            StoreError: The store cannot be read.
        """
        params = {"recommendation_id": recommendation_id}
        with self._guard("read a recommendation"):
            rows = self._fetch(self._recommendation, params)
        if not rows:
            return None
        n_head = len(_RECOMMENDATION_FIELDS)
        items = tuple(RecommendedItem(*row[n_head:]) for row in rows if row[n_head] is not None)
        head = dict(zip(_RECOMMENDATION_FIELDS, rows[0][:n_head], strict=True))
        return RecommendationRecord(**head, items=items)

    def add_feedback(self, rows: Sequence[Feedback]) -> tuple[int, int]:
        """Store feedback rows in one transaction, committed before returning.

        The caller (the service) checks that each names a stored recommendation and one of
        its items; the store keeps what it is given.

        Returns:
            ``(stored, duplicates by feedback_id)``.

        Raises:
            ValueError: An unknown feedback type or an aware timestamp (nothing is stored).
            StoreError: The store cannot take the rows (nothing is stored).
        """
        if not rows:
            return 0, 0
        received_at = _utc_now()
        values = _unique_by([_feedback_row(r, received_at) for r in rows], "feedback_id")
        with self._guard("add feedback"), self._writing() as run:
            stored = run(self._insert_feedback, values)
        return stored, len(rows) - stored

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every stored row, one frame per table, read in one consistent snapshot.

        Returns:
            ``"events"``, ``"recommendations"``, ``"recommendation_items"`` and
            ``"feedback"``; columns are the record fields in field order (items:
            ``recommendation_id, task, position, product_id, score, price``), plus
            ``received_at`` (store clock, UTC) on events and feedback. Rows are in key order.

        Raises:
            StoreError: The store cannot be read.
        """
        with self._guard("read the tables"), self._engine.connect() as conn:
            return {
                table.name: _frame(
                    conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all(),
                    table,
                )
                for table in TABLES
            }

    def counts(self) -> dict[str, int]:
        """Rows per table.

        Raises:
            StoreError: The store cannot be read.
        """
        with self._guard("count rows"), self._engine.connect() as conn:
            return {
                table.name: int(
                    conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                )
                for table in TABLES
            }

    def check(self) -> str | None:
        """Health check for the service's readiness probe; never raises.

        Connects, reads the schema version, opens a write transaction and writes a probe row
        that it rolls back (finds a read-only store) and, on SQLite, compares the file's size
        with its page limit and the free space of its file system (finds a full store).

        Returns:
            None when healthy, else one line saying what is wrong and where.
        """
        try:
            with self._engine.connect() as conn:
                version = m.schema_version(conn)
            if version != m.LATEST_VERSION:
                return (
                    f"event store {self.url}: schema: the database is at version {version}, "
                    f"this code needs {m.LATEST_VERSION}"
                )
            with self._writer.connect() as conn, conn.begin() as transaction:
                conn.execute(
                    sa.insert(m.schema_migrations).values(
                        version=-1, description="health probe", applied_at=_utc_now()
                    )
                )
                full = self._sqlite_full(conn)
                transaction.rollback()
            return None if full is None else f"event store {self.url}: {full}"
        except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
            return f"event store {self.url}: {describe_error(exc)}"

    def _sqlite_full(self, conn: sa.Connection) -> str | None:
        """Why a SQLite store is full (under :data:`MIN_FREE_BYTES` of room), or None.

        The room is the smaller of what SQLite's page limit still allows and the free space of
        the file system holding the database.
        """
        if self._sqlite_file is None:
            return None

        def pragma(name: str) -> int:
            return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())

        free_pages = pragma("max_page_count") - pragma("page_count") + pragma("freelist_count")
        page_room = free_pages * pragma("page_size")
        if page_room < MIN_FREE_BYTES:
            return f"the store is full (page limit: {page_room:,d} bytes of room left)"
        folder = self._sqlite_file.parent
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            return f"the store is full (only {free:,d} bytes free on the file system of {folder})"
        return None

    def close(self) -> None:
        """Stop the background checkpoint and close every pooled connection (idempotent)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._engine.dispose()


def _prepare(
    engine: sa.Engine, url: str, location: str | Path, *, migrate: bool
) -> tuple[int, int]:
    """Check the schema of a just-opened database; create or migrate it when allowed.

    Returns:
        ``(from_version, to_version)``; ``to_version`` is always the latest.

    Raises:
        StoreError: Not an event store, older schema without ``migrate``, newer schema, or any
            database problem.
    """
    try:
        with engine.connect() as conn:
            version = m.schema_version(conn)
        _check_version(version, url, location, migrate=migrate)
        if version == m.LATEST_VERSION:
            return m.LATEST_VERSION, m.LATEST_VERSION
        writer = engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
        with writer.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            # Another process may have created or migrated the database meanwhile.
            version = m.schema_version(conn)
            _check_version(version, url, location, migrate=migrate)
            from_version, to_version = m.apply_migrations(conn)
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise StoreError(f"event store {url}: cannot open: {describe_error(exc)}") from exc
    if from_version == 0:
        log.info("event store %s: created at schema version %d", url, to_version)
    elif from_version != to_version:
        log.info("event store %s: migrated from version %d to %d", url, from_version, to_version)
    return from_version, to_version


def _check_version(version: int | None, url: str, location: str | Path, *, migrate: bool) -> None:
    """Raise :class:`StoreError` (:class:`SchemaVersionError` for a version mismatch) unless a
    database at ``version`` may be opened."""
    if version is None:
        raise StoreError(
            f"event store {url}: not an event store (the database has other tables and no "
            f"{m.SCHEMA_MIGRATIONS} table)"
        )
    if version > m.LATEST_VERSION:
        raise SchemaVersionError(
            f"event store {url}: schema version {version} is newer than this code "
            f"(knows up to {m.LATEST_VERSION}); upgrade xsell"
        )
    if 0 < version < m.LATEST_VERSION and not migrate:
        shown = url if "://" in str(location) else location  # a URL: its password masked
        raise SchemaVersionError(
            f"event store {url}: schema version {version}, this code needs "
            f"{m.LATEST_VERSION}: run `xsell store migrate --store {shown}`"
        )


def migrate_store(location: str | Path) -> tuple[int, int]:
    """Bring an existing store to the latest schema (``xsell store migrate``).

    Args:
        location: As for :meth:`EventStore.open`; the store must exist.

    Returns:
        ``(from_version, to_version)``; equal when it was already at the latest.

    Raises:
        StoreError: No store there, not an event store, newer than this code, or unreachable.
    """
    target = _resolve(location, create=False)
    engine = _create_engine(target)
    try:
        return _prepare(engine, _masked(target.url), location, migrate=True)
    finally:
        engine.dispose()
