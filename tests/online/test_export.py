"""The export of the live store into the data contract (``online/export.py``): a tiny
synthetic shop plus live rows written to a real SQLite store, exported and loaded back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.data import schema as s
from features.data.io import load_shop
from features.data.synthetic import generate_shop
from online.export import (
    FEEDBACK_DIR,
    IMPRESSION_COLUMNS,
    IMPRESSIONS_FILE,
    INCOMPLETE_PURCHASE,
    NO_PRODUCT,
    UNKNOWN_ID,
    UNKNOWN_RECOMMENDATION,
    export_to_contract,
)
from online.records import Feedback, LiveEvent, RecommendationRecord, RecommendedItem
from online.store import EventStore


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-customer synthetic shop (``truth/`` included), shared by the module's tests."""
    folder = tmp_path_factory.mktemp("shop")
    generate_shop(folder, n_customers=60, seed=1)
    return folder


@pytest.fixture(scope="module")
def last_ts(shop_dir: Path) -> datetime:
    """The latest ts of the shop's purchases and events."""
    shop = load_shop(shop_dir)
    assert shop.events is not None
    return max(shop.purchases[s.TS].max(), shop.events[s.TS].max()).to_pydatetime()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    """An empty store."""
    opened = EventStore.open(tmp_path / "store")
    yield opened
    opened.close()


def live(
    i: int, kind: str, ts: datetime, *, customer: str = "C0000001", product: str = "P00002"
) -> LiveEvent:
    """Live event ``L{i}``; purchases get an order, a price and 2 units."""
    purchase = kind == "purchase"
    return LiveEvent(
        event_id=f"L{i}",
        event_type=kind,
        customer_id=customer,
        product_id=product,
        ts=ts,
        order_id="LO1" if purchase else None,
        unit_price=344.99 if purchase else None,
        quantity=2.0 if purchase else 1.0,
        session_id=None if purchase else "LS1",
    )


def served(rec_id: str, ts: datetime, customer: str = "C0000002") -> RecommendationRecord:
    """An answer of two cross-sells and one upsell."""
    return RecommendationRecord(
        rec_id,
        customer,
        "cart",
        "treatment",
        "3",
        ts,
        (
            RecommendedItem("cross_sell", 1, "P00010", 0.9, 20.0),
            RecommendedItem("cross_sell", 2, "P00011", 0.4, 15.0),
            RecommendedItem("upsell", 1, "P00003", 0.6, 462.99),
        ),
    )


def fill(store: EventStore, after: datetime) -> None:
    """Live traffic after ``after``: 2 purchases, 3 browsing events, 1 answer with feedback."""
    t = [after + timedelta(minutes=k) for k in range(1, 20)]
    store.add_events(
        [
            live(1, "view", t[0]),
            live(2, "add_to_cart", t[1]),
            live(3, "purchase", t[2]),
            live(4, "purchase", t[2], product="P00010"),
            live(5, "remove_from_cart", t[3], product="P00010"),
        ]
    )
    store.add_recommendation(served("R1", t[4]))
    store.add_feedback(
        [
            Feedback("F1", "R1", "impression", None, t[5]),  # the whole answer: 3 items shown
            Feedback("F2", "R1", "click", "P00011", t[6]),
            Feedback("F3", "R1", "add_to_cart", "P00011", t[7]),
            Feedback("F4", "R1", "purchase", "P00011", t[8], 1.0, 15.0),  # not a purchase row
            Feedback("F5", "R1", "impression", "P00003", t[9]),  # one item shown again
        ]
    )


def test_the_export_loads_with_the_live_rows_appended(
    store: EventStore, shop_dir: Path, last_ts: datetime, tmp_path: Path
) -> None:
    fill(store, last_ts)
    before = load_shop(shop_dir)
    summary = export_to_contract(store, shop_dir, tmp_path / "out")

    after = load_shop(tmp_path / "out")
    assert before.events is not None and after.events is not None
    assert (summary.purchases_added, summary.events_added, summary.feedback_events_added) == (
        2,
        3,
        2,
    )
    assert summary.skipped_before_cutoff == 0
    assert summary.dropped == {}
    assert summary.cutoff == pd.Timestamp(last_ts)
    assert len(after.purchases) == len(before.purchases) + 2
    assert len(after.events) == len(before.events) + 5
    new_purchases = after.purchases.loc[after.purchases[s.TS] > last_ts]
    assert sorted(new_purchases[s.PRODUCT_ID]) == ["P00002", "P00010"]
    assert set(new_purchases[s.ORDER_ID]) == {"LO1"}
    assert set(new_purchases[s.QUANTITY]) == {2.0}
    new_events = after.events.loc[after.events[s.TS] > last_ts]
    assert list(new_events[s.EVENT_TYPE]) == [
        "view",
        "add_to_cart",
        "remove_from_cart",
        "view",  # the click
        "add_to_cart",  # the feedback add
    ]
    assert list(new_events[s.CUSTOMER_ID]) == ["C0000001"] * 3 + ["C0000002"] * 2
    assert new_events[s.SESSION_ID].isna().sum() == 2  # feedback carries no session
    pd.testing.assert_frame_equal(after.customers, before.customers)
    pd.testing.assert_frame_equal(after.products, before.products)
    for table in (s.CUSTOMERS, s.PRODUCTS):
        name = f"{table}.parquet"
        assert (tmp_path / "out" / name).read_bytes() == (shop_dir / name).read_bytes()


