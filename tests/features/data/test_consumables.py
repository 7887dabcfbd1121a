"""Consumability inferred from repurchases: rate arithmetic, point in time, recovery, report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data import schema as s
from features.data.consumables import (
    DEFAULT_THRESHOLD,
    DISAGREE_MIN_BUYERS,
    ConsumableEstimate,
    infer_consumable,
    infer_shop_consumables,
    repurchase_rates,
    shop_repurchase_rates,
)
from features.data.io import Shop, load_shop, shop_report
from features.data.synthetic import generate_shop

Tables = dict[str, pd.DataFrame]

# Hand-made lines (customer, product, day); horizon 10 days, as_of day 30, 2 pseudo-buyers.
# Products 0, 1 in category 0; products 2, 3 in category 1; product 4 in category 2.
HAND_LINES = [
    # product 0: c0 rebuys on day 5; c1's second line is the same calendar day and the third
    # is 14 days later (outside the horizon); c2 first buys on day 25 (censored: 35 > 30);
    # c3's later lines are at or after as_of. Eligible 3, rebuyers 1.
    (0, 0, 0.5),
    (0, 0, 5.2),
    (1, 0, 1.0),
    (1, 0, 1.9),
    (1, 0, 15.0),
    (2, 0, 25.0),
    (2, 0, 27.0),
    (3, 0, 3.0),
    (3, 0, 30.0),
    (3, 0, 31.0),
    # product 1: c0 rebuys exactly 10 days later (inside), c4 after 4 days. Eligible 2, rebuy 2.
    (0, 1, 2.0),
    (0, 1, 12.0),
    (4, 1, 4.0),
    (4, 1, 8.0),
    # product 2: c1 never again; c2 rebuys; c3 first buys on day 20 (20 + 10 <= 30: eligible)
    # and rebuys. Eligible 3, rebuyers 2. Products 3 and 4 are never sold.
    (1, 2, 0.0),
    (2, 2, 10.0),
    (2, 2, 19.5),
    (3, 2, 20.0),
    (3, 2, 22.0),
]
HAND_CATEGORY = np.array([0, 0, 1, 1, 2])


def hand_estimate(
    lines: list[tuple[int, int, float]] = HAND_LINES, as_of_day: float = 30.0
) -> ConsumableEstimate:
    customer, product, day = (np.array(col) for col in zip(*lines, strict=True))
    return repurchase_rates(
        customer,
        product,
        day,
        HAND_CATEGORY,
        n_products=5,
        n_categories=3,
        horizon_days=10.0,
        prior_strength=2.0,
        as_of_day=as_of_day,
    )


def test_rate_arithmetic_with_censoring_and_shrinkage() -> None:
    est = hand_estimate()
    assert est.n_buyers.tolist() == [3, 2, 3, 0, 0]
    assert est.n_rebuyers.tolist() == [1, 2, 2, 0, 0]
    np.testing.assert_allclose(est.raw_rate[:3], [1 / 3, 1.0, 2 / 3])
    assert np.isnan(est.raw_rate[3:]).all()
    # global 5/8; category 0: (3 + 2 * 5/8) / (5 + 2); category 1: (2 + 2 * 5/8) / (3 + 2);
    # category 2 has no buyers and takes the global rate.
    assert est.global_rate == pytest.approx(0.625)
    assert est.category_rate.tolist() == pytest.approx([4.25 / 7, 0.65, 0.625])
    cat0 = 4.25 / 7
    assert est.rate.tolist() == pytest.approx(
        [(1 + 2 * cat0) / 5, (2 + 2 * cat0) / 4, (2 + 1.3) / 5, 0.65, 0.625]
    )
    assert infer_consumable(est, 0.65).tolist() == [False, True, True, True, False]
    assert est.infer_consumable(0.65).tolist() == [False, True, True, True, False]


def test_no_shrinkage_gives_raw_rates_and_priors_for_unsold() -> None:
    customer, product, day = (np.array(col) for col in zip(*HAND_LINES, strict=True))
    est = repurchase_rates(
        customer,
        product,
        day,
        HAND_CATEGORY,
        n_products=5,
        n_categories=3,
        horizon_days=10.0,
        prior_strength=0.0,
        as_of_day=30.0,
    )
    assert est.rate.tolist() == pytest.approx([1 / 3, 1.0, 2 / 3, 2 / 3, 0.625])


def test_no_eligible_buyer_infers_nothing() -> None:
    est = repurchase_rates(
        np.array([0, 0]),
        np.array([0, 0]),
        np.array([1.0, 3.0]),
        np.array([0]),
        n_products=1,
        n_categories=1,
        horizon_days=90.0,
        prior_strength=20.0,
        as_of_day=30.0,
    )
    assert est.n_buyers.tolist() == [0]
    assert est.global_rate == 0.0
    assert not infer_consumable(est).any()


@pytest.mark.parametrize("as_of_day", [12.0, 20.0, 22.0, 30.0])
def test_lines_at_or_after_as_of_change_nothing(as_of_day: float) -> None:
    # At 12.0 a rebuy (c0, product 1) falls exactly on as_of; at 20.0 a first purchase does.
    before = [line for line in HAND_LINES if line[2] < as_of_day]
    base = hand_estimate(before, as_of_day)
    rng = np.random.default_rng(0)
    late = zip(
        rng.integers(0, 8, 200).tolist(),
        rng.integers(0, 5, 200).tolist(),
        rng.uniform(as_of_day, as_of_day + 30.0, 200).tolist(),
        strict=True,
    )
    leaked = hand_estimate([*HAND_LINES, *late, (5, 3, as_of_day)], as_of_day)
    for name in ("rate", "raw_rate", "n_buyers", "n_rebuyers", "category_rate"):
        np.testing.assert_array_equal(getattr(leaked, name), getattr(base, name), err_msg=name)
    assert leaked.global_rate == base.global_rate


def test_shop_rates_point_in_time(tiny_shop_dir: Path) -> None:
    shop = load_shop(tiny_shop_dir)
    as_of = pd.Timestamp("2024-02-15")
    before = shop_repurchase_rates(shop, as_of=as_of, horizon_days=14.0)
    purchases = shop.purchases
    future = purchases.assign(ts=as_of + pd.to_timedelta(np.arange(len(purchases)), unit="h"))
    leaked = dataclasses.replace(shop, purchases=pd.concat([purchases, future], ignore_index=True))
    after = shop_repurchase_rates(leaked, as_of=as_of, horizon_days=14.0)
    np.testing.assert_array_equal(after.rate, before.rate)
    np.testing.assert_array_equal(after.n_buyers, before.n_buyers)


def test_infer_shop_consumables_frame(tiny_shop_dir: Path) -> None:
    shop = load_shop(tiny_shop_dir)
    out = infer_shop_consumables(shop, horizon_days=14.0, prior_strength=0.0, threshold=0.5)
    assert list(out.columns) == [
        s.PRODUCT_ID,
        "rate",
        "raw_rate",
        "n_buyers",
        "n_rebuyers",
        "inferred",
    ]
    assert out[s.PRODUCT_ID].tolist() == shop.products[s.PRODUCT_ID].tolist()
    row = out.set_index(s.PRODUCT_ID).loc["p6"]
    # p6 (coffee), as_of one day after the last purchase (Mar 2 07:30): c4 (Jan 20, again
    # Mar 1: 40 days later), c5 (Feb 1) and c1 (Feb 3) are eligible; c3 (Feb 20) is censored.
    assert (row["n_buyers"], row["n_rebuyers"]) == (3, 0)
    assert not out["inferred"].any()


# --- the synthetic shop ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "shop"
    generate_shop(out, n_customers=800, seed=3)
    return out


def unlabelled(shop: Shop) -> Shop:
    products = shop.products.assign(**{s.IS_CONSUMABLE: False})
    return dataclasses.replace(shop, products=products, consumable_labelled=False)


def test_recovers_planted_consumables(synthetic_dir: Path) -> None:
    shop = load_shop(synthetic_dir)
    planted = shop.products[s.IS_CONSUMABLE].to_numpy(dtype=bool)
    inferred = infer_shop_consumables(unlabelled(shop))["inferred"].to_numpy()
    lines = (
        shop.purchases[s.PRODUCT_ID].value_counts().reindex(shop.products[s.PRODUCT_ID]).fillna(0)
    ).to_numpy()
    # Measured with the defaults: accuracy 0.997 by product, 0.994 by order line.
    assert (inferred == planted).mean() > 0.97
    assert ((inferred == planted) * lines).sum() / lines.sum() > 0.97
    assert (inferred & planted).sum() / inferred.sum() > 0.95  # precision
    assert (inferred & planted).sum() / planted.sum() > 0.95  # recall


def test_report_lists_flipped_labels(synthetic_dir: Path, rewrite: Callable[..., Path]) -> None:
    shop = load_shop(synthetic_dir)
    est = shop_repurchase_rates(shop)
    planted = shop.products[s.IS_CONSUMABLE].to_numpy(dtype=bool)
    enough = est.n_buyers >= DISAGREE_MIN_BUYERS
    raw = np.nan_to_num(est.raw_rate)
    to_durable = np.flatnonzero(planted & enough)[np.argsort(-raw[planted & enough])][:3]
    to_consumable = np.flatnonzero(~planted & enough & (est.n_rebuyers == 0))[:2]
    assert len(to_durable) == 3 and len(to_consumable) >= 1
    flipped = planted.copy()
    flipped[to_durable] = False
    flipped[to_consumable] = True
    products = pd.read_parquet(synthetic_dir / "products.parquet")
    rewrite(synthetic_dir, s.PRODUCTS, products.assign(**{s.IS_CONSUMABLE: flipped}))
    try:
        report = shop_report(load_shop(synthetic_dir))
    finally:
        rewrite(synthetic_dir, s.PRODUCTS, products)
    check = report.consumability
    assert check is not None and check.labelled
    assert check.durable_rebought == 3
    assert check.consumable_not_rebought == len(to_consumable)
    ids = shop.products[s.PRODUCT_ID].to_numpy()
    listed = {d.product_id for d in check.examples}
    assert listed == {str(p) for p in ids[np.concatenate([to_durable, to_consumable])]}
    text = "\n".join(report.lines())
    assert f"strongly disagrees with {3 + len(to_consumable)} labelled product(s)" in text
    first = check.examples[0]
    assert f"  {first.product_id} ({first.category}): labelled" in text


def test_report_on_planted_labels_finds_no_disagreement(synthetic_dir: Path) -> None:
    check = shop_report(load_shop(synthetic_dir)).consumability
    assert check is not None and check.labelled and check.n_disagreements == 0


def test_report_says_inferred_when_unlabelled(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    rewrite(tiny_shop_dir, s.PRODUCTS, tables[s.PRODUCTS].drop(columns=s.IS_CONSUMABLE))
    shop = load_shop(tiny_shop_dir)
    assert not shop.consumable_labelled
    assert not shop.products[s.IS_CONSUMABLE].any()
    lines = [line for line in shop_report(shop).lines() if line.startswith("consumability")]
    assert len(lines) == 1
    assert "inferred" in lines[0] and "of 6 products consumable" in lines[0]
    assert f">= {DEFAULT_THRESHOLD:.0%} of buyers" in lines[0]


def test_labelled_flag(tiny_shop_dir: Path) -> None:
    shop = load_shop(tiny_shop_dir)
    assert shop.consumable_labelled
    by_hand = Shop(shop.customers, shop.products, shop.purchases)
    assert by_hand.consumable_labelled
