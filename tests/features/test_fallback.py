"""The popularity fallback (``features/recommend.py: XsellModel.popular_fallback`` and the
``fallback`` flag of ``recommend_one``) on the hand-made tiny shop.

The bundle serves every task by a baseline, so no ranker is trained: the lists come from the
real candidates, features, guardrails and fallback.

In the tiny shop (prices: p1 499, p2 799, p3 19.9, p4 24.9, p5 29, p6 8.5) c1 is in segment
"value" (popular there: p1, p5, p6, then p3); everyone's most popular: p6, p1, p5, p2, p3, p4.
A cart holding only p6 caps cross-sell items at 1.5 x 8.5: no candidate survives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from features.data import schema as s
from features.data.io import load_shop
from features.recommend import BASELINE_PREFIX, POPULAR_REASON, QueryResult, XsellModel
from features.snapshot import build_snapshot

AS_OF = pd.Timestamp("2024-03-15")
POLICIES = {
    s.CROSS_SELL: f"{BASELINE_PREFIX}popular",
    s.UPSELL: f"{BASELINE_PREFIX}popular",
    s.REPLENISH: f"{BASELINE_PREFIX}personal_frequency",
}
UNKNOWN = "c-never-seen"


def _model(shop_dir: Path) -> XsellModel:
    snap = build_snapshot(load_shop(shop_dir), as_of=AS_OF)
    return XsellModel(snapshot=snap, boosters={}, policies=dict(POLICIES))


@pytest.fixture
def model(tiny_shop_dir: Path) -> XsellModel:
    return _model(tiny_shop_dir)


@pytest.fixture
def model_p1_sold_out(
    tiny_shop_dir: Path, tables: dict[str, pd.DataFrame], rewrite: Callable[..., Path]
) -> XsellModel:
    """The tiny shop with p1 (popular everywhere) out of stock."""
    products = tables[s.PRODUCTS].assign(**{s.IN_STOCK: True})
    products.loc[products[s.PRODUCT_ID] == "p1", s.IN_STOCK] = False
    rewrite(tiny_shop_dir, s.PRODUCTS, products)
    return _model(tiny_shop_dir)


def _ids(model: XsellModel, positions: list[int]) -> list[str]:
    return [str(model.snapshot.product_ids[p]) for p in positions]


def _pos(model: XsellModel, ids: list[str]) -> set[int]:
    return {model.snapshot.product_index[p] for p in ids}


def _cross_sell(model: XsellModel, customer: str, cart: list[str], k: int = 3) -> QueryResult:
    got = model.recommend_one(
        customer_id=customer, placement="cart", product_id=None, cart=cart, k={s.CROSS_SELL: k}
    )
    assert set(got) == {s.CROSS_SELL}
    return got[s.CROSS_SELL]


# ------------------------------------------------------------------------------------------
# popular_fallback
# ------------------------------------------------------------------------------------------


def test_a_known_customer_gets_the_segment_top(model: XsellModel) -> None:
    c1 = model.snapshot.customer_index["c1"]
    assert _ids(model, model.popular_fallback(c1, set(), 10)) == ["p1", "p5", "p6", "p3"]
    assert _ids(model, model.popular_fallback(c1, _pos(model, ["p6"]), 2)) == ["p1", "p5"]
    assert model.popular_fallback(c1, set(), 0) == []


def test_an_unknown_customer_gets_the_global_top(model: XsellModel) -> None:
    assert _ids(model, model.popular_fallback(-1, set(), 10)) == [
        "p6",
        "p1",
        "p5",
        "p2",
        "p3",
        "p4",
    ]
    excluded = _pos(model, ["p6", "p2"])
    assert _ids(model, model.popular_fallback(-1, excluded, 3)) == ["p1", "p5", "p3"]


def test_the_fallback_skips_out_of_stock_products(model_p1_sold_out: XsellModel) -> None:
    m = model_p1_sold_out
    assert not m.snapshot.products.in_stock[m.snapshot.product_index["p1"]]
    c1 = m.snapshot.customer_index["c1"]
    assert _ids(m, m.popular_fallback(c1, set(), 10)) == ["p5", "p6", "p3"]
    assert _ids(m, m.popular_fallback(-1, set(), 10)) == ["p6", "p5", "p2", "p3", "p4"]


# ------------------------------------------------------------------------------------------
# recommend_one: when the fallback is used, and the flag
# ------------------------------------------------------------------------------------------


def test_no_surviving_candidate_falls_back_to_popular_products(model: XsellModel) -> None:
    got = _cross_sell(model, "c1", ["p6"])
    assert got.fallback is True
    assert [i.product_id for i in got.items] == ["p1", "p5", "p3"]
    assert all(i.reason == POPULAR_REASON for i in got.items)
    assert all(i.score == 0.0 for i in got.items)
    price = model.snapshot.products.price
    for item in got.items:
        assert item.price == pytest.approx(price[model.snapshot.product_index[item.product_id]])
    assert got.policy == POLICIES[s.CROSS_SELL]


def test_the_fallback_never_returns_the_cart(model: XsellModel) -> None:
    """p6 tops both popularity lists; in the cart, it is left out of the fallback."""
    expected = {"c1": ["p1", "p5", "p3"], UNKNOWN: ["p1", "p5", "p2", "p3", "p4"]}
    for customer, ids in expected.items():
        got = _cross_sell(model, customer, ["p6"], k=10)
        assert got.fallback is True
        assert all(i.reason == POPULAR_REASON for i in got.items)
        assert [i.product_id for i in got.items] == ids, customer


def test_the_fallback_never_returns_out_of_stock_products(model_p1_sold_out: XsellModel) -> None:
    for customer in ("c1", UNKNOWN):
        got = _cross_sell(model_p1_sold_out, customer, ["p6"], k=10)
        ids = [i.product_id for i in got.items]
        assert got.fallback is True
        assert ids and "p1" not in ids and "p6" not in ids, customer


def test_an_unknown_customer_is_always_flagged(model: XsellModel) -> None:
    # no candidate survives the price cap: the global top, minus the cart
    capped = _cross_sell(model, UNKNOWN, ["p6"])
    assert capped.fallback is True
    assert [i.product_id for i in capped.items] == ["p1", "p5", "p2"]
    assert all(i.reason == POPULAR_REASON for i in capped.items)
    # candidates survive (segment-free popularity): served normally, still flagged
    served = _cross_sell(model, UNKNOWN, [])
    assert served.fallback is True
    assert served.items
    assert all(i.reason != POPULAR_REASON for i in served.items)


def test_a_known_customer_with_candidates_is_not_a_fallback(model: XsellModel) -> None:
    got = _cross_sell(model, "c2", ["p2"])
    assert got.fallback is False
    assert got.items
    assert all(i.reason != POPULAR_REASON for i in got.items)
    assert "p2" not in {i.product_id for i in got.items}


def test_tasks_without_a_popular_fallback_stay_empty(model: XsellModel) -> None:
    """Replenish declares no popularity fallback: an unknown customer gets an empty list."""
    got = model.recommend_one(
        customer_id=UNKNOWN, placement="cart", product_id=None, cart=["p6"], k={s.REPLENISH: 3}
    )
    assert got[s.REPLENISH].items == []
    assert got[s.REPLENISH].fallback is True
