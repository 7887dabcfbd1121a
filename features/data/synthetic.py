"""The built-in synthetic shop: a fixed catalog, personas and a year of planted behaviour.

``generate_shop`` writes the four contract tables (``customers``, ``products``, ``purchases``,
``events``) plus the planted truth under ``truth/`` (``complements``, ``families``,
``customer_params``), which is not part of the data contract and exists for tests and
evaluation.

What is planted (rather than uniform noise):

* A catalog of categories with complement relations (phone -> phone case -> screen protector,
  coffee machine -> pods, printer -> ink, ...). Every family has good / better / best tiers of
  two brands, the next tier costing 10-35% more, so some upgrades fall inside a 25% uplift cap
  and some outside it.
* Personas (age band, income band, region, household size) drive price sensitivity (which tier
  is bought), upgrade propensity and category affinity (which categories a mission starts from).
* Each shopping mission buys an anchor product, often with complements in the same order or in
  a follow-up order 1-21 days later; consumables are repurchased periodically; a small share of
  lines is returned later.
* Browsing sessions precede orders: a view of a cheaper tier then a purchase of the pricier one
  (upsell), add to cart then remove of a pricier tier (downsell), views of complements that were
  not bought, and browse-only sessions. Every event is strictly before the order it leads to.
* Seasonality: a November / December bump, gift categories peaking in the gift season, a weekly
  and an hourly pattern, family popularity drifting quarter to quarter.

Everything is vectorised NumPy per chunk of customers, each chunk with its own generator
``default_rng([seed, stream, chunk_index])``: the output is byte-identical for identical
arguments and never holds more than one chunk in memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.data import schema as s

ShopFormat = Literal["parquet", "csv"]
CategoryKind = Literal["durable", "accessory", "consumable", "grocery", "standalone"]

TRUTH_DIR = "truth"
TRUTH_COMPLEMENTS = "complements"
TRUTH_FAMILIES = "families"
TRUTH_CUSTOMER_PARAMS = "customer_params"
TRUTH_TABLES = tuple(
    f"{TRUTH_DIR}/{name}" for name in (TRUTH_COMPLEMENTS, TRUTH_FAMILIES, TRUTH_CUSTOMER_PARAMS)
)

# Persona column names (free persona attributes of the ``customers`` table).
AGE_BAND = "age_band"
INCOME_BAND = "income_band"
REGION = "region"
HOUSEHOLD_SIZE = "household_size"
SEGMENT = "segment"

N_TIERS = 3
N_BRANDS = 2
PRODUCTS_PER_FAMILY = N_TIERS * N_BRANDS
N_QUARTERS = 4
DAY_S = 86_400

_CATALOG_STREAM = 0xCA7A
_CHUNK_STREAM = 0xC4A2
_ID_WIDTH = 10
_PRODUCT_ID_WIDTH = 5
_MIN_CUSTOMER_ID_WIDTH = 7


@dataclass(frozen=True)
class CategorySpec:
    """One category of the synthetic catalog.

    Attributes:
        name: Category name.
        kind: ``durable`` (anchors with complements), ``accessory``, ``consumable`` (linked to a
            durable), ``grocery`` (stand-alone consumables) or ``standalone``.
        base_price: Typical price of the cheapest tier.
        n_families: Number of families (product lines) in the category.
        weight: Base share of shopping missions starting from the category.
        by_age: Mission weight multipliers for young, middle and senior customers.
        by_income: Mission weight multipliers for low, mid and high income.
        by_household: Mission weight multiplier for households of three or more.
        gift: Mission weight multiplier in the gift season (late November to Christmas).
        period_days: Consumables: typical days between repurchases (0 for durables).
        repeat_prob: Consumables: chance that a purchase starts a repurchase rhythm.
        return_prob: Chance that an order line of the category is returned.
    """

    name: str
    kind: CategoryKind
    base_price: float
    n_families: int
    weight: float
    by_age: tuple[float, float, float] = (1.0, 1.0, 1.0)
    by_income: tuple[float, float, float] = (1.0, 1.0, 1.0)
    by_household: float = 1.0
    gift: float = 1.0
    period_days: float = 0.0
    repeat_prob: float = 0.0
    return_prob: float = 0.04

    @property
    def is_consumable(self) -> bool:
        """Whether products of the category are used up and bought again."""
        return self.kind in ("consumable", "grocery")


@dataclass(frozen=True)
class ComplementSpec:
    """A planted complement relation: buying ``category`` makes ``complement`` likely.

    Attributes:
        category: The anchor category.
        complement: The complement category.
        strength: Chance that an anchor purchase comes with the complement (same order or a
            follow-up order), before the customer's cross-sell multiplier.
        same_order_share: Share of those complements bought in the same order.
    """

    category: str
    complement: str
    strength: float
    same_order_share: float


CATEGORIES: tuple[CategorySpec, ...] = (
    # Durable anchors with complements.
    CategorySpec("phone", "durable", 480.0, 8, 0.55, (1.6, 1.0, 0.6), (0.8, 1.0, 1.3), gift=1.8),
    CategorySpec("laptop", "durable", 900.0, 7, 0.35, (1.3, 1.1, 0.7), (0.7, 1.0, 1.4), gift=1.5),
    CategorySpec("camera", "durable", 600.0, 6, 0.2, (1.0, 1.1, 1.0), (0.5, 1.0, 1.7), gift=1.8),
    CategorySpec("coffee_machine", "durable", 180.0, 6, 0.3, (0.7, 1.2, 1.2), gift=1.5),
    CategorySpec("printer", "durable", 150.0, 5, 0.22, (0.6, 1.2, 1.3), by_household=1.3),
    # Accessories.
    CategorySpec("phone_case", "accessory", 22.0, 10, 0.2, (1.5, 1.0, 0.6), return_prob=0.03),
    CategorySpec("screen_protector", "accessory", 12.0, 6, 0.12, (1.4, 1.0, 0.6), return_prob=0.03),
    CategorySpec("charger", "accessory", 25.0, 6, 0.15, return_prob=0.03),
    CategorySpec("laptop_bag", "accessory", 48.0, 6, 0.07, return_prob=0.03),
    CategorySpec("mouse", "accessory", 28.0, 7, 0.12, return_prob=0.03),
    CategorySpec("memory_card", "accessory", 20.0, 6, 0.08, return_prob=0.03),
    CategorySpec("tripod", "accessory", 42.0, 5, 0.04, return_prob=0.03),
    # Consumables linked to a durable.
    CategorySpec(
        "coffee_pods", "consumable", 7.0, 8, 0.25, (0.8, 1.1, 1.1),
        period_days=24, repeat_prob=0.6, return_prob=0.004,
    ),
    CategorySpec(
        "descaler", "consumable", 9.0, 4, 0.04,
        period_days=90, repeat_prob=0.35, return_prob=0.004,
    ),
    CategorySpec(
        "ink", "consumable", 32.0, 8, 0.12,
        period_days=70, repeat_prob=0.55, return_prob=0.004,
    ),
    CategorySpec(
        "paper", "consumable", 8.0, 4, 0.08, by_household=1.3,
        period_days=55, repeat_prob=0.45, return_prob=0.004,
    ),
    # Grocery-like consumables.
    CategorySpec(
        "coffee_beans", "grocery", 12.0, 8, 0.3, (0.9, 1.1, 1.1), (0.8, 1.0, 1.2),
        period_days=21, repeat_prob=0.55, return_prob=0.004,
    ),
    CategorySpec(
        "tea", "grocery", 5.0, 6, 0.15, (0.8, 0.9, 1.4),
        period_days=30, repeat_prob=0.45, return_prob=0.004,
    ),
    CategorySpec(
        "pasta", "grocery", 2.5, 6, 0.22, by_household=1.6,
        period_days=14, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "pasta_sauce", "grocery", 3.5, 6, 0.12, by_household=1.5,
        period_days=14, repeat_prob=0.35, return_prob=0.004,
    ),
    CategorySpec(
        "cereal", "grocery", 4.0, 6, 0.18, by_household=1.8,
        period_days=18, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "oat_milk", "grocery", 2.2, 4, 0.15, (1.5, 1.0, 0.6),
        period_days=10, repeat_prob=0.4, return_prob=0.004,
    ),
    CategorySpec(
        "snacks", "grocery", 3.0, 8, 0.22, (1.3, 1.0, 0.8), by_household=1.5, gift=1.2,
        period_days=14, repeat_prob=0.3, return_prob=0.004,
    ),
    CategorySpec(
        "detergent", "grocery", 10.0, 5, 0.12, by_household=1.6,
        period_days=35, repeat_prob=0.45, return_prob=0.004,
    ),
    # Stand-alone categories.
    CategorySpec("headphones", "standalone", 110.0, 7, 0.25, (1.6, 1.0, 0.6), gift=2.0),
    CategorySpec(
        "smartwatch", "standalone", 240.0, 5, 0.12, (1.5, 1.0, 0.5), (0.6, 1.0, 1.4), gift=2.0
    ),
    CategorySpec("blender", "standalone", 75.0, 5, 0.12, gift=1.3),
    CategorySpec("vacuum", "standalone", 230.0, 5, 0.1, by_household=1.4),
    CategorySpec("board_game", "standalone", 35.0, 8, 0.15, by_household=1.8, gift=2.5),
    CategorySpec("book", "standalone", 16.0, 10, 0.3, (0.9, 1.0, 1.3), gift=1.6),
    CategorySpec("kitchen_knife", "standalone", 45.0, 5, 0.06, gift=1.5),
)  # fmt: skip

COMPLEMENTS: tuple[ComplementSpec, ...] = (
    ComplementSpec("phone", "phone_case", 0.55, 0.7),
    ComplementSpec("phone", "screen_protector", 0.4, 0.6),
    ComplementSpec("phone", "charger", 0.3, 0.5),
    ComplementSpec("phone_case", "screen_protector", 0.3, 0.7),
    ComplementSpec("laptop", "laptop_bag", 0.45, 0.6),
    ComplementSpec("laptop", "mouse", 0.45, 0.6),
    ComplementSpec("coffee_machine", "coffee_pods", 0.65, 0.7),
    ComplementSpec("coffee_machine", "descaler", 0.3, 0.4),
    ComplementSpec("printer", "ink", 0.65, 0.7),
    ComplementSpec("printer", "paper", 0.45, 0.6),
    ComplementSpec("camera", "memory_card", 0.55, 0.7),
    ComplementSpec("camera", "tripod", 0.3, 0.4),
    ComplementSpec("smartwatch", "charger", 0.2, 0.5),
    ComplementSpec("pasta", "pasta_sauce", 0.45, 1.0),
    ComplementSpec("cereal", "oat_milk", 0.35, 1.0),
)

BRAND_NAMES: tuple[str, ...] = (
    "Acme", "Borealis", "Cobalt", "Dunmore", "Elara", "Fjord", "Granite", "Halcyon", "Ionic",
    "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orchid", "Pioneer", "Quartz",
    "Ridgeway", "Solace", "Tundra", "Umbra", "Vantage", "Willow", "Xenon", "Yarrow", "Zephyr",
)  # fmt: skip

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_BAND_P = (0.12, 0.2, 0.2, 0.18, 0.15, 0.15)
AGE_GROUPS = ("young", "middle", "senior")
_AGE_GROUP_OF_BAND = np.array([0, 0, 1, 1, 2, 2])
INCOME_BANDS = ("low", "mid", "high")
_INCOME_BY_AGE_GROUP = np.array([[0.45, 0.4, 0.15], [0.25, 0.45, 0.3], [0.35, 0.45, 0.2]])
REGIONS = ("north", "south", "east", "west", "capital")
_REGION_P = (0.2, 0.22, 0.18, 0.15, 0.25)
_REGION_PRICE_SHIFT = np.array([0.0, 0.03, 0.0, 0.02, -0.06])
_HOUSEHOLD_BY_AGE_GROUP = np.array(
    [[0.4, 0.3, 0.15, 0.1, 0.05], [0.15, 0.3, 0.2, 0.25, 0.1], [0.35, 0.5, 0.08, 0.05, 0.02]]
)
# Beta(a, b) of price sensitivity by income band (means 0.7, 0.5, 0.3).
_PRICE_SENSITIVITY_BETA = np.array([[7.0, 3.0], [5.0, 5.0], [3.0, 7.0]])
_UPGRADE_MEAN_BY_INCOME = np.array([0.2, 0.35, 0.5])
_UPGRADE_SHIFT_BY_AGE_GROUP = np.array([0.05, 0.0, -0.05])
_ACTIVITY_BY_INCOME = np.array([0.85, 1.0, 1.15])

_SIGNUP_IN_YEAR_SHARE = 0.2
_SIGNUP_HISTORY_DAYS = 3 * 365
_BURN_IN_DAYS = 90  # simulated days before start so rhythms are running on day 0
_ONE_TIME_SHARE = (0.25, 0.4)  # (signed up before start, signed up during the year)
_BASE_MISSIONS = 10.0  # extra missions of a repeat customer over a full year (mean)
_MISSION_DISPERSION = 1.5  # negative binomial shape: heavy-tailed activity
_FAVORITE_SHARE_BETA = (2.0, 4.0)

# Tier choice: logit(tier) = (TASTE - WEIGHT * price_sensitivity) * (tier - 1).
_TIER_TASTE = 1.5
_TIER_PRICE_WEIGHT = 4.0
_UPGRADE_RATE = 0.6
_DOWNSELL_RATE = 0.25
_MAIN_BRAND_SHARE = 0.6
_COMPATIBLE_FAMILY_SHARE = 0.7
_SAME_TIER_COMPLEMENT_SHARE = 0.5
_FOLLOW_UP_DAYS = (1, 21)
_CROSS_SELL_MULTIPLIER = (0.4, 1.2)  # complement chance x (a + b * cross_sell_propensity)
_PERIOD_SCALE = (0.7, 1.3)  # a repurchase rhythm's period relative to the category's
_PERIOD_JITTER = 0.1  # each repurchase moves by up to this share of the period
_REPEAT_STOP = (0.15, 0.35)  # geometric stop chance per repurchase: a + b * (1 - loyalty)
_RETURN_DAYS = (1, 30)
_GROCERY_EXTRA_LINES = (1.4, 0.4)  # Poisson mean = a + b * (household_size - 1)
_DISCOUNTS = np.array([0.1, 0.15, 0.2, 0.3])
_DISCOUNT_RATE = (0.06, 0.25)  # (normal day, promotion day), times (0.5 + price_sensitivity)

# Sessions and events.
_SESSION_SHARE_GROCERY = 0.6
_SESSION_SHARE_OTHER = 0.9
_COMPARISON_VIEW_SHARE = 0.3
_COMPLEMENT_VIEW_SHARE = 0.5
_MISSED_COMPLEMENT_VIEW_SHARE = 0.25
_FOLLOW_UP_VIEW_SHARE = 0.6
_REPEAT_SESSION_SHARE = 0.3
_BROWSE_PER_MISSION = 0.5
_BROWSE_BASE = 0.3
_BROWSE_EXTRA_VIEWS = 1.0
_BROWSE_SAME_FAMILY_SHARE = 0.6
_BROWSE_ABANDON_SHARE = 0.15
_EVENT_STEP_S = (15, 180)
_VIEW_CODE, _ADD_CODE, _REMOVE_CODE = 0, 1, 2  # positions in schema.EVENT_TYPES

_MONTH_FACTOR = np.array([1.0, 0.85, 0.95, 0.95, 1.0, 0.9, 0.85, 0.9, 1.0, 1.05, 1.3, 1.55])
_WEEKDAY_FACTOR = np.array([1.05, 0.95, 0.95, 1.0, 1.0, 1.1, 1.2])  # Monday first
_HOUR_WEIGHTS = np.array(
    [0.3, 0.15, 0.1, 0.08, 0.08, 0.15, 0.4, 0.8, 1.0, 1.1, 1.1, 1.2,
     1.4, 1.3, 1.1, 1.0, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6]
)  # fmt: skip

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
PRODUCTS_SCHEMA = pa.schema(
    [
        (s.PRODUCT_ID, pa.string()),
        (s.CATEGORY, pa.string()),
        (s.FAMILY, pa.string()),
        (s.BRAND, pa.string()),
        (s.TIER, pa.int64()),
        (s.PRICE, pa.float64()),
        (s.IS_CONSUMABLE, pa.bool_()),
        (s.IN_STOCK, pa.bool_()),
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
FAMILIES_SCHEMA = pa.schema(
    [
        (s.FAMILY, pa.string()),
        (s.CATEGORY, pa.string()),
        (s.PRODUCT_ID, pa.string()),
        (s.TIER, pa.int64()),
        (s.PRICE, pa.float64()),
        (s.BRAND, pa.string()),
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


# --------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowSampler:
    """Inverse-CDF sampling from one of many discrete distributions, picked per draw.

    All rows' CDFs are laid end to end (row ``g`` shifted by ``g``) so a single
    ``searchsorted`` draws from a different distribution for every element.

    Attributes:
        flat: Shifted CDFs, ``n_rows * width`` non-decreasing values.
        width: Number of outcomes per row.
        last: Last outcome with a positive weight, per row.
    """

    flat: np.ndarray
    width: int
    last: np.ndarray

    @classmethod
    def from_weights(cls, weights: np.ndarray) -> _RowSampler:
        """Build from non-negative weights of shape ``(n_rows, width)``, each row summing > 0."""
        weights = np.asarray(weights, dtype=np.float64)
        cdf = np.cumsum(weights, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        positive = weights > 0
        last = weights.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
        flat = (cdf + np.arange(len(cdf))[:, None]).ravel()
        return cls(flat=flat, width=weights.shape[1], last=last)

    def sample(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """Draw one outcome per element of ``rows`` (row indices) from that row's distribution."""
        rows = np.asarray(rows, dtype=np.int64)
        u = rng.random(len(rows))
        idx = np.searchsorted(self.flat, rows + u, side="right") - rows * self.width
        return np.minimum(idx, self.last[rows])


