"""Writing the synthetic shop to disk: the contract tables and the planted truth.

``generate_shop`` builds the catalog and calendar, simulates chunk by chunk and appends each
chunk's rows to Parquet or CSV files; the truth goes under ``truth/``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.data import schema as s
from features.data.synthetic.arrays import _id_strings
from features.data.synthetic.behaviour import _Events, _Lines, _simulate_chunk
from features.data.synthetic.catalog import CATEGORIES, COMPLEMENTS, _Catalog
from features.data.synthetic.personas import (
    AGE_BAND,
    AGE_BANDS,
    AGE_GROUPS,
    HOUSEHOLD_SIZE,
    INCOME_BAND,
    INCOME_BANDS,
    REGION,
    REGIONS,
    SEGMENT,
    _Customers,
)
from features.data.synthetic.seasonality import _Calendar

ShopFormat = Literal["parquet", "csv"]

TRUTH_DIR = "truth"
TRUTH_COMPLEMENTS = "complements"
TRUTH_FAMILIES = "families"
TRUTH_CUSTOMER_PARAMS = "customer_params"
TRUTH_TABLES = tuple(
    f"{TRUTH_DIR}/{name}" for name in (TRUTH_COMPLEMENTS, TRUTH_FAMILIES, TRUTH_CUSTOMER_PARAMS)
)

_CATALOG_STREAM = 0xCA7A

_CHUNK_STREAM = 0xC4A2

_ID_WIDTH = 10

_MIN_CUSTOMER_ID_WIDTH = 7

CUSTOMERS_SCHEMA = pa.schema(
    [
        (s.CUSTOMER_ID, pa.string()),
        (s.SIGNUP_DATE, pa.timestamp("s")),
        (AGE_BAND, pa.string()),
        (INCOME_BAND, pa.string()),
        (REGION, pa.string()),
        (HOUSEHOLD_SIZE, pa.int64()),
        (SEGMENT, pa.string()),
    ]
)

PURCHASES_SCHEMA = pa.schema(
    [
        (s.ORDER_ID, pa.string()),
        (s.CUSTOMER_ID, pa.string()),
        (s.PRODUCT_ID, pa.string()),
        (s.TS, pa.timestamp("s")),
        (s.UNIT_PRICE, pa.float64()),
        (s.QUANTITY, pa.int64()),
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        (s.CUSTOMER_ID, pa.string()),
        (s.PRODUCT_ID, pa.string()),
        (s.TS, pa.timestamp("s")),
        (s.EVENT_TYPE, pa.string()),
        (s.SESSION_ID, pa.string()),
    ]
)

COMPLEMENTS_SCHEMA = pa.schema(
    [
        (s.CATEGORY, pa.string()),
        ("complement_category", pa.string()),
        ("strength", pa.float64()),
        ("same_order_share", pa.float64()),
    ]
)

CUSTOMER_PARAMS_SCHEMA = pa.schema(
    [
        (s.CUSTOMER_ID, pa.string()),
        ("price_sensitivity", pa.float64()),
        ("upgrade_propensity", pa.float64()),
        ("cross_sell_propensity", pa.float64()),
        ("repeat_loyalty", pa.float64()),
        ("favorite_category", pa.string()),
        ("favorite_share", pa.float64()),
        ("is_one_time", pa.bool_()),
        ("n_missions", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ShopSummary:
    """Row counts of a generated shop.

    Attributes:
        out: The shop folder.
        fmt: File format of the tables.
        n_customers: Rows of ``customers``.
        n_products: Rows of ``products``.
        n_orders: Distinct ``order_id`` values (returns included).
        n_purchases: Rows (order lines) of ``purchases``, returns included.
        n_returns: Order lines with a negative quantity.
        n_events: Rows of ``events``.
        n_sessions: Distinct ``session_id`` values.
    """

    out: Path
    fmt: ShopFormat
    n_customers: int
    n_products: int
    n_orders: int
    n_purchases: int
    n_returns: int
    n_events: int
    n_sessions: int


def generate_shop(
    out: str | Path,
    *,
    n_customers: int,
    seed: int = 0,
    fmt: ShopFormat = "parquet",
    start: str = "2025-01-01",
    days: int = 365,
    chunk_customers: int = 50_000,
) -> ShopSummary:
    """Write a synthetic shop with planted cross-sell and upsell behaviour.

    Writes ``customers``, ``products``, ``purchases`` and ``events`` into ``out`` and the planted
    truth (``complements``, ``families``, ``customer_params``) into ``out/truth``, each as one
    ``.parquet`` or ``.csv`` file. Existing files of these tables are replaced, in either format.
    The output is byte-identical for identical arguments (``chunk_customers`` included).

    Args:
        out: Shop folder (created if needed).
        n_customers: Number of customers (>= 1).
        seed: Non-negative random seed.
        fmt: ``"parquet"`` or ``"csv"``.
        start: First day of the simulated history (ISO date).
        days: Length of the history in days (>= 2); all timestamps are in
            ``[start, start + days)``.
        chunk_customers: Customers simulated and written per chunk (bounds memory).

    Returns:
        The row counts written.

    Raises:
        ValueError: On an invalid argument.
    """
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    if days < 2:
        raise ValueError(f"days must be >= 2, got {days}")
    if chunk_customers < 1:
        raise ValueError(f"chunk_customers must be >= 1, got {chunk_customers}")

    out = Path(out)
    (out / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    other = "csv" if fmt == "parquet" else "parquet"
    for table in (*s.TABLE_ORDER, *TRUTH_TABLES):
        (out / f"{table}.{other}").unlink(missing_ok=True)  # a stale copy would shadow ours
    catalog = _Catalog.build(np.random.default_rng([seed, _CATALOG_STREAM]))
    calendar = _Calendar.build(start, days)
    customer_id_width = max(_MIN_CUSTOMER_ID_WIDTH, len(str(n_customers)))

    _write_whole(out / f"{s.PRODUCTS}.{fmt}", catalog.products_table(), fmt)
    _write_whole(out / TRUTH_DIR / f"{TRUTH_FAMILIES}.{fmt}", catalog.families_table(), fmt)
    _write_whole(out / TRUTH_DIR / f"{TRUTH_COMPLEMENTS}.{fmt}", _complements_table(), fmt)

    n_orders = n_purchases = n_returns = n_events = n_sessions = 0
    with contextlib.ExitStack() as stack:
        customers_w = stack.enter_context(
            _TableWriter(out / f"{s.CUSTOMERS}.{fmt}", CUSTOMERS_SCHEMA, fmt)
        )
        purchases_w = stack.enter_context(
            _TableWriter(out / f"{s.PURCHASES}.{fmt}", PURCHASES_SCHEMA, fmt)
        )
        events_w = stack.enter_context(_TableWriter(out / f"{s.EVENTS}.{fmt}", EVENTS_SCHEMA, fmt))
        params_w = stack.enter_context(
            _TableWriter(
                out / TRUTH_DIR / f"{TRUTH_CUSTOMER_PARAMS}.{fmt}", CUSTOMER_PARAMS_SCHEMA, fmt
            )
        )
        for chunk_index, first in enumerate(range(0, n_customers, chunk_customers)):
            n = min(chunk_customers, n_customers - first)
            rng = np.random.default_rng([seed, _CHUNK_STREAM, chunk_index])
            chunk = _simulate_chunk(rng, n, catalog, calendar)
            customer_ids = _id_strings("C", np.arange(first + 1, first + n + 1), customer_id_width)
            customers_w.write(_customers_table(chunk.customers, customer_ids))
            params_w.write(_customer_params_table(chunk.customers, customer_ids))
            purchases_w.write(
                _purchases_table(chunk.lines, customer_ids, catalog.product_ids, n_orders)
            )
            events_w.write(
                _events_table(chunk.events, customer_ids, catalog.product_ids, n_sessions)
            )
            n_orders += chunk.lines.n_orders
            n_purchases += chunk.lines.n_rows
            n_returns += int((chunk.lines.quantity < 0).sum())
            n_events += chunk.events.n_rows
            n_sessions += chunk.events.n_sessions

    return ShopSummary(
        out=out,
        fmt=fmt,
        n_customers=n_customers,
        n_products=catalog.n_products,
        n_orders=n_orders,
        n_purchases=n_purchases,
        n_returns=n_returns,
        n_events=n_events,
        n_sessions=n_sessions,
    )


def _take(values: pa.Array, indices: np.ndarray) -> pa.Array:
    """``values[indices]`` for NumPy indices."""
    return values.take(pa.array(indices, type=pa.int64()))


def _timestamps(seconds: np.ndarray) -> pa.Array:
    """Epoch seconds as an Arrow ``timestamp[s]`` array."""
    return pa.array(seconds.astype("datetime64[s]"), type=pa.timestamp("s"))


def _customers_table(cust: _Customers, customer_ids: pa.Array) -> pa.Table:
    """The ``customers`` rows of one chunk."""
    segments = np.array([f"{inc}-{age}" for inc in INCOME_BANDS for age in AGE_GROUPS])
    return pa.table(
        {
            s.CUSTOMER_ID: customer_ids,
            s.SIGNUP_DATE: _timestamps(cust.signup_s),
            AGE_BAND: np.array(AGE_BANDS)[cust.age_band],
            INCOME_BAND: np.array(INCOME_BANDS)[cust.income],
            REGION: np.array(REGIONS)[cust.region],
            HOUSEHOLD_SIZE: cust.household.astype(np.int64),
            SEGMENT: segments[cust.income * len(AGE_GROUPS) + cust.age_group],
        },
        schema=CUSTOMERS_SCHEMA,
    )


def _customer_params_table(cust: _Customers, customer_ids: pa.Array) -> pa.Table:
    """Truth: the latent parameters of one chunk's customers."""
    names = np.array([c.name for c in CATEGORIES])
    return pa.table(
        {
            s.CUSTOMER_ID: customer_ids,
            "price_sensitivity": cust.price_sensitivity,
            "upgrade_propensity": cust.upgrade_propensity,
            "cross_sell_propensity": cust.cross_sell_propensity,
            "repeat_loyalty": cust.repeat_loyalty,
            "favorite_category": names[cust.favorite],
            "favorite_share": cust.favorite_share,
            "is_one_time": cust.one_time,
            "n_missions": cust.n_missions,
        },
        schema=CUSTOMER_PARAMS_SCHEMA,
    )