def test_impressions_are_exported_with_their_positions(
    store: EventStore, shop_dir: Path, last_ts: datetime, tmp_path: Path
) -> None:
    fill(store, last_ts)
    summary = export_to_contract(store, shop_dir, tmp_path / "out")
    shown = pd.read_parquet(tmp_path / "out" / FEEDBACK_DIR / IMPRESSIONS_FILE)
    assert tuple(shown.columns) == IMPRESSION_COLUMNS
    assert summary.impressions == len(shown) == 4
    assert list(zip(shown["task"], shown["position"], shown[s.PRODUCT_ID], strict=True)) == [
        ("cross_sell", 1, "P00010"),
        ("cross_sell", 2, "P00011"),
        ("upsell", 1, "P00003"),
        ("upsell", 1, "P00003"),
    ]
    assert set(shown[s.CUSTOMER_ID]) == {"C0000002"}
    assert set(shown["variant"]) == {"treatment"}


def test_live_rows_the_shop_already_has_are_skipped(
    store: EventStore, shop_dir: Path, last_ts: datetime, tmp_path: Path
) -> None:
    store.add_events([live(1, "view", last_ts), live(2, "purchase", last_ts - timedelta(days=3))])
    store.add_events([live(3, "view", last_ts + timedelta(seconds=1))])
    summary = export_to_contract(store, shop_dir, tmp_path / "out")
    assert summary.skipped_before_cutoff == 2
    assert (summary.purchases_added, summary.events_added) == (0, 1)


def test_a_re_export_adds_nothing_twice(
    store: EventStore, shop_dir: Path, last_ts: datetime, tmp_path: Path
) -> None:
    fill(store, last_ts)
    first = tmp_path / "first"
    export_to_contract(store, shop_dir, first)
    once = load_shop(first)
    again = export_to_contract(store, first, tmp_path / "second")  # from the exported shop
    assert (again.purchases_added, again.events_added, again.feedback_events_added) == (0, 0, 0)
    assert again.skipped_before_cutoff == 7
    twice = load_shop(tmp_path / "second")
    assert once.events is not None and twice.events is not None
    pd.testing.assert_frame_equal(twice.purchases, once.purchases)
    pd.testing.assert_frame_equal(twice.events, once.events)
    export_to_contract(store, shop_dir, first)  # the same export again, over itself
    assert len(load_shop(first).purchases) == len(once.purchases)
    assert not twice.dropped[s.PURCHASES]["exact duplicate line"]


def test_rows_the_loader_would_reject_are_dropped_and_counted(
    store: EventStore, shop_dir: Path, last_ts: datetime, tmp_path: Path
) -> None:
    t = last_ts + timedelta(minutes=1)
    incomplete = LiveEvent("L9", "purchase", "C0000001", "P00002", t, order_id=None, unit_price=5.0)
    store.add_events(
        [
            live(1, "view", t, customer="C9999999"),
            live(2, "purchase", t, product="P99999"),
            live(3, "view", t),
            incomplete,
        ]
    )
    store.add_recommendation(served("R1", t))
    store.add_recommendation(served("R2", t, customer="C8888888"))
    store.add_feedback(
        [
            Feedback("F1", "R1", "click", None, t),
            Feedback("F2", "R-gone", "click", "P00010", t),
            Feedback("F3", "R2", "click", "P00010", t),
        ]
    )
    summary = export_to_contract(store, shop_dir, tmp_path / "out", fmt="csv")
    assert summary.dropped == {
        UNKNOWN_ID: 3,
        INCOMPLETE_PURCHASE: 1,
        UNKNOWN_RECOMMENDATION: 1,
        NO_PRODUCT: 1,
    }
    assert (summary.purchases_added, summary.events_added, summary.feedback_events_added) == (
        0,
        1,
        0,
    )
    assert (tmp_path / "out" / "events.csv").exists()
    load_shop(tmp_path / "out")
    assert any("dropped 3 (unknown customer or product)" in line for line in summary.lines())


def test_out_must_not_be_the_shop_itself(store: EventStore, shop_dir: Path) -> None:
    with pytest.raises(ValueError, match="not the shop folder itself"):
        export_to_contract(store, shop_dir, shop_dir)