def _draw_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one outcome per element of ``rows`` from the matching row of ``probs``."""
    return _RowSampler.from_weights(probs).sample(rng, rows)


def _draw_tiers(rng: np.random.Generator, price_sensitivity: np.ndarray) -> np.ndarray:
    """Tier (1..3) a customer considers: price-sensitive customers lean to the good tier."""
    slope = _TIER_TASTE - _TIER_PRICE_WEIGHT * price_sensitivity
    logits = slope[:, None] * np.arange(N_TIERS)[None, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(price_sensitivity)) * cdf[:, -1]
    return 1 + (u[:, None] >= cdf[:, :-1]).sum(axis=1)


def _draw_brands(rng: np.random.Generator, n: int) -> np.ndarray:
    """Brand slot (0 = the family's main brand, 1 = the other one)."""
    return (rng.random(n) >= _MAIN_BRAND_SHARE).astype(np.int64)


def _product_index(family: np.ndarray, tier: np.ndarray, brand: np.ndarray) -> np.ndarray:
    """Catalog index of the product of ``family`` at ``tier`` (1..3) from brand slot ``brand``."""
    return family * PRODUCTS_PER_FAMILY + (tier - 1) * N_BRANDS + brand


def _round_price(price: np.ndarray) -> np.ndarray:
    """Shop-style prices: ``x.x9`` below 10, ``x.99`` from 10 up."""
    small = np.maximum(np.round(price, 1) - 0.01, 0.49)
    large = np.floor(price) + 0.99
    return np.round(np.where(price < 10.0, small, large), 2)


# --------------------------------------------------------------------------------------------
# Catalog and calendar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    """The fixed product catalog and the samplers that pick from it.

    Products are laid out family by family, ``PRODUCTS_PER_FAMILY`` each, ordered by tier then
    brand slot, so ``_product_index`` finds a product without a lookup.
    """

    family_category: np.ndarray
    family_start: np.ndarray
    family_names: np.ndarray
    family_brands: np.ndarray
    price: np.ndarray
    in_stock: np.ndarray
    compatible: np.ndarray
    product_ids: pa.Array
    family_sampler: _RowSampler
    category_sampler: _RowSampler
    favorite_sampler: _RowSampler
    grocery_sampler: _RowSampler
    category_is_consumable: np.ndarray
    category_is_grocery: np.ndarray
    category_period_s: np.ndarray
    category_repeat_prob: np.ndarray
    category_return_prob: np.ndarray

    @classmethod
    def build(cls, rng: np.random.Generator) -> _Catalog:
        """Draw families, brands, prices, stock and family popularity from ``rng``."""
        n_fam = np.array([c.n_families for c in CATEGORIES])
        family_category = np.repeat(np.arange(len(CATEGORIES)), n_fam)
        family_start = np.concatenate([[0], np.cumsum(n_fam)[:-1]])
        n_families = len(family_category)
        family_names = np.array(
            [f"{c.name}_{j + 1:02d}" for c in CATEGORIES for j in range(c.n_families)]
        )

        # Two brands per family from a pool of three per category.
        pools = np.stack([rng.choice(len(BRAND_NAMES), size=3, replace=False) for _ in CATEGORIES])
        pair = np.argsort(rng.random((n_families, 3)), axis=1)[:, :N_BRANDS]
        brand_idx = pools[family_category[:, None], pair]
        family_brands = np.array(BRAND_NAMES)[brand_idx]

        # Prices: family level, tier steps of 10-35%, a brand premium or discount.
        base = np.array([c.base_price for c in CATEGORIES])[family_category]
        base = base * rng.lognormal(0.0, 0.3, n_families)
        steps = rng.uniform(1.10, 1.35, (n_families, N_TIERS - 1))
        tier_factor = np.concatenate([np.ones((n_families, 1)), np.cumprod(steps, axis=1)], 1)
        brand_factor = np.stack([np.ones(n_families), rng.uniform(0.92, 1.1, n_families)], 1)
        raw = base[:, None, None] * tier_factor[:, :, None] * brand_factor[:, None, :]
        price = _round_price(raw)
        for tier in range(1, N_TIERS):
            price[:, tier] = np.maximum(price[:, tier], np.round(price[:, tier - 1] + 0.1, 2))
        price = price.reshape(-1)
        n_products = len(price)
        in_stock = rng.random(n_products) < 0.97

        # Which family of each complement category fits each family of the anchor category.
        category_index = {c.name: k for k, c in enumerate(CATEGORIES)}
        compatible = np.full((n_families, len(COMPLEMENTS)), -1, dtype=np.int64)
        for r, rel in enumerate(COMPLEMENTS):
            src, dst = category_index[rel.category], category_index[rel.complement]
            rows = np.flatnonzero(family_category == src)
            compatible[rows, r] = family_start[dst] + rng.integers(0, n_fam[dst], len(rows))

        # Family popularity: Zipf-like within the category, drifting quarter to quarter.
        max_fam = int(n_fam.max())
        fam_weights = np.zeros((len(CATEGORIES), N_QUARTERS, max_fam))
        quarters = np.arange(N_QUARTERS) - (N_QUARTERS - 1) / 2
        for k, c in enumerate(CATEGORIES):
            zipf = 1.0 / (1.0 + rng.permutation(c.n_families)) ** 0.9
            trend = rng.normal(0.0, 0.35, c.n_families)
            fam_weights[k, :, : c.n_families] = zipf[None, :] * np.exp(
                quarters[:, None] * trend[None, :]
            )

        # Mission category weights per persona group and season.
        cat_w = _category_weights()
        grocery = np.array([c.kind == "grocery" for c in CATEGORIES])
        product_ids = _id_strings("P", np.arange(1, n_products + 1), _PRODUCT_ID_WIDTH)
        return cls(
            family_category=family_category,
            family_start=family_start,
            family_names=family_names,
            family_brands=family_brands,
            price=price,
            in_stock=in_stock,
            compatible=compatible,
            product_ids=product_ids,
            family_sampler=_RowSampler.from_weights(fam_weights.reshape(-1, max_fam)),
            category_sampler=_RowSampler.from_weights(cat_w.reshape(-1, len(CATEGORIES))),
            favorite_sampler=_RowSampler.from_weights(cat_w[:, 0]),
            grocery_sampler=_RowSampler.from_weights(cat_w[:, 0] * grocery[None, :]),
            category_is_consumable=np.array([c.is_consumable for c in CATEGORIES]),
            category_is_grocery=grocery,
            category_period_s=np.array([c.period_days * DAY_S for c in CATEGORIES]),
            category_repeat_prob=np.array([c.repeat_prob for c in CATEGORIES]),
            category_return_prob=np.array([c.return_prob for c in CATEGORIES]),
        )

    @property
    def n_products(self) -> int:
        """Number of products in the catalog."""
        return len(self.price)

    def product_category(self, product: np.ndarray) -> np.ndarray:
        """Category index of catalog products."""
        return self.family_category[product // PRODUCTS_PER_FAMILY]

    def draw_families(
        self, rng: np.random.Generator, category: np.ndarray, quarter: np.ndarray
    ) -> np.ndarray:
        """A family of each category, by the family's popularity in that quarter."""
        local = self.family_sampler.sample(rng, category * N_QUARTERS + quarter)
        return self.family_start[category] + local

    def products_table(self) -> pa.Table:
        """The ``products`` table."""
        product = np.arange(self.n_products)
        family = product // PRODUCTS_PER_FAMILY
        category = self.family_category[family]
        names = np.array([c.name for c in CATEGORIES])
        return pa.table(
            {
                s.PRODUCT_ID: self.product_ids,
                s.CATEGORY: names[category],
                s.FAMILY: self.family_names[family],
                s.BRAND: self.family_brands[family, product % N_BRANDS],
                s.TIER: product % PRODUCTS_PER_FAMILY // N_BRANDS + 1,
                s.PRICE: self.price,
                s.IS_CONSUMABLE: self.category_is_consumable[category],
                s.IN_STOCK: self.in_stock,
            },
            schema=PRODUCTS_SCHEMA,
        )

    def families_table(self) -> pa.Table:
        """Truth: every product with its family, category, tier, price and brand."""
        products = self.products_table()
        return pa.table(
            {
                s.FAMILY: products[s.FAMILY],
                s.CATEGORY: products[s.CATEGORY],
                s.PRODUCT_ID: products[s.PRODUCT_ID],
                s.TIER: products[s.TIER],
                s.PRICE: products[s.PRICE],
                s.BRAND: products[s.BRAND],
            },
            schema=FAMILIES_SCHEMA,
        )


def _category_weights() -> np.ndarray:
    """Mission category weights of shape ``(n_groups, 2, n_categories)`` (group, gift season).

    A persona group is ``(age_group * 3 + income) * 2 + (household_size >= 3)``.
    """
    n_cat = len(CATEGORIES)
    base = np.array([c.weight for c in CATEGORIES])
    by_age = np.array([c.by_age for c in CATEGORIES]).T  # (3, n_cat)
    by_income = np.array([c.by_income for c in CATEGORIES]).T
    by_household = np.stack([np.ones(n_cat), np.array([c.by_household for c in CATEGORIES])])
    gift = np.stack([np.ones(n_cat), np.array([c.gift for c in CATEGORIES])])
    w = (
        base[None, None, None, None, :]
        * by_age[:, None, None, None, :]
        * by_income[None, :, None, None, :]
        * by_household[None, None, :, None, :]
        * gift[None, None, None, :, :]
    )
    return w.reshape(-1, 2, n_cat)


def _persona_group(age_group: np.ndarray, income: np.ndarray, household: np.ndarray) -> np.ndarray:
    """Persona group index used by the category samplers."""
    return (age_group * 3 + income) * 2 + (household >= 3)


@dataclass(frozen=True)
class _Calendar:
    """Day-level seasonality of the simulated period and of a burn-in before it.

    Day indices count from ``start`` (day 0) and may be negative down to ``-burn_in``: missions
    of customers who signed up earlier start there, so consumable rhythms and follow-ups are
    already running on day 0. Rows dated before ``start`` are dropped before writing.

    Attributes:
        start_s: First second of the period (seconds since the epoch).
        days: Number of days of the period.
        burn_in: Number of simulated days before the period.
        day_cdf: CDF over days ``-burn_in .. days - 1`` (month, holiday and weekday factors).
        hour_cdf: CDF of the hour of day.
        gift: 1 on gift-season days (20 November to 24 December), else 0, per day.
        promo: Promotion days (Black Friday week, early January sales), per day.
        quarter: Quarter of the period (0..3) per day, burn-in days in quarter 0.
    """

    start_s: int
    days: int
    burn_in: int
    day_cdf: np.ndarray
    hour_cdf: np.ndarray
    gift: np.ndarray
    promo: np.ndarray
    quarter: np.ndarray

    @classmethod
    def build(cls, start: str, days: int, burn_in: int = _BURN_IN_DAYS) -> _Calendar:
        """Calendar of ``days`` days from ISO date ``start``, after ``burn_in`` earlier days."""
        first = np.datetime64(start, "D")
        dates = first + np.arange(-burn_in, days)
        month0 = dates.astype("datetime64[M]")
        month = month0.astype(np.int64) % 12 + 1
        dom = (dates - month0.astype("datetime64[D]")).astype(np.int64) + 1
        weekday = (dates.astype(np.int64) + 3) % 7
        black_friday = (month == 11) & (dom >= 24)
        gift = ((month == 11) & (dom >= 20)) | ((month == 12) & (dom <= 24))
        promo = black_friday | ((month == 12) & (dom <= 2)) | ((month == 1) & (dom <= 10))
        weight = (
            _MONTH_FACTOR[month - 1]
            * _WEEKDAY_FACTOR[weekday]
            * np.where(black_friday, 1.5, 1.0)
            * np.where((month == 12) & (dom >= 26), 0.75, 1.0)
        )
        day_cdf = np.cumsum(weight) / weight.sum()
        day_cdf[-1] = 1.0
        hour_cdf = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
        hour_cdf[-1] = 1.0
        return cls(
            start_s=int(first.astype("datetime64[s]").astype(np.int64)),
            days=days,
            burn_in=burn_in,
            day_cdf=day_cdf,
            hour_cdf=hour_cdf,
            gift=gift.astype(np.int64),
            promo=promo,
            quarter=np.maximum(np.arange(-burn_in, days), 0) * N_QUARTERS // days,
        )

    @property
    def end_s(self) -> int:
        """First second after the period."""
        return self.start_s + self.days * DAY_S

    def draw_days(self, rng: np.random.Generator, first_day: np.ndarray) -> np.ndarray:
        """A seasonal day index in ``[first_day, days)`` per element (``first_day >= -burn_in``)."""
        first = first_day + self.burn_in
        lo = np.where(first > 0, self.day_cdf[first - 1], 0.0)
        u = lo + rng.random(len(first)) * (1.0 - lo)
        day = np.searchsorted(self.day_cdf, u, side="right")
        return np.clip(day, first, self.burn_in + self.days - 1) - self.burn_in

    def draw_times(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """Timestamps (epoch seconds) on ``day`` following the hourly profile."""
        hour = np.minimum(np.searchsorted(self.hour_cdf, rng.random(len(day)), "right"), 23)
        return self.start_s + day * DAY_S + hour * 3600 + rng.integers(0, 3600, len(day))

    def day_of(self, ts: np.ndarray) -> np.ndarray:
        """Day index of epoch-second timestamps."""
        return (ts - self.start_s) // DAY_S

    def is_gift(self, day: np.ndarray) -> np.ndarray:
        """1 on gift-season days, else 0."""
        return self.gift[day + self.burn_in]

    def is_promo(self, day: np.ndarray) -> np.ndarray:
        """Whether each day is a promotion day."""
        return self.promo[day + self.burn_in]

    def quarter_of(self, day: np.ndarray) -> np.ndarray:
        """Quarter of the period (0..3) of each day."""
        return self.quarter[day + self.burn_in]


# --------------------------------------------------------------------------------------------
# Simulation of one chunk of customers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Customers:
    """Customers of a chunk: persona, latent parameters and activity (chunk-local order)."""

    age_band: np.ndarray
    age_group: np.ndarray
    income: np.ndarray
    region: np.ndarray
    household: np.ndarray
    group: np.ndarray
    signup_s: np.ndarray
    first_day: np.ndarray
    price_sensitivity: np.ndarray
    upgrade_propensity: np.ndarray
    cross_sell_propensity: np.ndarray
    repeat_loyalty: np.ndarray
    favorite: np.ndarray
    favorite_share: np.ndarray
    one_time: np.ndarray
    n_missions: np.ndarray

    @property
    def n(self) -> int:
        """Number of customers."""
        return len(self.age_band)


@dataclass(frozen=True)
class _Lines:
    """Order lines of a chunk, sorted by customer, time and order.

    ``order`` numbers the chunk's orders from 0 in that sort order.
    """

    customer: np.ndarray
    product: np.ndarray
    ts: np.ndarray
    order: np.ndarray
    unit_price: np.ndarray
    quantity: np.ndarray
    n_orders: int

    @property
    def n_rows(self) -> int:
        """Number of order lines."""
        return len(self.customer)


@dataclass(frozen=True)
class _Events:
    """Browsing events of a chunk, sorted by customer, session and time.

    ``session`` numbers the chunk's sessions from 0 in that sort order.
    """

    customer: np.ndarray
    product: np.ndarray
    ts: np.ndarray
    event_type: np.ndarray
    session: np.ndarray
    n_sessions: int

    @property
    def n_rows(self) -> int:
        """Number of events."""
        return len(self.customer)


@dataclass(frozen=True)
class _Chunk:
    """Everything simulated for one chunk of customers."""

    customers: _Customers
    lines: _Lines
    events: _Events


class _Collector:
    """Accumulates parallel column pieces and concatenates them once."""

    def __init__(self, **dtypes: type[np.integer]) -> None:
        self._dtypes = dtypes
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}

    def add(self, **columns: np.ndarray | int) -> None:
        """Append one piece; scalars are broadcast to the length of the array columns."""
        size = max((np.size(v) for v in columns.values() if np.ndim(v) > 0), default=1)
        for name, dtype in self._dtypes.items():
            piece = np.asarray(columns[name]).astype(dtype, copy=False)
            self._parts[name].append(np.broadcast_to(piece, (size,)))

    def pop(self, name: str) -> np.ndarray:
        """The concatenation of every piece of one column, releasing the pieces."""
        parts = self._parts.pop(name)
        if not parts:
            return np.zeros(0, dtype=self._dtypes[name])
        return np.concatenate(parts)

    def peek(self, name: str) -> np.ndarray:
        """The concatenation of every piece of one column so far, keeping the pieces."""
        return np.concatenate(self._parts[name])


def _sort_index(*keys: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``keys`` (most significant first), ties kept in row order.

    Keys are non-negative integers. When they fit, they are packed with the row number into
    one int64 so a fast unstable sort gives the same fully determined order as a stable
    lexicographic sort (``np.lexsort``, the fallback).
    """
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    columns = (*keys, np.arange(n))
    if min(int(key.min()) for key in keys) < 0:
        raise ValueError("sort keys must be non-negative")
    widths = [max(int(key.max()), 1).bit_length() for key in columns]
    if sum(widths) > 63:
        return np.lexsort(keys[::-1])
    packed = np.zeros(n, dtype=np.int64)
    for key, width in zip(columns, widths, strict=True):
        packed <<= width
        packed |= key.astype(np.int64, copy=False)
    return np.argsort(packed)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of every run of equal values."""
    first = np.ones(len(sorted_keys), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


def _simulate_chunk(
    rng: np.random.Generator, n: int, catalog: _Catalog, calendar: _Calendar
) -> _Chunk:
    """Simulate ``n`` customers, their order lines and their browsing events.

    Order keys (chunk-local, renumbered when sorted): mission ``m`` is order ``m``, its
    follow-up order ``M + m``, repurchase group ``g`` order ``2M + g``, returns come after.
    Session keys: the same for missions, follow-ups and repurchases, then browse-only sessions.
    """
    cust = _draw_customers(rng, n, catalog, calendar)
    lines = _Collector(customer=np.int32, product=np.int32, ts=np.int64, order=np.int64)
    events = _Collector(session=np.int64, product=np.int32, event_type=np.int8, slot=np.int8)

    missions = _draw_missions(rng, cust, catalog, calendar)
    _add_missions(rng, missions, catalog, lines, events)
    anchors = _add_baskets(rng, missions, cust, catalog, lines, events)
    follow_ts = _add_complements(rng, missions, anchors, cust, catalog, calendar, lines, events)
    repurchases = _add_repurchases(rng, missions.n, cust, catalog, calendar, lines, events)
    order_lines = _finish_lines(
        rng, lines, cust, catalog, calendar, return_key0=2 * missions.n + len(repurchases.ts)
    )
    browse = _add_browse_sessions(
        rng, cust, catalog, calendar, events, key0=2 * missions.n + len(repurchases.ts)
    )
    session_end = np.concatenate([missions.ts, follow_ts, repurchases.ts, browse.ts])
    session_customer = np.concatenate(
        [missions.customer, missions.customer, repurchases.customer, browse.customer]
    )
    browse_events = _finish_events(rng, events, session_end, session_customer, calendar)
    return _Chunk(customers=cust, lines=order_lines, events=browse_events)


@dataclass(frozen=True)
class _Missions:
    """Shopping missions of a chunk: each buys an anchor product, maybe after a session.

    ``considered`` is the tier the customer looked at first; ``tier`` the tier bought (one
    higher on an upgrade). A downsell puts the next tier in the cart, removes it and buys the
    considered one.
    """

    customer: np.ndarray
    ts: np.ndarray
    quarter: np.ndarray
    price_sensitivity: np.ndarray
    category: np.ndarray
    family: np.ndarray
    considered: np.ndarray
    tier: np.ndarray
    brand: np.ndarray
    product: np.ndarray
    upgrade: np.ndarray
    downsell: np.ndarray
    has_session: np.ndarray

    @property
    def n(self) -> int:
        """Number of missions."""
        return len(self.customer)


@dataclass(frozen=True)
class _Sessions:
    """End time and customer of a run of consecutive session keys."""

    ts: np.ndarray
    customer: np.ndarray


def _draw_categories(
    rng: np.random.Generator,
    customer: np.ndarray,
    day: np.ndarray,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
) -> np.ndarray:
    """The category a customer starts from: the favourite, or by persona and season."""
    favorite = rng.random(len(customer)) < cust.favorite_share[customer]
    seasonal = catalog.category_sampler.sample(
        rng, cust.group[customer] * 2 + calendar.is_gift(day)
    )
    return np.where(favorite, cust.favorite[customer], seasonal)


def _draw_missions(
    rng: np.random.Generator, cust: _Customers, catalog: _Catalog, calendar: _Calendar
) -> _Missions:
    """When each mission happens, its category, family, tiers and product."""
    M = int(cust.n_missions.sum())
    customer = np.repeat(np.arange(cust.n), cust.n_missions)
    day = calendar.draw_days(rng, cust.first_day[customer])
    quarter = calendar.quarter_of(day)
    ps = cust.price_sensitivity[customer]
    category = _draw_categories(rng, customer, day, cust, catalog, calendar)
    family = catalog.draw_families(rng, category, quarter)
    considered = _draw_tiers(rng, ps)
    has_next = considered < N_TIERS
    upgrade = has_next & (rng.random(M) < _UPGRADE_RATE * cust.upgrade_propensity[customer])
    downsell = has_next & ~upgrade & (rng.random(M) < _DOWNSELL_RATE * ps)
    tier = considered + upgrade
    brand = _draw_brands(rng, M)
    grocery = catalog.category_is_grocery[category]
    session_share = np.where(grocery, _SESSION_SHARE_GROCERY, _SESSION_SHARE_OTHER)
    return _Missions(
        customer=customer,
        ts=calendar.draw_times(rng, day),
        quarter=quarter,
        price_sensitivity=ps,
        category=category,
        family=family,
        considered=considered,
        tier=tier,
        brand=brand,
        product=_product_index(family, tier, brand),
        upgrade=upgrade,
        downsell=downsell,
        has_session=upgrade | downsell | (rng.random(M) < session_share),
    )


def _add_missions(
    rng: np.random.Generator,
    missions: _Missions,
    catalog: _Catalog,
    lines: _Collector,
    events: _Collector,
) -> None:
    """The anchor line of every mission and its session.

    Session: maybe a view of another family, a view of the considered tier, on an upgrade or
    downsell a view of the next tier (a downsell also adds and removes it), then the bought
    product goes to the cart.
    """
    m = missions
    lines.add(customer=m.customer, product=m.product, ts=m.ts, order=np.arange(m.n))
    sm = np.flatnonzero(m.has_session & (rng.random(m.n) < _COMPARISON_VIEW_SHARE))
    other = catalog.draw_families(rng, m.category[sm], m.quarter[sm])
    compared = _product_index(other, m.considered[sm], m.brand[sm])
    events.add(session=sm, product=compared, event_type=_VIEW_CODE, slot=0)
    sm = np.flatnonzero(m.has_session)
    considered = _product_index(m.family[sm], m.considered[sm], m.brand[sm])
    events.add(session=sm, product=considered, event_type=_VIEW_CODE, slot=1)
    sm = np.flatnonzero(m.upgrade | m.downsell)
    next_tier = _product_index(m.family[sm], m.considered[sm] + 1, m.brand[sm])
    events.add(session=sm, product=next_tier, event_type=_VIEW_CODE, slot=2)
    sm = np.flatnonzero(m.downsell)
    next_tier = _product_index(m.family[sm], m.considered[sm] + 1, m.brand[sm])
    events.add(session=sm, product=next_tier, event_type=_ADD_CODE, slot=3)
    events.add(session=sm, product=next_tier, event_type=_REMOVE_CODE, slot=4)
    sm = np.flatnonzero(m.has_session)
    events.add(session=sm, product=m.product[sm], event_type=_ADD_CODE, slot=5)


@dataclass(frozen=True)
class _Anchors:
    """Lines that can pull complements: mission anchors and grocery basket lines."""

    mission: np.ndarray
    category: np.ndarray
    family: np.ndarray
    tier: np.ndarray


def _add_baskets(
    rng: np.random.Generator,
    missions: _Missions,
    cust: _Customers,
    catalog: _Catalog,
    lines: _Collector,
    events: _Collector,
) -> _Anchors:
    """More grocery lines in grocery missions (bigger households, bigger baskets)."""
    m = missions
    household = cust.household[m.customer]
    mean_extra = _GROCERY_EXTRA_LINES[0] + _GROCERY_EXTRA_LINES[1] * (household - 1)
    n_extra = np.where(catalog.category_is_grocery[m.category], rng.poisson(mean_extra), 0)
    e_m = np.repeat(np.arange(m.n), n_extra)
    category = catalog.grocery_sampler.sample(rng, cust.group[m.customer[e_m]])
    family = catalog.draw_families(rng, category, m.quarter[e_m])
    tier = _draw_tiers(rng, m.price_sensitivity[e_m])
    product = _product_index(family, tier, _draw_brands(rng, len(e_m)))
    lines.add(customer=m.customer[e_m], product=product, ts=m.ts[e_m], order=e_m)
    se = np.flatnonzero(m.has_session[e_m])
    events.add(session=e_m[se], product=product[se], event_type=_ADD_CODE, slot=6)
    return _Anchors(
        mission=np.concatenate([np.arange(m.n), e_m]),
        category=np.concatenate([m.category, category]),
        family=np.concatenate([m.family, family]),
        tier=np.concatenate([m.tier, tier]),
    )


def _add_complements(
    rng: np.random.Generator,
    missions: _Missions,
    anchors: _Anchors,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    lines: _Collector,
    events: _Collector,
) -> np.ndarray:
    """Planted complements of anchor lines, in the same order or a follow-up order.

    The complement is usually the family compatible with the anchor's family, often at the
    anchor's tier. Bought in the same order it goes to the mission's cart (sometimes after a
    view); bought later it gets a follow-up session. Complements not bought are sometimes
    viewed. One-time customers buy their complements in the same order.

    Returns:
        The follow-up order time of every mission (used or not).
    """
    m = missions
    M = m.n
    follow_ts = m.ts + rng.integers(_FOLLOW_UP_DAYS[0] * DAY_S, _FOLLOW_UP_DAYS[1] * DAY_S, M)
    category_index = {c.name: k for k, c in enumerate(CATEGORIES)}
    for r, rel in enumerate(COMPLEMENTS):
        sel = np.flatnonzero(anchors.category == category_index[rel.category])
        k = len(sel)
        mm = anchors.mission[sel]
        c = m.customer[mm]
        multiplier = (
            _CROSS_SELL_MULTIPLIER[0] + _CROSS_SELL_MULTIPLIER[1] * (cust.cross_sell_propensity[c])
        )
        hit = rng.random(k) < np.minimum(0.95, rel.strength * multiplier)
        same = (rng.random(k) < rel.same_order_share) | cust.one_time[c]
        target = np.full(k, category_index[rel.complement])
        family = np.where(
            rng.random(k) < _COMPATIBLE_FAMILY_SHARE,
            catalog.compatible[anchors.family[sel], r],
            catalog.draw_families(rng, target, m.quarter[mm]),
        )
        tier = np.where(
            rng.random(k) < _SAME_TIER_COMPLEMENT_SHARE,
            anchors.tier[sel],
            _draw_tiers(rng, m.price_sensitivity[mm]),
        )
        prod = _product_index(family, tier, _draw_brands(rng, k))

        now = hit & same
        lines.add(customer=c[now], product=prod[now], ts=m.ts[mm[now]], order=mm[now])
        seen = now & m.has_session[mm]
        viewed = seen & (rng.random(k) < _COMPLEMENT_VIEW_SHARE)
        events.add(session=mm[viewed], product=prod[viewed], event_type=_VIEW_CODE, slot=6)
        events.add(session=mm[seen], product=prod[seen], event_type=_ADD_CODE, slot=7)

        later = hit & ~same & (follow_ts[mm] < calendar.end_s)
        lines.add(
            customer=c[later], product=prod[later], ts=follow_ts[mm[later]], order=M + mm[later]
        )
        viewed = later & (rng.random(k) < _FOLLOW_UP_VIEW_SHARE)
        events.add(session=M + mm[viewed], product=prod[viewed], event_type=_VIEW_CODE, slot=1)
        events.add(session=M + mm[later], product=prod[later], event_type=_ADD_CODE, slot=5)

        missed = ~hit & m.has_session[mm] & (rng.random(k) < _MISSED_COMPLEMENT_VIEW_SHARE)
        events.add(session=mm[missed], product=prod[missed], event_type=_VIEW_CODE, slot=8)
    return follow_ts


def _add_repurchases(
    rng: np.random.Generator,
    n_missions: int,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    lines: _Collector,
    events: _Collector,
) -> _Sessions:
    """Consumables bought so far start a repurchase rhythm (repeat customers only).

    A rhythm repeats the same product every category period (scaled per rhythm, with
    jitter) for a geometric number of times, longer for loyal customers. Repurchases of one
    customer on one day share an order; some orders have a cart session.

    Returns:
        End time and customer of every repurchase order (session keys ``2M + g``).
    """
    customer = lines.peek("customer")
    product = lines.peek("product")
    ts = lines.peek("ts")
    category = catalog.product_category(product)
    loyalty = cust.repeat_loyalty[customer]
    starts = np.flatnonzero(
        catalog.category_is_consumable[category]
        & ~cust.one_time[customer]
        & (rng.random(len(product)) < catalog.category_repeat_prob[category] * loyalty)
    )
    period = catalog.category_period_s[category[starts]] * rng.uniform(
        _PERIOD_SCALE[0], _PERIOD_SCALE[1], len(starts)
    )
    room = (calendar.end_s - 1 - ts[starts]) // period
    stop = _REPEAT_STOP[0] + _REPEAT_STOP[1] * (1.0 - loyalty[starts])
    n_rep = np.minimum(room, rng.geometric(stop)).astype(np.int64)
    src = np.repeat(starts, n_rep)
    k = np.arange(len(src)) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep) + 1
    period_src = np.repeat(period, n_rep)
    jitter = rng.uniform(-_PERIOD_JITTER, _PERIOD_JITTER, len(src)) * period_src
    r_ts = (ts[src] + k * period_src + jitter).astype(np.int64)
    keep = r_ts < calendar.end_s
    src, r_ts = src[keep], r_ts[keep]

    r_customer = customer[src].astype(np.int64)
    day = calendar.day_of(r_ts) + calendar.burn_in
    day_key = r_customer * (calendar.burn_in + calendar.days) + day
    idx = _sort_index(day_key, r_ts - calendar.start_s + calendar.burn_in * DAY_S)
    first = _run_starts(day_key[idx])
    group = np.empty(len(idx), dtype=np.int64)
    group[idx] = np.cumsum(first) - 1
    g_ts = r_ts[idx[first]]
    key = 2 * n_missions + group
    lines.add(customer=r_customer, product=product[src], ts=g_ts[group], order=key)
    sr = np.flatnonzero((rng.random(len(g_ts)) < _REPEAT_SESSION_SHARE)[group])
    events.add(session=key[sr], product=product[src[sr]], event_type=_ADD_CODE, slot=5)
    return _Sessions(ts=g_ts, customer=r_customer[idx[first]])


def _add_browse_sessions(
    rng: np.random.Generator,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    events: _Collector,
    *,
    key0: int,
) -> _Sessions:
    """Browse-only sessions: views in one category, sometimes an abandoned cart.

    Returns:
        End time and customer of every browse session (session keys ``key0 + b``).
    """
    n_browse = rng.poisson(_BROWSE_PER_MISSION * cust.n_missions + _BROWSE_BASE)
    B = int(n_browse.sum())
    customer = np.repeat(np.arange(cust.n), n_browse)
    day = calendar.draw_days(rng, np.maximum(cust.first_day[customer], 0))
    quarter = calendar.quarter_of(day)
    category = _draw_categories(rng, customer, day, cust, catalog, calendar)
    family = catalog.draw_families(rng, category, quarter)

    n_views = 1 + rng.poisson(_BROWSE_EXTRA_VIEWS, B)
    first_view = np.cumsum(n_views) - n_views
    v_b = np.repeat(np.arange(B), n_views)
    v_slot = np.minimum(np.arange(len(v_b)) - np.repeat(first_view, n_views), 49)
    v_family = np.where(
        rng.random(len(v_b)) < _BROWSE_SAME_FAMILY_SHARE,
        family[v_b],
        catalog.draw_families(rng, category[v_b], quarter[v_b]),
    )
    v_tier = _draw_tiers(rng, cust.price_sensitivity[customer[v_b]])
    v_prod = _product_index(v_family, v_tier, _draw_brands(rng, len(v_b)))
    events.add(session=key0 + v_b, product=v_prod, event_type=_VIEW_CODE, slot=v_slot)
    ab = np.flatnonzero(rng.random(B) < _BROWSE_ABANDON_SHARE)
    abandoned = v_prod[first_view[ab]]
    events.add(session=key0 + ab, product=abandoned, event_type=_ADD_CODE, slot=50)
    events.add(session=key0 + ab, product=abandoned, event_type=_REMOVE_CODE, slot=51)
    return _Sessions(ts=calendar.draw_times(rng, day), customer=customer)


def _draw_customers(
    rng: np.random.Generator, n: int, catalog: _Catalog, calendar: _Calendar
) -> _Customers:
    """Draw personas, signup dates, latent parameters and activity of ``n`` customers."""
    age_band = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_P)
    age_group = _AGE_GROUP_OF_BAND[age_band]
    income = _draw_rows(rng, _INCOME_BY_AGE_GROUP, age_group)
    region = rng.choice(len(REGIONS), size=n, p=_REGION_P)
    household = 1 + _draw_rows(rng, _HOUSEHOLD_BY_AGE_GROUP, age_group)
    group = _persona_group(age_group, income, household)

    in_year = rng.random(n) < _SIGNUP_IN_YEAR_SHARE
    signup_day = np.where(
        in_year,
        rng.integers(0, calendar.days - 1, n),
        -rng.integers(1, _SIGNUP_HISTORY_DAYS + 1, n),
    )
    signup_s = calendar.start_s + signup_day * DAY_S + rng.integers(0, DAY_S, n)
    one_time = rng.random(n) < np.where(in_year, _ONE_TIME_SHARE[1], _ONE_TIME_SHARE[0])
    # Missions start after signup; earlier customers' missions start in the burn-in, except a
    # one-time customer's single mission, which falls inside the period.
    first_day = np.maximum(signup_day + 1, np.where(one_time, 0, -calendar.burn_in))

    ps_beta = _PRICE_SENSITIVITY_BETA[income]
    price_sensitivity = np.clip(
        rng.beta(ps_beta[:, 0], ps_beta[:, 1]) + _REGION_PRICE_SHIFT[region], 0.02, 0.98
    )
    upgrade_mean = _UPGRADE_MEAN_BY_INCOME[income] + _UPGRADE_SHIFT_BY_AGE_GROUP[age_group]
    upgrade_propensity = rng.beta(8.0 * upgrade_mean, 8.0 * (1.0 - upgrade_mean))
    cross_sell_propensity = rng.beta(3.0, 3.0, n)
    repeat_loyalty = rng.beta(4.0, 2.0, n)
    favorite = catalog.favorite_sampler.sample(rng, group)
    favorite_share = rng.beta(*_FAVORITE_SHARE_BETA, n)

    years = np.maximum((calendar.days - first_day) / 365.0, 0.01)  # simulated window
    mean_extra = _BASE_MISSIONS * (0.8 + 0.1 * household) * _ACTIVITY_BY_INCOME[income] * years
    extra = rng.negative_binomial(
        _MISSION_DISPERSION, _MISSION_DISPERSION / (_MISSION_DISPERSION + mean_extra)
    )
    n_missions = np.where(one_time, 1, 2 + extra)
    return _Customers(
        age_band=age_band,
        age_group=age_group,
        income=income,
        region=region,
        household=household,
        group=group,
        signup_s=signup_s,
        first_day=first_day,
        price_sensitivity=price_sensitivity,
        upgrade_propensity=upgrade_propensity,
        cross_sell_propensity=cross_sell_propensity,
        repeat_loyalty=repeat_loyalty,
        favorite=favorite,
        favorite_share=favorite_share,
        one_time=one_time,
        n_missions=n_missions.astype(np.int64),
    )


def _finish_lines(
    rng: np.random.Generator,
    lines: _Collector,
    cust: _Customers,
    catalog: _Catalog,
    calendar: _Calendar,
    *,
    return_key0: int,
) -> _Lines:
    """Deduplicate, price, add returns, sort and number the orders of a chunk's lines."""
    customer = lines.pop("customer")
    product = lines.pop("product")
    ts = lines.pop("ts")
    order = lines.pop("order")

    # Only the period (the burn-in seeded rhythms), one line per product and order.
    inside = ts >= calendar.start_s
    customer, product, ts, order = customer[inside], product[inside], ts[inside], order[inside]
    idx = _sort_index(order, product)
    order_product = order[idx] * PRODUCTS_PER_FAMILY * len(catalog.family_category) + product[idx]
    keep = np.ones(len(idx), dtype=bool)
    keep[idx[~_run_starts(order_product)]] = False
    customer, product, ts, order = customer[keep], product[keep], ts[keep], order[keep]

    # Quantity and price paid.
    n = len(product)
    category = catalog.product_category(product)
    bulk = rng.poisson(0.2 + 0.1 * cust.household[customer])
    quantity = np.where(catalog.category_is_consumable[category], 1 + bulk, 1)
    promo = calendar.is_promo(calendar.day_of(ts))
    discount_rate = np.where(promo, _DISCOUNT_RATE[1], _DISCOUNT_RATE[0])
    discounted = rng.random(n) < discount_rate * (0.5 + cust.price_sensitivity[customer])
    discount = np.where(discounted, _DISCOUNTS[rng.integers(0, len(_DISCOUNTS), n)], 0.0)
    unit_price = np.maximum(np.round(catalog.price[product] * (1.0 - discount), 2), 0.01)

    # Returns of earlier lines (repeat customers only), each its own order.
    returned = np.flatnonzero(
        ~cust.one_time[customer] & (rng.random(n) < catalog.category_return_prob[category])
    )
    ret_ts = ts[returned] + rng.integers(
        _RETURN_DAYS[0] * DAY_S, _RETURN_DAYS[1] * DAY_S, len(returned)
    )
    returned, ret_ts = returned[ret_ts < calendar.end_s], ret_ts[ret_ts < calendar.end_s]
    customer = np.concatenate([customer, customer[returned]])
    product = np.concatenate([product, product[returned]])
    ts = np.concatenate([ts, ret_ts])
    order = np.concatenate([order, return_key0 + np.arange(len(returned))])
    unit_price = np.concatenate([unit_price, unit_price[returned]])
    quantity = np.concatenate([quantity, -quantity[returned]])

    # Orders by customer, time and key (all lines of an order share customer and time), then
    # lines by order and product.
    present = np.zeros(int(order.max()) + 1 if len(order) else 0, dtype=bool)
    present[order] = True
    dense = np.cumsum(present) - 1
    order = dense[order]
    n_orders = int(present.sum())
    order_customer = np.zeros(n_orders, dtype=np.int64)
    order_customer[order] = customer
    order_ts = np.zeros(n_orders, dtype=np.int64)
    order_ts[order] = ts - calendar.start_s
    rank = np.empty(n_orders, dtype=np.int64)
    rank[_sort_index(order_customer, order_ts)] = np.arange(n_orders)
    order = rank[order]
    idx = _sort_index(order, product)
    return _Lines(
        customer=customer[idx],
        product=product[idx],
        ts=ts[idx],
        order=order[idx],
        unit_price=unit_price[idx],
        quantity=quantity[idx],
        n_orders=n_orders,
    )


def _finish_events(
    rng: np.random.Generator,
    events: _Collector,
    session_end: np.ndarray,
    session_customer: np.ndarray,
    calendar: _Calendar,
) -> _Events:
    """Time, filter, sort and number the sessions of a chunk's events.

    Events of a session are spaced by a per-session step and end one step before the
    session's end time (the order's timestamp), so each precedes the order it leads to.
    """
    session = events.pop("session")
    slot = events.pop("slot")
    idx = _sort_index(session, slot)
    del slot
    session = session[idx]
    product = events.pop("product")[idx]
    event_type = events.pop("event_type")[idx]
    n = len(session)
    first = np.flatnonzero(_run_starts(session))
    size = np.diff(np.append(first, n))
    rank = np.arange(n) - np.repeat(first, size)
    count = np.repeat(size, size)
    step = rng.integers(_EVENT_STEP_S[0], _EVENT_STEP_S[1], len(session_end))
    ts = session_end[session] - (count - rank) * step[session]

    keep = ts >= calendar.start_s
    session, product, event_type, ts, rank = (
        session[keep], product[keep], event_type[keep], ts[keep], rank[keep]
    )  # fmt: skip
    # Sessions by customer, end time and key, then events by session and rank. ``session`` is
    # still sorted, so its runs are the used sessions in key order.
    starts = _run_starts(session)
    dense = np.cumsum(starts) - 1
    used = session[starts]
    n_sessions = len(used)
    order = np.empty(n_sessions, dtype=np.int64)
    order[_sort_index(session_customer[used], session_end[used] - calendar.start_s)] = np.arange(
        n_sessions
    )
    session = order[dense]
    idx = _sort_index(session, rank)
    return _Events(
        customer=session_customer[used][dense[idx]],
        product=product[idx],
        ts=ts[idx],
        event_type=event_type[idx],
        session=session[idx],
        n_sessions=n_sessions,
    )


# --------------------------------------------------------------------------------------------
# Arrow tables and writers
# --------------------------------------------------------------------------------------------


def _id_strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded string ids such as ``C0000001`` built in Arrow (no Python loop)."""
    digits = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string())
    padded = pc.utf8_lpad(digits, width=width, padding="0")
    return pc.binary_join_element_wise(prefix, padded, "")


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