def _purchases_table(
    lines: _Lines, customer_ids: pa.Array, product_ids: pa.Array, order_offset: int
) -> pa.Table:
    """The ``purchases`` rows of one chunk; order ids continue from ``order_offset``."""
    order_ids = _id_strings("O", np.arange(lines.n_orders) + order_offset + 1, _ID_WIDTH)
    return pa.table(
        {
            s.ORDER_ID: _take(order_ids, lines.order),
            s.CUSTOMER_ID: _take(customer_ids, lines.customer),
            s.PRODUCT_ID: _take(product_ids, lines.product),
            s.TS: _timestamps(lines.ts),
            s.UNIT_PRICE: lines.unit_price,
            s.QUANTITY: lines.quantity,
        },
        schema=PURCHASES_SCHEMA,
    )


def _events_table(
    events: _Events, customer_ids: pa.Array, product_ids: pa.Array, session_offset: int
) -> pa.Table:
    """The ``events`` rows of one chunk; session ids continue from ``session_offset``."""
    session_ids = _id_strings("S", np.arange(events.n_sessions) + session_offset + 1, _ID_WIDTH)
    return pa.table(
        {
            s.CUSTOMER_ID: _take(customer_ids, events.customer),
            s.PRODUCT_ID: _take(product_ids, events.product),
            s.TS: _timestamps(events.ts),
            s.EVENT_TYPE: _take(pa.array(s.EVENT_TYPES), events.event_type),
            s.SESSION_ID: _take(session_ids, events.session),
        },
        schema=EVENTS_SCHEMA,
    )


