"""The event store's schema history: explicit, ordered, versioned migrations.

Each :class:`Migration` is one frozen step written in portable SQLAlchemy Core (it runs on
SQLite and PostgreSQL). A step never changes once released: a later schema is a new step, so a
database created by any release can be brought to the latest schema by applying, in order, the
steps it has not seen. The ``schema_migrations`` table records every applied version with its
description and the time it was applied (UTC); the database's schema version is the highest
version recorded there.

The tables as the code reads and writes them today are declared in :mod:`online.store`; a test
checks that applying every migration to an empty database yields exactly those tables,
columns and indexes.

Versions:

1. The tables: ``events`` (index on ``(customer_id, ts)``), ``recommendations``,
   ``recommendation_items`` and ``feedback`` (index on ``recommendation_id``).
2. An index on ``events.recommendation_id``: attributing live events to the recommendation
   they answer (the experiment report) without scanning every event.
3. The per-customer read (``customer_events``, on every request) from one index range: an
   index on ``(customer_id, ts, event_id)`` followed by every other column the read returns
   replaces ``(customer_id, ts)``. On a store of a million events it reads one or two index
   pages instead of one table page per event and needs no sort (p50 0.21 -> 0.09 ms for the
   query; the database grows by about 45% and a 500-event batch costs 10-20% more:
   ``benchmarks/store.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

log = logging.getLogger(__name__)

SCHEMA_MIGRATIONS = "schema_migrations"

_history = sa.MetaData()
schema_migrations = sa.Table(
    SCHEMA_MIGRATIONS,
    _history,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String, nullable=False),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """One schema step.

    Attributes:
        version: Schema version the database is at once this step is applied (1, 2, ...).
        description: What the step does, recorded in ``schema_migrations``.
        apply: Runs the step's DDL on a connection inside the caller's transaction.
    """

    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _v1_create_tables(conn: sa.Connection) -> None:
    """Version 1: the four tables of the online loop (frozen: never edit, add a step)."""
    md = sa.MetaData()
    events = sa.Table(
        "events",
        md,
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
    )
    sa.Index("ix_events_customer_ts", events.c.customer_id, events.c.ts)
    sa.Table(
        "recommendations",
        md,
        sa.Column("recommendation_id", sa.String, primary_key=True),
        sa.Column("customer_id", sa.String, nullable=False),
        sa.Column("placement", sa.String, nullable=False),
        sa.Column("variant", sa.String, nullable=False),
        sa.Column("model_version", sa.String, nullable=False),
        sa.Column("ts", sa.DateTime, nullable=False),
    )
    sa.Table(
        "recommendation_items",
        md,
        sa.Column("recommendation_id", sa.String, primary_key=True),
        sa.Column("task", sa.String, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("product_id", sa.String, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("price", sa.Float, nullable=False),
    )
    feedback = sa.Table(
        "feedback",
        md,
        sa.Column("feedback_id", sa.String, primary_key=True),
        sa.Column("recommendation_id", sa.String, nullable=False),
        sa.Column("event_type", sa.String, nullable=False),
        sa.Column("product_id", sa.String),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("quantity", sa.Float, nullable=False),
        sa.Column("unit_price", sa.Float),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    sa.Index("ix_feedback_recommendation_id", feedback.c.recommendation_id)
    md.create_all(conn)


def _v2_index_events_recommendation(conn: sa.Connection) -> None:
    """Version 2: index ``events.recommendation_id`` (frozen: never edit, add a step)."""
    events = sa.Table("events", sa.MetaData(), sa.Column("recommendation_id", sa.String))
    sa.Index("ix_events_recommendation_id", events.c.recommendation_id).create(conn)


def _v3_covering_customer_index(conn: sa.Connection) -> None:
    """Version 3: the per-customer read from one index (frozen: never edit, add a step)."""
    md = sa.MetaData()
    events = sa.Table("events", md, *(sa.Column(name, sa.String) for name in _V3_READ_COLUMNS))
    sa.Index("ix_events_customer_ts", events.c.customer_id, events.c.ts).drop(conn)
    sa.Index("ix_events_customer_read", *(events.c[name] for name in _V3_READ_COLUMNS)).create(conn)


# Version 3's index key: the read's filter and order, then every column it returns.
_V3_READ_COLUMNS = (
    "customer_id",
    "ts",
    "event_id",
    "event_type",
    "product_id",
    "order_id",
    "unit_price",
    "quantity",
    "session_id",
    "recommendation_id",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "create events, recommendations, recommendation_items, feedback", _v1_create_tables
    ),
    Migration(2, "index events.recommendation_id", _v2_index_events_recommendation),
    Migration(
        3,
        "covering index for the per-customer read (replaces ix_events_customer_ts)",
        _v3_covering_customer_index,
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sa.Connection) -> int | None:
    """The database's schema version.

    Returns:
        The highest applied version; 0 for an empty database (no tables at all); None when
        the database has tables but no ``schema_migrations`` table (not an event store).
    """
    names = set(sa.inspect(conn).get_table_names())
    if SCHEMA_MIGRATIONS not in names:
        return 0 if not names else None
    version = conn.execute(sa.select(sa.func.max(schema_migrations.c.version))).scalar()
    return int(version or 0)


def pending(version: int, *, target: int = LATEST_VERSION) -> tuple[Migration, ...]:
    """The migrations that bring a database at ``version`` to ``target``, in order."""
    return tuple(m for m in MIGRATIONS if version < m.version <= target)


def apply_migrations(conn: sa.Connection, *, target: int = LATEST_VERSION) -> tuple[int, int]:
    """Apply the pending migrations up to ``target`` in the caller's transaction.

    The caller holds a write transaction (and, for concurrent openers, a lock: see
    :mod:`online.store`); this reads the version inside it, so two processes creating the same
    new database do not both create its tables.

    Args:
        conn: A connection inside a transaction.
        target: Version to stop at (default: the latest). Tests use 1 to build an old database.

    Returns:
        ``(from_version, to_version)``; equal when nothing was pending.

    Raises:
        ValueError: ``target`` is not a known version, or the database is not an event store
            or is newer than ``target``.
    """
    if target not in {m.version for m in MIGRATIONS}:
        raise ValueError(
            f"unknown schema version {target}; known: {[m.version for m in MIGRATIONS]}"
        )
    version = schema_version(conn)
    if version is None:
        raise ValueError("the database has tables but no schema_migrations table")
    if version > target:
        raise ValueError(f"the database is at schema version {version}, newer than {target}")
    steps = pending(version, target=target)
    if steps and version == 0:
        _history.create_all(conn)
    for step in steps:
        step.apply(conn)
        conn.execute(
            sa.insert(schema_migrations).values(
                version=step.version,
                description=step.description,
                applied_at=datetime.now(UTC).replace(tzinfo=None),
            )
        )
        log.info("event store: applied migration %d (%s)", step.version, step.description)
    return version, steps[-1].version if steps else version
