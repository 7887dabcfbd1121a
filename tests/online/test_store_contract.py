"""The event store's contract, once for every backend: SQLite on a real file always, a real
PostgreSQL server when ``XSELL_TEST_POSTGRES_URL`` is set. Idempotent ingest, the per-customer
read, recommendations and feedback. Backend-specific checks are in ``test_store.py`` (SQLite)
and ``test_store_postgres.py``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from store_rows import NO_POSTGRES, POSTGRES_URL, T0, event, postgres_schema, record

from online.records import Feedback, LiveEvent, RecommendationRecord, RecommendedItem
from online.store import EventStore


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """A new store of each backend."""
    if request.param == "sqlite":
        opened = EventStore.open(tmp_path / "store")
        yield opened
        opened.close()
        return
    with postgres_schema() as url:
        opened = EventStore.open(url)
        yield opened
        opened.close()


def test_the_same_batch_twice_is_stored_once(store: EventStore) -> None:
    batch = [event(i) for i in range(10)]
    assert store.add_events(batch) == (10, 0)
    assert store.add_events(batch) == (0, 10)
    assert store.add_events([*batch[:3], event(10)]) == (1, 3)
    assert store.counts()["events"] == 11


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
