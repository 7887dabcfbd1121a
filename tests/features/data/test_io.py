"""Loader and validator: every contract violation names its table, column and rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from features.data import schema as s
from features.data.io import MAX_ROWS_SHOWN, DataValidationError, load_shop, shop_report

Tables = dict[str, pd.DataFrame]


def write_all(folder: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table, frame in tables.items():
        rewrite(folder, table, frame, fmt)
    return folder


def load_error(folder: Path, table: str, column: str | None) -> DataValidationError:
    """Load ``folder``, expect a DataValidationError at ``table.column`` and return it."""
    with pytest.raises(DataValidationError) as info:
        load_shop(folder)
    exc = info.value
    assert (exc.table, exc.column) == (table, column), str(exc)
    message = str(exc)
    assert table in message
    if column is not None:
        assert f"{table}.{column}" in message
    return exc


def bad_values(exc: DataValidationError, column: str) -> list[object]:
    return [row[column] for row in exc.rows]


# --- tables and columns ---------------------------------------------------------------------


def test_tiny_shop_loads(tiny_shop_dir: Path) -> None:
    shop = load_shop(tiny_shop_dir)
    assert (len(shop.customers), len(shop.products), len(shop.purchases)) == (5, 6, 12)
    assert shop.events is not None and len(shop.events) == 6
    assert shop.persona_columns == ["age_band", "household_size", "segment"]
    assert shop.purchases[s.TS].is_monotonic_increasing


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        load_shop(tmp_path / "nope")


def test_missing_required_table(tiny_shop_dir: Path) -> None:
    (tiny_shop_dir / "purchases.parquet").unlink()
    exc = load_error(tiny_shop_dir, s.PURCHASES, None)
    assert "missing table" in str(exc)


def test_optional_events_table_absent(tiny_shop_dir: Path) -> None:
    (tiny_shop_dir / "events.parquet").unlink()
    shop = load_shop(tiny_shop_dir)
    assert shop.events is None
    assert s.EVENTS not in shop.dropped
    report = shop_report(shop)
    assert report.optional_tables == {s.EVENTS: False}
    assert any("events=no" in line for line in report.lines())


REQUIRED_COLUMNS = [
    (table, column) for table, spec in s.TABLE_SPECS.items() for column in spec.required
]


@pytest.mark.parametrize(("table", "column"), REQUIRED_COLUMNS, ids=lambda v: v)
def test_missing_required_column(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path], table: str, column: str
) -> None:
    rewrite(tiny_shop_dir, table, tables[table].drop(columns=column))
    exc = load_error(tiny_shop_dir, table, column)
    assert "missing required column" in str(exc)


def test_corrupt_file(tiny_shop_dir: Path) -> None:
    (tiny_shop_dir / "products.parquet").write_bytes(b"PAR1 this is not parquet \x00\xff\x13")
    exc = load_error(tiny_shop_dir, s.PRODUCTS, None)
    assert "products.parquet" in str(exc)


# --- types --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unparsable_timestamp(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    ts = tables[s.PURCHASES][s.TS].astype(str)
    ts[3] = "not-a-date"
    tables[s.PURCHASES][s.TS] = ts
    exc = load_error(write_all(tmp_path, tables, rewrite, fmt), s.PURCHASES, s.TS)
    assert "unparsable timestamp" in str(exc)
    assert bad_values(exc, s.TS) == ["not-a-date"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unparsable_number(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    price = tables[s.PURCHASES][s.UNIT_PRICE].astype(str)
    price[5] = "abc"
    tables[s.PURCHASES][s.UNIT_PRICE] = price
    exc = load_error(write_all(tmp_path, tables, rewrite, fmt), s.PURCHASES, s.UNIT_PRICE)
    assert "not a number" in str(exc)
    assert bad_values(exc, s.UNIT_PRICE) == ["abc"]


def test_missing_timestamp_value(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    tables[s.PURCHASES].loc[2, s.TS] = pd.NaT
    rewrite(tiny_shop_dir, s.PURCHASES, tables[s.PURCHASES])
    exc = load_error(tiny_shop_dir, s.PURCHASES, s.TS)
    assert "missing timestamp" in str(exc)


def test_missing_id_value(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    tables[s.PURCHASES].loc[4, s.CUSTOMER_ID] = None
    rewrite(tiny_shop_dir, s.PURCHASES, tables[s.PURCHASES])
    exc = load_error(tiny_shop_dir, s.PURCHASES, s.CUSTOMER_ID)
    assert "missing id" in str(exc)


@pytest.mark.parametrize("price", [0.0, -5.0])
def test_non_positive_product_price(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path], price: float
) -> None:
    tables[s.PRODUCTS].loc[2, s.PRICE] = price
    rewrite(tiny_shop_dir, s.PRODUCTS, tables[s.PRODUCTS])
    exc = load_error(tiny_shop_dir, s.PRODUCTS, s.PRICE)
    assert bad_values(exc, s.PRODUCT_ID) == ["p3"]


def test_negative_unit_price(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    tables[s.PURCHASES].loc[7, s.UNIT_PRICE] = -1.0
    rewrite(tiny_shop_dir, s.PURCHASES, tables[s.PURCHASES])
    exc = load_error(tiny_shop_dir, s.PURCHASES, s.UNIT_PRICE)
    assert bad_values(exc, s.UNIT_PRICE) == [-1.0]


# --- keys and references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column"), [(s.PRODUCTS, s.PRODUCT_ID), (s.CUSTOMERS, s.CUSTOMER_ID)]
)
def test_duplicate_key(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path], table: str, column: str
) -> None:
    frame = tables[table]
    first = frame.loc[0, column]
    frame.loc[1, column] = first
    rewrite(tiny_shop_dir, table, frame)
    exc = load_error(tiny_shop_dir, table, column)
    assert "duplicate key" in str(exc)
    assert bad_values(exc, column) == [first, first]


@pytest.mark.parametrize(
    ("table", "column", "bad"),
    [
        (s.PURCHASES, s.CUSTOMER_ID, "c99"),
        (s.PURCHASES, s.PRODUCT_ID, "p99"),
        (s.EVENTS, s.PRODUCT_ID, "p99"),
        (s.EVENTS, s.EVENT_TYPE, "purchase"),
    ],
)
def test_unknown_reference_or_event_type(
    tiny_shop_dir: Path,
    tables: Tables,
    rewrite: Callable[..., Path],
    table: str,
    column: str,
    bad: str,
) -> None:
    tables[table].loc[2, column] = bad
    rewrite(tiny_shop_dir, table, tables[table])
    exc = load_error(tiny_shop_dir, table, column)
    assert "unknown" in str(exc)
    assert bad in str(exc)
    assert bad_values(exc, column) == [bad]


def test_message_shows_at_most_five_rows(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    bad = [f"p9{i}" for i in range(7)]
    tables[s.PURCHASES].loc[0:6, s.PRODUCT_ID] = bad
    rewrite(tiny_shop_dir, s.PURCHASES, tables[s.PURCHASES])
    exc = load_error(tiny_shop_dir, s.PURCHASES, s.PRODUCT_ID)
    message = str(exc)
    assert len(exc.rows) == MAX_ROWS_SHOWN == 5
    assert "7 row(s); first 5" in message
    assert all(pid in message for pid in bad[:5])
    assert not any(pid in message for pid in bad[5:])


# --- formats and typing -------------------------------------------------------------------


def test_csv_and_parquet_load_identically(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    from_parquet = load_shop(write_all(tmp_path / "pq", tables, rewrite, "parquet"))
    from_csv = load_shop(write_all(tmp_path / "csv", tables, rewrite, "csv"))
    for table in s.TABLE_ORDER:
        pd.testing.assert_frame_equal(getattr(from_parquet, table), getattr(from_csv, table))
    assert from_parquet.dropped == from_csv.dropped
    purchases = from_csv.purchases
    assert pd.api.types.is_string_dtype(purchases[s.CUSTOMER_ID])
    assert purchases[s.TS].dtype == "datetime64[ns]"
    assert purchases[s.UNIT_PRICE].dtype == "float64"
    assert from_csv.products[s.PRICE].dtype == "float64"
    assert from_csv.products[s.IS_CONSUMABLE].dtype == bool


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_integer_ids_become_strings(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    tables[s.CUSTOMERS][s.CUSTOMER_ID] = [1, 2, 3, 4, 5]
    tables[s.PRODUCTS][s.PRODUCT_ID] = [11, 12, 13, 14, 15, 16]
    purchases = tables[s.PURCHASES]
    purchases[s.CUSTOMER_ID] = purchases[s.CUSTOMER_ID].str[1:]  # "c1" -> "1"
    purchases[s.PRODUCT_ID] = "1" + purchases[s.PRODUCT_ID].str[1:]  # "p1" -> "11"
    del tables[s.EVENTS]
    shop = load_shop(write_all(tmp_path, tables, rewrite, fmt))
    assert shop.customers[s.CUSTOMER_ID].tolist() == ["1", "2", "3", "4", "5"]
    assert shop.products[s.PRODUCT_ID].tolist() == ["11", "12", "13", "14", "15", "16"]
    assert set(shop.purchases[s.CUSTOMER_ID]) <= {"1", "2", "3", "4", "5"}
    assert shop.purchases[s.TS].dtype == "datetime64[ns]"
    assert shop.purchases[s.UNIT_PRICE].dtype == "float64"


def test_timezone_aware_timestamps_become_naive_utc(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    purchases = tables[s.PURCHASES]
    purchases[s.TS] = purchases[s.TS].dt.tz_localize("Europe/Berlin")
    rewrite(tiny_shop_dir, s.PURCHASES, purchases)
    shop = load_shop(tiny_shop_dir)
    assert shop.purchases[s.TS].dtype == "datetime64[ns]"
    assert shop.purchases[s.TS].iloc[0] == pd.Timestamp("2024-01-05 09:00")


# --- policies -----------------------------------------------------------------------------


def test_exact_duplicate_lines_dropped_and_counted(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    purchases = tables[s.PURCHASES]
    near_dup = purchases.iloc[[3]].assign(**{s.QUANTITY: 5})  # differs: a real second line
    purchases = pd.concat([purchases, purchases.iloc[[0, 0, 6]], near_dup], ignore_index=True)
    rewrite(tiny_shop_dir, s.PURCHASES, purchases)
    events = tables[s.EVENTS]
    rewrite(tiny_shop_dir, s.EVENTS, pd.concat([events, events.iloc[[1]]], ignore_index=True))
    shop = load_shop(tiny_shop_dir)
    assert len(shop.purchases) == 13
    assert shop.dropped[s.PURCHASES]["exact duplicate line"] == 3
    assert shop.events is not None and len(shop.events) == 6
    assert shop.dropped[s.EVENTS]["exact duplicate line"] == 1
    lines = shop_report(shop).lines()
    assert "dropped from purchases: 3 (exact duplicate line)" in lines
    assert "dropped from events: 1 (exact duplicate line)" in lines


def test_unordered_lines_sorted_stably_and_deduplicated_like_pandas(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    """A shuffled export with exact duplicates and same-key lines that differ loads into the
    order and rows of pandas' stable sort after ``duplicated(keep="first")`` (the loader does
    it with Arrow and skips the sort when the file is already in order)."""
    purchases = tables[s.PURCHASES]
    same_key = purchases.iloc[[2, 2]].assign(**{s.UNIT_PRICE: [7.0, 3.0]})  # differ: kept
    purchases = pd.concat([purchases, purchases.iloc[[0, 5, 5]], same_key], ignore_index=True)
    purchases = purchases.sample(frac=1.0, random_state=3).reset_index(drop=True)
    events = tables[s.EVENTS]
    events = pd.concat([events, events.iloc[[0, 2]]], ignore_index=True).iloc[::-1]
    rewrite(tiny_shop_dir, s.PURCHASES, purchases)
    rewrite(tiny_shop_dir, s.EVENTS, events)
    shop = load_shop(tiny_shop_dir)
    reference = pd.read_parquet(tiny_shop_dir / "purchases.parquet")
    reference = reference.loc[~reference.duplicated(keep="first")]
    reference = reference.sort_values([s.TS, s.ORDER_ID, s.PRODUCT_ID], kind="stable")
    assert shop.purchases[s.UNIT_PRICE].tolist() == reference[s.UNIT_PRICE].tolist()
    assert shop.purchases[s.PRODUCT_ID].tolist() == reference[s.PRODUCT_ID].astype(str).tolist()
    assert shop.dropped[s.PURCHASES]["exact duplicate line"] == 3
    assert shop.events is not None and shop.dropped[s.EVENTS]["exact duplicate line"] == 2
    assert shop.events[s.TS].is_monotonic_increasing
    # already in order: the same frames again (the no-sort path)
    rewrite(tiny_shop_dir, s.PURCHASES, shop.purchases)
    again = load_shop(tiny_shop_dir)
    pd.testing.assert_frame_equal(again.purchases, shop.purchases)


def test_zero_quantity_dropped_and_counted_returns_kept(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    purchases = tables[s.PURCHASES]
    purchases.loc[[1, 4], s.QUANTITY] = 0
    purchases.loc[9, s.QUANTITY] = -1
    rewrite(tiny_shop_dir, s.PURCHASES, purchases)
    shop = load_shop(tiny_shop_dir)
    assert len(shop.purchases) == 10
    assert (shop.purchases[s.QUANTITY] != 0).all()
    assert shop.dropped[s.PURCHASES]["quantity == 0"] == 2
    returns = shop.purchases[shop.purchases[s.QUANTITY] < 0]
    assert returns[s.PRODUCT_ID].tolist() == ["p4"]
    report = shop_report(shop)
    assert report.rows["returns"] == 1
    assert "dropped from purchases: 2 (quantity == 0)" in report.lines()


def test_quantity_defaults_to_one(
    tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]
) -> None:
    rewrite(tiny_shop_dir, s.PURCHASES, tables[s.PURCHASES].drop(columns=s.QUANTITY))
    shop = load_shop(tiny_shop_dir)
    assert shop.purchases[s.QUANTITY].dtype == "float64"
    assert (shop.purchases[s.QUANTITY] == 1.0).all()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_product_defaults(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    products = tables[s.PRODUCTS].drop(columns=[s.FAMILY, s.IS_CONSUMABLE])
    shop = load_shop(write_all(tmp_path, {**tables, s.PRODUCTS: products}, rewrite, fmt))
    assert shop.products[s.FAMILY].tolist() == shop.products[s.CATEGORY].tolist()
    assert shop.products[s.IN_STOCK].dtype == bool and shop.products[s.IN_STOCK].all()
    assert shop.products[s.IS_CONSUMABLE].dtype == bool
    assert not shop.products[s.IS_CONSUMABLE].any()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_partly_missing_family_and_in_stock_filled(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    products = tables[s.PRODUCTS]
    products.loc[1, s.FAMILY] = None
    products[s.IN_STOCK] = ["false", None, "true", "0", None, "yes"]
    shop = load_shop(write_all(tmp_path, tables, rewrite, fmt))
    assert shop.products[s.FAMILY].tolist() == [
        "phone-x",
        "phone",
        "case",
        "case",
        "charger",
        "coffee",
    ]
    assert shop.products[s.IN_STOCK].tolist() == [False, True, True, False, True, True]


def test_not_a_boolean(tiny_shop_dir: Path, tables: Tables, rewrite: Callable[..., Path]) -> None:
    tables[s.PRODUCTS][s.IN_STOCK] = ["yes", "no", "maybe", "yes", "yes", "yes"]
    rewrite(tiny_shop_dir, s.PRODUCTS, tables[s.PRODUCTS])
    exc = load_error(tiny_shop_dir, s.PRODUCTS, s.IN_STOCK)
    assert bad_values(exc, s.IN_STOCK) == ["maybe"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_persona_columns_typed(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    customers = tables[s.CUSTOMERS]
    customers.loc[1, "segment"] = None
    customers["household_size"] = customers["household_size"].astype("float64")
    customers.loc[2, "household_size"] = None
    shop = load_shop(write_all(tmp_path, tables, rewrite, fmt))
    out = shop.customers
    assert shop.persona_columns == ["age_band", "household_size", "segment"]
    for column in ("age_band", "segment"):
        assert pd.api.types.is_string_dtype(out[column]), column
    assert out["age_band"].tolist() == ["18-24", "25-34", "35-44", "25-34", "45-54"]
    assert pd.isna(out.loc[1, "segment"])  # missing stays missing, not the text "None"
    assert out["household_size"].dtype == "float64"
    assert out["household_size"].isna().tolist() == [False, False, True, False, False]
    assert out[s.SIGNUP_DATE].dtype == "datetime64[ns]"


# --- report -------------------------------------------------------------------------------


def test_shop_report_lines(tiny_shop_dir: Path) -> None:
    report = shop_report(load_shop(tiny_shop_dir))
    assert report.rows == {s.CUSTOMERS: 5, s.PRODUCTS: 6, s.PURCHASES: 12, s.EVENTS: 6}
    assert report.n_orders == 9
    text = "\n".join(report.lines())
    for table, n in report.rows.items():
        assert any(table in line and f"{n} rows" in line for line in report.lines()), table
    assert "2024-01-05 10:00:00" in text and "2024-03-01 07:30:00" in text
    assert "date range" in text
    assert "persona columns: age_band, household_size, segment" in text
    assert "dropped from" not in text


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_optional_id_may_be_missing(
    tmp_path: Path, tables: Tables, rewrite: Callable[..., Path], fmt: str
) -> None:
    tables[s.EVENTS][s.SESSION_ID] = ["s1", "s1", None, "s3", "s4", "s5"]
    shop = load_shop(write_all(tmp_path, tables, rewrite, fmt))
    assert shop.events is not None
    session = shop.events[s.SESSION_ID]
    assert pd.api.types.is_string_dtype(session)
    assert session.isna().tolist() == [False, False, True, False, False, False]
    assert session.dropna().tolist() == ["s1", "s1", "s3", "s4", "s5"]
