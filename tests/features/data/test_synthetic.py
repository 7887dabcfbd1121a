"""Tests of the synthetic shop generator: determinism, integrity and the planted behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data import schema as s
from features.data.synthetic import (
    COMPLEMENTS,
    INCOME_BAND,
    TRUTH_COMPLEMENTS,
    TRUTH_CUSTOMER_PARAMS,
    TRUTH_DIR,
    TRUTH_FAMILIES,
    ShopSummary,
    generate_shop,
)

N_CUSTOMERS = 400
START = pd.Timestamp("2025-01-01")
DAYS = 365


@dataclass(frozen=True)
class Shop:
    """A generated shop read back with pandas."""

    summary: ShopSummary
    customers: pd.DataFrame
    products: pd.DataFrame
    purchases: pd.DataFrame
    events: pd.DataFrame
    complements: pd.DataFrame
    families: pd.DataFrame
    customer_params: pd.DataFrame

    @property
    def lines(self) -> pd.DataFrame:
        """Bought order lines (returns excluded) with their product attributes."""
        bought = self.purchases[self.purchases[s.QUANTITY] > 0]
        return bought.merge(self.products, on=s.PRODUCT_ID, how="left")


def _read(folder: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{table}.parquet")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """A 400-customer shop in three chunks (so ids must stay unique across chunks)."""
    folder = tmp_path_factory.mktemp("shop")
    summary = generate_shop(folder, n_customers=N_CUSTOMERS, seed=7, chunk_customers=150)
    truth = folder / TRUTH_DIR
    return Shop(
        summary=summary,
        customers=_read(folder, s.CUSTOMERS),
        products=_read(folder, s.PRODUCTS),
        purchases=_read(folder, s.PURCHASES),
        events=_read(folder, s.EVENTS),
        complements=_read(truth, TRUTH_COMPLEMENTS),
        families=_read(truth, TRUTH_FAMILIES),
        customer_params=_read(truth, TRUTH_CUSTOMER_PARAMS),
    )


# ------------------------------------------------------------------------------------------
# Determinism and arguments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_arguments_give_byte_identical_files(tmp_path: Path, fmt: str) -> None:
    a = generate_shop(tmp_path / "a", n_customers=300, seed=3, fmt=fmt, chunk_customers=120)
    b = generate_shop(tmp_path / "b", n_customers=300, seed=3, fmt=fmt, chunk_customers=120)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    expected = {f"{t}.{fmt}" for t in s.TABLE_ORDER} | {
        f"{TRUTH_DIR}/{t}.{fmt}" for t in (TRUTH_COMPLEMENTS, TRUTH_FAMILIES, TRUTH_CUSTOMER_PARAMS)
    }
    assert set(files_a) == expected
    assert files_a == files_b
    assert (a.n_purchases, a.n_events) == (b.n_purchases, b.n_events)


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate_shop(tmp_path / "a", n_customers=300, seed=1)
    generate_shop(tmp_path / "b", n_customers=300, seed=2)
    for table in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES, s.EVENTS):
        assert not _read(tmp_path / "a", table).equals(_read(tmp_path / "b", table)), table


def test_csv_holds_the_same_data_as_parquet(tmp_path: Path) -> None:
    generate_shop(tmp_path / "pq", n_customers=200, seed=5, fmt="parquet")
    generate_shop(tmp_path / "csv", n_customers=200, seed=5, fmt="csv")
    for table in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES, s.EVENTS):
        pq_frame = _read(tmp_path / "pq", table)
        csv_frame = pd.read_csv(tmp_path / "csv" / f"{table}.csv")
        for column in (s.TS, s.SIGNUP_DATE):
            if column in csv_frame:
                csv_frame[column] = pd.to_datetime(csv_frame[column])
                pq_frame[column] = pq_frame[column].astype(csv_frame[column].dtype)
        pd.testing.assert_frame_equal(csv_frame, pq_frame, check_dtype=False)


def test_rewriting_in_the_other_format_removes_stale_files(tmp_path: Path) -> None:
    generate_shop(tmp_path, n_customers=50, fmt="parquet")
    generate_shop(tmp_path, n_customers=50, fmt="csv")
    assert not list(tmp_path.rglob("*.parquet"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_customers": 0},
        {"n_customers": 10, "seed": -1},
        {"n_customers": 10, "fmt": "json"},
        {"n_customers": 10, "days": 1},
        {"n_customers": 10, "chunk_customers": 0},
    ],
)
def test_invalid_arguments_are_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_shop(tmp_path, **kwargs)


# ------------------------------------------------------------------------------------------
# Contract: types, keys, references, ranges
# ------------------------------------------------------------------------------------------


def test_summary_matches_the_files(shop: Shop) -> None:
    summary = shop.summary
    assert summary.n_customers == len(shop.customers) == N_CUSTOMERS
    assert summary.n_products == len(shop.products)
    assert summary.n_purchases == len(shop.purchases)
    assert summary.n_orders == shop.purchases[s.ORDER_ID].nunique()
    assert summary.n_returns == int((shop.purchases[s.QUANTITY] < 0).sum())
    assert summary.n_events == len(shop.events)
    assert summary.n_sessions == shop.events[s.SESSION_ID].nunique()


def test_column_types(shop: Shop) -> None:
    tables = (shop.customers, shop.products, shop.purchases, shop.events)
    for frame in tables:
        for column in (s.CUSTOMER_ID, s.PRODUCT_ID, s.ORDER_ID, s.SESSION_ID):
            if column in frame:
                assert pd.api.types.is_string_dtype(frame[column]), column
        for column in (s.TS, s.SIGNUP_DATE):
            if column in frame:
                assert pd.api.types.is_datetime64_dtype(frame[column]), column
                assert frame[column].dt.tz is None
    assert shop.products[s.PRICE].dtype == np.float64
    assert shop.purchases[s.UNIT_PRICE].dtype == np.float64
    assert pd.api.types.is_integer_dtype(shop.purchases[s.QUANTITY])
    assert pd.api.types.is_bool_dtype(shop.products[s.IS_CONSUMABLE])
    assert set(shop.products[s.TIER]) == {1, 2, 3}


def test_keys_are_unique_across_chunks(shop: Shop) -> None:
    assert shop.customers[s.CUSTOMER_ID].is_unique
    assert shop.products[s.PRODUCT_ID].is_unique
    # An order belongs to one customer at one time; a session to one customer.
    per_order = shop.purchases.groupby(s.ORDER_ID)[[s.CUSTOMER_ID, s.TS]].nunique()
    assert (per_order == 1).all().all()
    assert not shop.purchases.duplicated([s.ORDER_ID, s.PRODUCT_ID]).any()
    assert (shop.events.groupby(s.SESSION_ID)[s.CUSTOMER_ID].nunique() == 1).all()


def test_every_reference_exists(shop: Shop) -> None:
    customers = set(shop.customers[s.CUSTOMER_ID])
    products = set(shop.products[s.PRODUCT_ID])
    for frame in (shop.purchases, shop.events, shop.customer_params):
        assert set(frame[s.CUSTOMER_ID]) <= customers
    for frame in (shop.purchases, shop.events, shop.families):
        assert set(frame[s.PRODUCT_ID]) <= products


def test_values_are_in_range(shop: Shop) -> None:
    end = START + pd.Timedelta(days=DAYS)
    assert (shop.products[s.PRICE] > 0).all()
    assert (shop.purchases[s.UNIT_PRICE] > 0).all()
    assert (shop.purchases[s.UNIT_PRICE] <= shop.purchases.merge(shop.products)[s.PRICE]).all()
    assert (shop.purchases[s.QUANTITY] != 0).all()
    for frame in (shop.purchases, shop.events):
        assert frame[s.TS].between(START, end, inclusive="left").all()
        assert (frame[s.TS] == frame[s.TS].dt.floor("s")).all()
    assert set(shop.events[s.EVENT_TYPE]) == set(s.EVENT_TYPES)
    signup = shop.customers.set_index(s.CUSTOMER_ID)[s.SIGNUP_DATE]
    for frame in (shop.purchases, shop.events):
        assert (frame[s.TS].to_numpy() > signup.loc[frame[s.CUSTOMER_ID]].to_numpy()).all()


def test_passes_the_shop_loader(shop: Shop) -> None:
    io = pytest.importorskip("features.data.io")
    loaded = io.load_shop(shop.summary.out)
    assert len(loaded.purchases) == len(shop.purchases)
    assert len(loaded.events) == len(shop.events)


# ------------------------------------------------------------------------------------------
# Catalog
# ------------------------------------------------------------------------------------------


def test_catalog_has_fixed_size_and_tier_ladders(shop: Shop, tmp_path: Path) -> None:
    products = shop.products
    assert 600 <= len(products) <= 1500
    assert generate_shop(tmp_path, n_customers=20, seed=7).n_products == len(products)
    assert products[s.IN_STOCK].mean() == pytest.approx(0.97, abs=0.03)
    ladder = products.sort_values([s.FAMILY, s.BRAND, s.TIER])
    assert ladder.groupby([s.FAMILY, s.BRAND])[s.TIER].apply(lambda t: list(t) == [1, 2, 3]).all()
    uplift = ladder[s.PRICE] / ladder.groupby([s.FAMILY, s.BRAND])[s.PRICE].shift()
    uplift = uplift.dropna()
    assert (uplift > 1.0).all()
    # Some next tiers fit a 25% upsell cap, some don't.
    assert 0.2 < (uplift <= 1.25).mean() < 0.8
    assert (products.groupby(s.FAMILY)[s.BRAND].nunique() == 2).all()
    assert products[s.IS_CONSUMABLE].any() and not products[s.IS_CONSUMABLE].all()
    truth = shop.families.merge(products, on=[s.PRODUCT_ID, s.FAMILY, s.CATEGORY, s.TIER])
    assert len(truth) == len(products)


# ------------------------------------------------------------------------------------------
# Planted behaviour
# ------------------------------------------------------------------------------------------


def _order_lift(lines: pd.DataFrame, category: str, complement: str) -> float:
    """Share of orders with both categories over the share expected under independence."""
    orders = lines.groupby(s.ORDER_ID)[s.CATEGORY].agg(set)
    has_a = orders.apply(lambda cats: category in cats)
    has_b = orders.apply(lambda cats: complement in cats)
    return (has_a & has_b).mean() / (has_a.mean() * has_b.mean())


def test_planted_complements_are_bought_together(shop: Shop) -> None:
    lines = shop.lines
    planted = {(r.category, r.complement) for r in COMPLEMENTS}
    assert planted == set(
        zip(shop.complements[s.CATEGORY], shop.complements["complement_category"], strict=True)
    )
    for category, complement in (
        ("phone", "phone_case"),
        ("laptop", "mouse"),
        ("coffee_machine", "coffee_pods"),
        ("printer", "ink"),
        ("camera", "memory_card"),
    ):
        assert _order_lift(lines, category, complement) > 3, (category, complement)
    # An unrelated pair stays near independence.
    assert _order_lift(lines, "phone", "book") < 1.5


def test_complements_also_follow_in_a_later_order(shop: Shop) -> None:
    lines = shop.lines
    phones = lines[lines[s.CATEGORY] == "phone"][[s.CUSTOMER_ID, s.ORDER_ID, s.TS]]
    cases = lines[lines[s.CATEGORY] == "phone_case"][[s.CUSTOMER_ID, s.ORDER_ID, s.TS]]
    pairs = phones.merge(cases, on=s.CUSTOMER_ID, suffixes=("_phone", "_case"))
    delay = pairs[f"{s.TS}_case"] - pairs[f"{s.TS}_phone"]
    later = pairs[(delay >= pd.Timedelta(days=1)) & (delay <= pd.Timedelta(days=21))]
    assert later[f"{s.ORDER_ID}_case"].nunique() >= 5


def test_upsell_sessions_view_a_cheaper_tier_then_buy_a_pricier_one(shop: Shop) -> None:
    family_tier = shop.products[[s.PRODUCT_ID, s.FAMILY, s.TIER]]
    views = shop.events[shop.events[s.EVENT_TYPE] == s.VIEW].merge(family_tier)
    bought = shop.lines[[s.CUSTOMER_ID, s.FAMILY, s.TIER, s.TS]]
    pairs = views.merge(bought, on=[s.CUSTOMER_ID, s.FAMILY], suffixes=("_view", "_buy"))
    gap = pairs[f"{s.TS}_buy"] - pairs[f"{s.TS}_view"]
    upsell = pairs[
        (pairs[f"{s.TIER}_buy"] > pairs[f"{s.TIER}_view"])
        & (gap > pd.Timedelta(0))
        & (gap <= pd.Timedelta(hours=2))
    ]
    assert upsell[s.CUSTOMER_ID].nunique() >= 30


def test_downsell_sessions_remove_a_pricier_tier_from_the_cart(shop: Shop) -> None:
    family_tier = shop.products[[s.PRODUCT_ID, s.FAMILY, s.TIER]]
    removed = shop.events[shop.events[s.EVENT_TYPE] == s.REMOVE_FROM_CART].merge(family_tier)
    bought = shop.lines[[s.CUSTOMER_ID, s.FAMILY, s.TIER, s.TS]]
    pairs = removed.merge(bought, on=[s.CUSTOMER_ID, s.FAMILY], suffixes=("_rm", "_buy"))
    gap = pairs[f"{s.TS}_buy"] - pairs[f"{s.TS}_rm"]
    downsell = pairs[
        (pairs[f"{s.TIER}_buy"] < pairs[f"{s.TIER}_rm"])
        & (gap > pd.Timedelta(0))
        & (gap <= pd.Timedelta(hours=2))
    ]
    assert len(downsell) >= 5


def test_cart_events_strictly_precede_the_purchase(shop: Shop) -> None:
    adds = shop.events[shop.events[s.EVENT_TYPE] == s.ADD_TO_CART]
    pairs = shop.lines[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS]].merge(
        adds[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.SESSION_ID]],
        on=[s.CUSTOMER_ID, s.PRODUCT_ID],
        suffixes=("_buy", "_event"),
    )
    gap = pairs[f"{s.TS}_buy"] - pairs[f"{s.TS}_event"]
    near = pairs[gap.abs() <= pd.Timedelta(hours=2)]
    assert len(near) > 1000
    assert (near[f"{s.TS}_buy"] > near[f"{s.TS}_event"]).all()
    # The whole session that led to the purchase is before it.
    session_end = shop.events.groupby(s.SESSION_ID)[s.TS].max()
    assert (near[f"{s.TS}_buy"].to_numpy() > session_end.loc[near[s.SESSION_ID]].to_numpy()).all()


def test_browse_only_sessions_exist(shop: Shop) -> None:
    carted = shop.events[shop.events[s.EVENT_TYPE] == s.ADD_TO_CART][s.SESSION_ID]
    assert shop.events[s.SESSION_ID].nunique() - carted.nunique() > 100


def test_returns_are_a_small_share_of_earlier_purchases(shop: Shop) -> None:
    purchases = shop.purchases
    returns = purchases[purchases[s.QUANTITY] < 0]
    assert 0.002 < len(returns) / len(purchases) < 0.05
    bought = purchases[purchases[s.QUANTITY] > 0]
    matched = returns.merge(
        bought, on=[s.CUSTOMER_ID, s.PRODUCT_ID, s.UNIT_PRICE], suffixes=("_ret", "_buy")
    )
    matched = matched[
        (matched[f"{s.TS}_buy"] < matched[f"{s.TS}_ret"])
        & (matched[f"{s.QUANTITY}_buy"] == -matched[f"{s.QUANTITY}_ret"])
    ]
    assert set(matched[f"{s.ORDER_ID}_ret"]) == set(returns[s.ORDER_ID])


def test_one_time_and_repeat_customers_both_exist(shop: Shop) -> None:
    orders = shop.lines.groupby(s.CUSTOMER_ID)[s.ORDER_ID].nunique()
    assert 0.1 < (orders == 1).mean() < 0.5
    assert (orders >= 5).mean() > 0.3


def test_volume_is_about_twenty_lines_per_customer(shop: Shop) -> None:
    assert len(shop.purchases) / N_CUSTOMERS >= 18


def test_consumables_are_repurchased(shop: Shop) -> None:
    consumables = shop.lines[shop.lines[s.IS_CONSUMABLE]]
    orders = consumables.groupby([s.CUSTOMER_ID, s.PRODUCT_ID])[s.ORDER_ID].nunique()
    assert (orders >= 3).sum() >= 50


def test_income_drives_the_tier_bought(shop: Shop) -> None:
    lines = shop.lines.merge(shop.customers[[s.CUSTOMER_ID, INCOME_BAND]], on=s.CUSTOMER_ID)
    mean_tier = lines.groupby(INCOME_BAND)[s.TIER].mean()
    assert mean_tier["high"] > mean_tier["mid"] > mean_tier["low"]
    assert mean_tier["high"] - mean_tier["low"] > 0.4
    params = shop.customer_params.merge(shop.customers, on=s.CUSTOMER_ID)
    sensitivity = params.groupby(INCOME_BAND)["price_sensitivity"].mean()
    assert sensitivity["low"] > sensitivity["high"]


def test_holiday_season_and_weekly_pattern(shop: Shop) -> None:
    ts = shop.lines[s.TS]
    per_day = ts.dt.floor("D").value_counts()
    holiday = per_day[per_day.index.month.isin([11, 12])].mean()
    rest = per_day[~per_day.index.month.isin([11, 12])].mean()
    assert holiday > 1.15 * rest
    # Evenings are busier than nights.
    hours = ts.dt.hour
    assert hours.between(19, 21).mean() > 3 * hours.between(2, 4).mean()
