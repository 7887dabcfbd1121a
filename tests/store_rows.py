"""Shared by the event store tests: rows to store, and a PostgreSQL schema per test when
``XSELL_TEST_POSTGRES_URL`` names a test database (see ``tests/online/test_store_postgres.py``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa

from online.records import LiveEvent, RecommendationRecord, RecommendedItem

T0 = datetime(2025, 6, 1, 12, 0)
POSTGRES_ENV = "XSELL_TEST_POSTGRES_URL"
POSTGRES_URL = os.environ.get(POSTGRES_ENV, "")
NO_POSTGRES = f"{POSTGRES_ENV} is not set (a postgresql+psycopg:// URL of a test database)"


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


def postgres_server() -> sa.URL:
    """The test database's URL."""
    return sa.make_url(POSTGRES_URL)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema of the test database (``search_path`` set through the
    URL, password in clear), dropped afterwards."""
    schema = f"xsell_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server())
    try:
        with admin.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
        url = postgres_server().update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        admin.dispose()
