"""Load a shop's folder of tables into typed, validated frames.

Policies (documented in the README):

* **Unknown ids** (a purchase or event naming a customer or product that is not in its table)
  are an error: the data is inconsistent and guessing would hide an export bug.
* **Exact duplicate lines** (every column equal) in ``purchases`` or ``events`` are dropped and
  counted: they are double-sent rows, not two purchases.
* **Returns** (negative ``quantity``) are kept. Feature code counts only positive lines as
  purchases and uses net quantity for ownership. Lines with ``quantity == 0`` are dropped and
  counted.
* Nothing is dropped without a count in the log and in :class:`ShopReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.arrays import arrow_array, arrow_bool, is_in
from features.data import schema as s
from features.data.consumables import ConsumabilityCheck, consumability_check

log = logging.getLogger(__name__)

MAX_ROWS_SHOWN = 5


class DataValidationError(ValueError):
    """A shop table breaks the data contract.

    Attributes:
        table: The table at fault.
        column: The column at fault (None for table-level problems).
        rows: Up to five offending rows, as records.
    """

    def __init__(
        self,
        table: str,
        column: str | None,
        problem: str,
        rows: pd.DataFrame | None = None,
    ) -> None:
        self.table = table
        self.column = column
        self.problem = problem
        self.rows = [] if rows is None else rows.head(MAX_ROWS_SHOWN).to_dict("records")
        where = f"{table}.{column}" if column else table
        message = f"{where}: {problem}"
        if rows is not None and len(rows):
            shown = rows.head(MAX_ROWS_SHOWN).to_string(index=True, max_colwidth=40)
            message += f" ({len(rows)} row(s); first {min(len(rows), MAX_ROWS_SHOWN)}):\n{shown}"
        super().__init__(message)


@dataclass(frozen=True)
class Shop:
    """A shop's typed tables. ``events`` is None when the shop has no browsing data.

    Attributes:
        customers: One row per customer; extra columns are persona attributes.
        products: One row per product with ``family``, ``is_consumable`` and ``in_stock``
            always present (defaults filled in by the loader).
        purchases: One row per order line, ``quantity`` always present.
        events: Browsing events, or None.
        dropped: Table name -> reason -> number of rows dropped while loading.
        consumable_labelled: Whether the products table had an ``is_consumable`` column. When
            False the column holds the loader's placeholder (False) and feature code infers
            consumability from repurchases (:mod:`features.data.consumables`). Defaults to
            True so a Shop built by hand keeps its flags authoritative.
    """

    customers: pd.DataFrame
    products: pd.DataFrame
    purchases: pd.DataFrame
    events: pd.DataFrame | None = None
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    consumable_labelled: bool = True

    @property
    def persona_columns(self) -> list[str]:
        """Customer columns other than the id and signup date, in file order."""
        return [c for c in self.customers.columns if c not in (s.CUSTOMER_ID, s.SIGNUP_DATE)]

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First and last purchase timestamp."""
        ts = self.purchases[s.TS]
        return ts.min(), ts.max()

    @cached_property
    def purchase_codes(self) -> LineCodes:
        """The purchase lines' ids as integer positions, computed once per shop (every
        snapshot of a training run reads them instead of looking the id strings up again)."""
        return _line_codes(self, self.purchases, orders=True)

    @cached_property
    def event_codes(self) -> LineCodes | None:
        """The events' ids as integer positions (None without events)."""
        return None if self.events is None else _line_codes(self, self.events, orders=False)


@dataclass(frozen=True)
class LineCodes:
    """A table's id columns as integers, one per row (-1: an id not in its table).

    Attributes:
        product: Position of the row's product among the products sorted by id (the
            snapshot's product index).
        customer: Position of the row's customer among the customers sorted by id.
        order: Order code per purchase line, in order of first appearance (None for events).
    """

    product: np.ndarray
    customer: np.ndarray
    order: np.ndarray | None