def _complements_table() -> pa.Table:
    """Truth: the planted complement relations."""
    return pa.table(
        {
            s.CATEGORY: [r.category for r in COMPLEMENTS],
            "complement_category": [r.complement for r in COMPLEMENTS],
            "strength": [r.strength for r in COMPLEMENTS],
            "same_order_share": [r.same_order_share for r in COMPLEMENTS],
        },
        schema=COMPLEMENTS_SCHEMA,
    )


# Columns with few distinct values per chunk, worth Parquet dictionary encoding.
_DICTIONARY_COLUMNS = (
    s.CUSTOMER_ID, s.PRODUCT_ID, s.EVENT_TYPE, s.CATEGORY, s.FAMILY, s.BRAND,
    AGE_BAND, INCOME_BAND, REGION, SEGMENT, "complement_category", "favorite_category",
)  # fmt: skip


class _TableWriter:
    """Appends Arrow tables of one schema to a Parquet or CSV file (a context manager)."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: ShopFormat) -> None:
        self._path = path
        self._schema = schema
        self._fmt = fmt
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None

    def __enter__(self) -> _TableWriter:
        if self._fmt == "parquet":
            dictionary = [name for name in self._schema.names if name in _DICTIONARY_COLUMNS]
            self._writer = pq.ParquetWriter(
                self._path, self._schema, compression="snappy", use_dictionary=dictionary
            )
        else:
            self._writer = pacsv.CSVWriter(self._path, self._schema)
        return self

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (must have the writer's schema)."""
        if self._writer is None:
            raise RuntimeError("_TableWriter used outside its context")
        self._writer.write_table(table)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _write_whole(path: Path, table: pa.Table, fmt: ShopFormat) -> None:
    """Write one complete table."""
    with _TableWriter(path, table.schema, fmt) as writer:
        writer.write(table)
