"""The popularity fallback (``features/recommend.py: XsellModel.popular_fallback`` and the
``fallback`` flag of ``recommend_one``) on the hand-made tiny shop.

The bundle serves every task by a baseline, so no ranker is trained: the lists come from the
real candidates, features, guardrails and fallback.

In the tiny shop (prices: p1 499, p2 799, p3 19.9, p4 24.9, p5 29, p6 8.5) c1 is in segment
"value" (popular there: p1, p5, p6, then p3); everyone's most popular: p6, p1, p5, p2, p3, p4.
A cart holding only p6 caps cross-sell items at 1.5 x 8.5: no candidate survives, and the
fallback obeys the same rules (eligibility and guardrails), so nothing is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from features.config import FeatureConfig
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


@pytest.fixture
def lean(
    tiny_shop_dir: Path, tables: dict[str, pd.DataFrame], rewrite: Callable[..., Path]
) -> XsellModel:
    """One cross-sell candidate per query, and p6 (the global best seller) out of stock, so a
    query's only candidate can fail the guardrails while popular products pass them."""
    products = tables[s.PRODUCTS].assign(**{s.IN_STOCK: True})
    products.loc[products[s.PRODUCT_ID] == "p6", s.IN_STOCK] = False
    rewrite(tiny_shop_dir, s.PRODUCTS, products)
    snap = build_snapshot(
        load_shop(tiny_shop_dir), as_of=AS_OF, config=FeatureConfig(cross_sell_candidates=1)
    )
    return XsellModel(snapshot=snap, boosters={}, policies=dict(POLICIES))


def test_no_surviving_candidate_falls_back_to_popular_products(lean: XsellModel) -> None:
    got = _cross_sell(lean, UNKNOWN, ["p4"])
    assert got.fallback is True
    # the global top p6, p1, p5, p2, p3, p4 without p6 (sold out), p1 and p2 (above the cap of
    # 1.5 x 24.90), p3 (the cart's family) and p4 (in the cart)
    assert [i.product_id for i in got.items] == ["p5"]
    assert all(i.reason == POPULAR_REASON for i in got.items)
    assert all(i.score == 0.0 for i in got.items)
    price = lean.snapshot.products.price
    for item in got.items:
        assert item.price == pytest.approx(price[lean.snapshot.product_index[item.product_id]])
    assert got.policy == POLICIES[s.CROSS_SELL]


def test_the_fallback_obeys_every_cross_sell_rule(lean: XsellModel) -> None:
    snap = lean.snapshot
    bought = {"c1": {"p1", "p3", "p6", "p5"}, UNKNOWN: set()}
    family = dict(zip(snap.product_ids.tolist(), snap.products.family.tolist(), strict=True))
    served = 0
    for customer in bought:
        for cart in (["p2"], ["p1"], ["p4"], ["p2", "p4"]):
            got = _cross_sell(lean, customer, cart, k=10)
            cap = 1.5 * sum(snap.products.price[snap.product_index[p]] for p in cart)
            for item in got.items:
                pos = snap.product_index[item.product_id]
                assert item.product_id not in cart
                assert snap.products.in_stock[pos]
                assert item.product_id not in bought[customer]
                assert family[item.product_id] not in {family[p] for p in cart}
                assert item.price <= cap + 1e-9
            served += sum(i.reason == POPULAR_REASON for i in got.items)
    assert served > 0, "some of these requests must be served by the fallback"


def test_the_price_cap_applies_to_the_fallback_too(model: XsellModel) -> None:
    """A cart holding only p6 (8.50) caps items at 12.75: nothing qualifies, nothing is shown."""
    for customer in ("c1", UNKNOWN):
        got = _cross_sell(model, customer, ["p6"], k=10)
        assert got.items == [], customer
    assert _cross_sell(model, "c1", ["p6"]).fallback is False
    assert _cross_sell(model, UNKNOWN, ["p6"]).fallback is True  # unknown: always flagged


def test_an_unknown_customer_is_always_flagged(model: XsellModel) -> None:
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