def _line_codes(shop: Shop, frame: pd.DataFrame, *, orders: bool) -> LineCodes:
    products = pd.Index(shop.products[s.PRODUCT_ID]).sort_values()
    customers = pd.Index(shop.customers[s.CUSTOMER_ID]).sort_values()
    return LineCodes(
        product=products.get_indexer(frame[s.PRODUCT_ID]).astype(np.int64),
        customer=customers.get_indexer(frame[s.CUSTOMER_ID]).astype(np.int64),
        order=pd.factorize(frame[s.ORDER_ID])[0].astype(np.int64) if orders else None,
    )


@dataclass(frozen=True)
class ShopReport:
    """Summary printed by ``xsell data validate``."""

    rows: dict[str, int]
    first_ts: pd.Timestamp
    last_ts: pd.Timestamp
    n_customers: int
    n_products: int
    n_orders: int
    optional_tables: dict[str, bool]
    persona_columns: list[str]
    dropped: dict[str, dict[str, int]]
    consumability: ConsumabilityCheck | None = None

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        out = [f"{name:10s} {n:>12,d} rows" for name, n in self.rows.items()]
        out.append(f"date range {self.first_ts} .. {self.last_ts}")
        out.append(
            f"customers  {self.n_customers:,d}, products {self.n_products:,d}, "
            f"orders {self.n_orders:,d}"
        )
        present = ", ".join(f"{t}={'yes' if p else 'no'}" for t, p in self.optional_tables.items())
        out.append(f"optional tables: {present}")
        out.append(f"persona columns: {', '.join(self.persona_columns) or '(none)'}")
        for table, reasons in self.dropped.items():
            for reason, n in reasons.items():
                if n:
                    out.append(f"dropped from {table}: {n:,d} ({reason})")
        if self.consumability is not None:
            out.extend(self.consumability.lines())
        return out


def table_path(folder: Path, table: str) -> Path | None:
    """The Parquet or CSV file holding ``table`` in ``folder``, or None."""
    for suffix in (".parquet", ".csv"):
        path = folder / f"{table}{suffix}"
        if path.exists():
            return path
    return None


def read_table(folder: str | Path, table: str) -> pd.DataFrame | None:
    """Read one raw table (no typing) or return None when its file is absent.

    Raises:
        DataValidationError: The file exists but cannot be read.
    """
    path = table_path(Path(folder), table)
    if path is None:
        return None
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except Exception as exc:  # any reader failure means a corrupt file
        raise DataValidationError(table, None, f"cannot read {path.name}: {exc}") from exc


def _bad_rows(frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> pd.DataFrame:
    return frame.loc[np.asarray(mask, dtype=bool)]


def _to_id(raw: pd.DataFrame, table: str, column: str, *, required: bool) -> pd.Series:
    col = raw[column]
    if pd.api.types.is_float_dtype(col):
        # Integer ids read as float because of missing values: render without ".0".
        whole = col.dropna() == np.floor(col.dropna())
        if bool(whole.all()):
            col = col.astype("Int64")
    out = col.astype("str")
    missing = col.isna() | (out.str.strip() == "")
    if missing.any():
        if required:
            raise DataValidationError(table, column, "missing id", _bad_rows(raw, missing))
        out = out.where(~missing)  # optional id (session_id): missing stays missing
    return out.str.strip()


def _to_float(raw: pd.DataFrame, table: str, column: str, *, required: bool) -> pd.Series:
    col = raw[column]
    out = pd.to_numeric(col, errors="coerce").astype("float64")
    unparsable = out.isna() & col.notna()
    if unparsable.any():
        raise DataValidationError(table, column, "not a number", _bad_rows(raw, unparsable))
    not_finite = ~np.isfinite(out.to_numpy()) & out.notna().to_numpy()
    if not_finite.any():
        raise DataValidationError(table, column, "not a finite number", _bad_rows(raw, not_finite))
    if required and out.isna().any():
        raise DataValidationError(table, column, "missing value", _bad_rows(raw, out.isna()))
    return out


def _to_ts(raw: pd.DataFrame, table: str, column: str, *, required: bool) -> pd.Series:
    col = raw[column]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        raise DataValidationError(
            table,
            column,
            "numeric timestamps are ambiguous: write ISO dates or datetimes",
            raw.head(MAX_ROWS_SHOWN),
        )
    if pd.api.types.is_datetime64_any_dtype(col):
        out = col
    else:
        out = pd.to_datetime(col, errors="coerce", format="mixed")
    unparsable = out.isna() & col.notna()
    if unparsable.any():
        raise DataValidationError(table, column, "unparsable timestamp", _bad_rows(raw, unparsable))
    if required and out.isna().any():
        raise DataValidationError(table, column, "missing timestamp", _bad_rows(raw, out.isna()))
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


_TRUE = {"true", "1", "1.0", "yes", "y", "t"}
_FALSE = {"false", "0", "0.0", "no", "n", "f"}


def _to_bool(raw: pd.DataFrame, table: str, column: str, default: bool) -> pd.Series:
    col = raw[column]
    if pd.api.types.is_bool_dtype(col):
        return col.fillna(default).astype(bool)
    text = col.astype("str").str.strip().str.lower()
    known = text.isin(_TRUE | _FALSE) | col.isna()
    if not known.all():
        raise DataValidationError(table, column, "not a boolean", _bad_rows(raw, ~known))
    return text.isin(_TRUE).where(col.notna(), default).astype(bool)


def _type_table(raw: pd.DataFrame, spec: s.TableSpec, *, text_source: bool) -> pd.DataFrame:
    missing = [c for c in spec.required if c not in raw.columns]
    if missing:
        raise DataValidationError(
            spec.name,
            missing[0],
            f"missing required column(s) {missing}; found {list(raw.columns)}",
        )
    out = {}
    kinds = {**spec.required, **spec.optional}
    for column in raw.columns:
        kind = kinds.get(column)
        required = column in spec.required
        if kind == "id":
            out[column] = _to_id(raw, spec.name, column, required=required)
        elif kind in ("float", "int"):
            out[column] = _to_float(raw, spec.name, column, required=required)
        elif kind == "ts":
            out[column] = _to_ts(raw, spec.name, column, required=required)
        elif kind == "bool":
            out[column] = _to_bool(raw, spec.name, column, default=column == s.IN_STOCK)
        elif kind == "str":
            col = raw[column]
            if required and col.isna().any():
                raise DataValidationError(
                    spec.name, column, "missing value", _bad_rows(raw, col.isna())
                )
            out[column] = col.astype("str").where(col.notna(), None).astype("str")
        else:  # persona / attribute columns: numbers stay numeric, the rest categorical text
            col = raw[column]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                out[column] = col.astype("float64")
            else:
                # CSV has no types: a column of numbers is numeric. Parquet keeps its strings.
                numeric = pd.to_numeric(col, errors="coerce") if text_source else col[:0]
                if text_source and col.notna().any() and numeric.notna().sum() == col.notna().sum():
                    out[column] = numeric.astype("float64")
                else:
                    out[column] = col.astype("str").where(col.notna(), None).astype("str")
    return pd.DataFrame(out, index=raw.index).reset_index(drop=True)


def _check_unique(frame: pd.DataFrame, table: str, key: tuple[str, ...]) -> None:
    if not key:
        return
    dup = frame.duplicated(list(key), keep=False)
    if dup.any():
        raise DataValidationError(
            table, key[0], f"duplicate key {list(key)}", frame.loc[dup].sort_values(list(key))
        )


def _check_known(frame: pd.DataFrame, table: str, column: str, known: pd.Series) -> None:
    unknown = ~is_in(frame[column], known)
    if unknown.any():
        ref = s.CUSTOMERS if column == s.CUSTOMER_ID else s.PRODUCTS
        raise DataValidationError(table, column, f"unknown id (not in {ref})", frame.loc[unknown])


def _equal_neighbours(array: pa.Array) -> np.ndarray:
    """``out[i]``: row ``i + 1`` equals row ``i``."""
    return arrow_bool(pc.equal(array.slice(0, len(array) - 1), array.slice(1)))


def _sorted_by(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` stably sorted by ``keys`` (no NaN in them); a frame already in that order
    (as exported shops usually are) is returned as is, after one pass of comparisons."""
    if len(frame) < 2:
        return frame.reset_index(drop=True)
    arrays = [arrow_array(frame[key]) for key in keys]
    ties = np.ones(len(frame) - 1, dtype=bool)  # rows equal to the previous one on keys so far
    for array in arrays:
        after = array.slice(1)
        descending = arrow_bool(pc.greater(array.slice(0, len(array) - 1), after))
        ordered = not (ties & descending).any()
        if not ordered:
            break
        ties &= _equal_neighbours(array)
    if ordered:
        return frame.reset_index(drop=True)
    table = pa.table(dict(zip(keys, arrays, strict=True)))
    order = pc.sort_indices(table, sort_keys=[(key, "ascending") for key in keys])  # stable
    return frame.take(order.to_numpy()).reset_index(drop=True)


def _drop_exact_duplicates(
    frame: pd.DataFrame, table: str, dropped: dict, keys: list[str]
) -> pd.DataFrame:
    """``frame`` sorted by ``keys`` (stable) without its exact duplicate lines (the first
    kept). Two equal lines are equal on ``keys`` too, so only rows sharing their keys with a
    neighbour after the sort are compared on every column."""
    frame = _sorted_by(frame, keys)
    same = np.ones(max(len(frame) - 1, 0), dtype=bool)
    for key in keys:
        same &= _equal_neighbours(arrow_array(frame[key]))
    shared = np.zeros(len(frame), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    dup = np.zeros(len(frame), dtype=bool)
    dup[shared] = frame.loc[shared].duplicated(keep="first").to_numpy()
    n = int(dup.sum())
    dropped.setdefault(table, {})["exact duplicate line"] = n
    if n:
        log.warning("%s: dropped %d exact duplicate line(s)", table, n)
        frame = frame.loc[~dup].reset_index(drop=True)
    return frame


def load_shop(folder: str | Path) -> Shop:
    """Read and validate a shop folder into typed frames.

    Args:
        folder: Directory with ``customers``, ``products``, ``purchases`` and optionally
            ``events`` as ``.parquet`` or ``.csv`` files.

    Returns:
        The validated :class:`Shop`. Products always have ``family`` (defaults to
        ``category``), ``is_consumable`` (False when the column is absent, with
        ``consumable_labelled=False``) and ``in_stock`` (True); purchases always have
        ``quantity`` (1).

    Raises:
        DataValidationError: Any contract violation, naming the table, column and rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataValidationError("shop", None, f"folder {folder} does not exist")
    frames: dict[str, pd.DataFrame | None] = {}
    for name in s.TABLE_ORDER:
        spec = s.TABLE_SPECS[name]
        raw = read_table(folder, name)
        if raw is None:
            if not spec.optional_table:
                raise DataValidationError(
                    name, None, f"missing table: no {name}.parquet or {name}.csv in {folder}"
                )
            frames[name] = None
            continue
        path = table_path(folder, name)
        frames[name] = _type_table(
            raw, spec, text_source=path is not None and path.suffix == ".csv"
        )

    customers = frames[s.CUSTOMERS]
    products = frames[s.PRODUCTS]
    purchases = frames[s.PURCHASES]
    events = frames[s.EVENTS]
    assert customers is not None and products is not None and purchases is not None
    dropped: dict[str, dict[str, int]] = {}

    _check_unique(customers, s.CUSTOMERS, (s.CUSTOMER_ID,))
    _check_unique(products, s.PRODUCTS, (s.PRODUCT_ID,))
    bad_price = products[s.PRICE] <= 0
    if bad_price.any():
        raise DataValidationError(s.PRODUCTS, s.PRICE, "price must be > 0", products.loc[bad_price])
    if s.FAMILY not in products.columns:
        products[s.FAMILY] = products[s.CATEGORY]
    else:
        products[s.FAMILY] = products[s.FAMILY].fillna(products[s.CATEGORY])
    consumable_labelled = s.IS_CONSUMABLE in products.columns
    if not consumable_labelled:
        products[s.IS_CONSUMABLE] = False
    if s.IN_STOCK not in products.columns:
        products[s.IN_STOCK] = True

    if s.QUANTITY not in purchases.columns:
        purchases[s.QUANTITY] = 1.0
    purchases[s.QUANTITY] = purchases[s.QUANTITY].fillna(1.0)
    bad_unit = purchases[s.UNIT_PRICE] < 0
    if bad_unit.any():
        raise DataValidationError(
            s.PURCHASES, s.UNIT_PRICE, "unit_price must be >= 0", purchases.loc[bad_unit]
        )
    _check_known(purchases, s.PURCHASES, s.CUSTOMER_ID, customers[s.CUSTOMER_ID])
    _check_known(purchases, s.PURCHASES, s.PRODUCT_ID, products[s.PRODUCT_ID])
    purchase_order = [s.TS, s.ORDER_ID, s.PRODUCT_ID]
    purchases = _drop_exact_duplicates(purchases, s.PURCHASES, dropped, purchase_order)
    zero = purchases[s.QUANTITY] == 0
    dropped[s.PURCHASES]["quantity == 0"] = int(zero.sum())
    if zero.any():
        log.warning("purchases: dropped %d line(s) with quantity 0", int(zero.sum()))
        purchases = purchases.loc[~zero].reset_index(drop=True)
    n_returns = int((purchases[s.QUANTITY] < 0).sum())
    if n_returns:
        log.info("purchases: %d return line(s) (negative quantity) kept", n_returns)

    if events is not None:
        bad_type = ~events[s.EVENT_TYPE].isin(s.EVENT_TYPES)
        if bad_type.any():
            raise DataValidationError(
                s.EVENTS,
                s.EVENT_TYPE,
                f"unknown event type (allowed: {', '.join(s.EVENT_TYPES)})",
                events.loc[bad_type],
            )
        _check_known(events, s.EVENTS, s.CUSTOMER_ID, customers[s.CUSTOMER_ID])
        _check_known(events, s.EVENTS, s.PRODUCT_ID, products[s.PRODUCT_ID])
        events = _drop_exact_duplicates(events, s.EVENTS, dropped, [s.TS, s.CUSTOMER_ID])
    return Shop(
        customers, products, purchases, events, dropped, consumable_labelled=consumable_labelled
    )


def shop_report(shop: Shop) -> ShopReport:
    """Row counts, date range, drops and the consumability check of a loaded shop."""
    rows = {
        s.CUSTOMERS: len(shop.customers),
        s.PRODUCTS: len(shop.products),
        s.PURCHASES: len(shop.purchases),
    }
    if shop.events is not None:
        rows[s.EVENTS] = len(shop.events)
    first, last = shop.time_range()
    dropped = {t: dict(r) for t, r in shop.dropped.items()}
    n_returns = int((shop.purchases[s.QUANTITY] < 0).sum())
    report = ShopReport(
        rows=rows,
        first_ts=first,
        last_ts=last,
        n_customers=len(shop.customers),
        n_products=len(shop.products),
        n_orders=int(shop.purchases[s.ORDER_ID].nunique()),
        optional_tables={s.EVENTS: shop.events is not None},
        persona_columns=shop.persona_columns,
        dropped=dropped,
        consumability=consumability_check(shop),
    )
    if n_returns:
        report.rows["returns"] = n_returns
    return report
