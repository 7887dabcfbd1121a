"""The feature snapshot: every statistic a query needs, from data strictly before a cut-off.

Training builds one snapshot per rolling cut-off ``T`` (from rows with ``ts < T``) and scores the
queries whose ``as_of`` falls in ``[T, next cut-off)`` against it; serving loads the snapshot that
training saved at ``--train-until``. Queries never see a row at or after their own ``as_of``
because ``T <= as_of``.

The snapshot is made of named, typed parts, each built by its own function from the same
:class:`Lines` (purchase lines before the cut-off, as positions):

* :class:`ProductStats` — per product: price, hierarchy, consumability, popularity, trend, ...
* :class:`CustomerStats` — per customer: recency/frequency/monetary, price level, persona.
* :class:`CustomerTables` — customer x product (or category, family) look-ups: ownership,
  purchase counts, recency-weighted frequency, repurchase intervals, category spend, last order.
* :class:`BrowsingTables` — customer x product views and carts (empty without events).
* :class:`PairTables` — item x item co-occurrence, sequences, category association, upsell pairs.
* :class:`TopLists` — global, trending and per-segment popular products.
* :class:`features.latent.LatentFactors` — item and customer vectors (truncated SVD).

Arrays are indexed by product position (``product_index``) or customer position
(``customer_index``); days are float days since 1970-01-01. Sparse tables are
:class:`features.arrays.PairLookup` (``.get(rows, cols)``, ``.row(r)``, ``.matrix``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.arrays import PairLookup, indicator, prune_rows, rank_within, share_keys
from features.config import FeatureConfig
from features.cooccurrence import (
    BasketCounts,
    basket_counts,
    basket_lift,
    cooccurrence,
    sequential_lift,
    sessions,
    viewed_then_bought,
)
from features.data import schema as s
from features.data.consumables import infer_consumable, repurchase_rates
from features.data.io import Shop
from features.latent import LatentFactors, latent_factors

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 2
DAY = np.timedelta64(1, "D")
EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")
LIFECYCLE_LEVELS = ("none", "new", "active", "lapsing")
BROWSING_WINDOWS = (7, 30)  # the views_7 / views_30 / carts_7 / carts_30 tables

CATEGORY_NEIGHBOURS = 20
UPSELL_PAIRS_PER_ANCHOR = 200
TRENDING_MIN_COUNT = 5
UPSELL_ANCHOR_CHUNK = 20_000


def to_days(ts: pd.Series | np.ndarray | pd.Timestamp) -> Any:
    """Timestamps as float days since 1970-01-01 (the time unit of every snapshot array)."""
    if isinstance(ts, pd.Timestamp):
        return float((ts.to_datetime64() - EPOCH) / DAY)
    values = np.asarray(ts, dtype="datetime64[ns]")
    return (values - EPOCH) / DAY


# --------------------------------------------------------------------------- the typed parts


@dataclass(frozen=True)
class ProductStats:
    """Per-product arrays (index: product position).

    Attributes:
        price: Current list price.
        log_price: ``log(price)``.
        category: Category code (into ``FeatureSnapshot.category_levels``).
        family: Family code (into ``FeatureSnapshot.family_levels``).
        is_consumable: The shop's label, or inferred from repurchases when unlabelled.
        consumable_rate: Shrunk share of buyers who bought the product again within the
            consumability horizon (:mod:`features.data.consumables`).
        in_stock: Stock flag.
        family_size: Number of versions in the product's family.
        tier_rank: Price rank within the family in [0, 1] (0.5 for one-version families).
        popularity: Window (days) -> share of the order lines of that window.
        pop_pct_in_category: Popularity percentile within the category (1 = best seller).
        trend: ``log`` ratio of the shortest to the longest popularity window.
        repurchase_rate: Share of buyers who bought the product in two or more orders.
        buyers: Number of distinct buyers.
        price_pct_in_category: Mean paid-price percentile within the category.
        cycle_days: Median days between repeat purchases of the product (NaN if none).
    """

    price: np.ndarray
    log_price: np.ndarray
    category: np.ndarray
    family: np.ndarray
    is_consumable: np.ndarray
    consumable_rate: np.ndarray
    in_stock: np.ndarray
    family_size: np.ndarray
    tier_rank: np.ndarray
    popularity: dict[int, np.ndarray]
    pop_pct_in_category: np.ndarray
    trend: np.ndarray
    repurchase_rate: np.ndarray
    buyers: np.ndarray
    price_pct_in_category: np.ndarray
    cycle_days: np.ndarray

    @property
    def long_popularity(self) -> np.ndarray:
        """Popularity share over the longest configured window."""
        return self.popularity[max(self.popularity)]


@dataclass(frozen=True)
class CustomerStats:
    """Per-customer arrays (index: customer position; NaN where the customer has no orders).

    Attributes:
        first_day, last_day: First and last purchase day.
        signup_day: Signup day (NaN when unknown or after the cut-off).
        n_orders: Number of orders.
        monetary: Total spend.
        price_level: Mean paid-price percentile within category.
        segment: Segment code (into ``FeatureSnapshot.segment_levels``).
        persona: Persona column -> numeric value or category code (NaN unknown).
    """

    first_day: np.ndarray
    last_day: np.ndarray
    signup_day: np.ndarray
    n_orders: np.ndarray
    monetary: np.ndarray
    price_level: np.ndarray
    segment: np.ndarray
    persona: dict[str, np.ndarray]


@dataclass(frozen=True)
class CustomerTables:
    """Customer x product (or category / family) look-ups of purchase history.

    Attributes:
        owned: Net quantity owned (returns subtract); only positive entries stored.
        bought: Number of distinct orders holding the product (ever bought: > 0).
        frequency: Recency-weighted order count, ``sum 0.5 ** (age / half_life)``.
        last_bought: Day of the last purchase of the product.
        interval: Mean days between the customer's purchases of the product (2+ orders).
        owns_family: Customer x family indicator of owned products.
        cat_spend: Customer x category share of spend.
        cat_last_day: Customer x category day of the last purchase.
        last_order: Customer x product indicator of the customer's most recent order.
    """

    owned: PairLookup
    bought: PairLookup
    frequency: PairLookup
    last_bought: PairLookup
    interval: PairLookup
    owns_family: PairLookup
    cat_spend: PairLookup
    cat_last_day: PairLookup
    last_order: PairLookup


@dataclass(frozen=True)
class BrowsingTables:
    """Customer x product (or family) browsing counts before the cut-off (empty without events).

    Attributes:
        views_7, views_30, carts_7, carts_30: Views / add-to-carts in the last 7 / 30 days.
        family_views_30: Customer x family views in the last 30 days.
        last_session: Views and carts of the customer's last session.
    """

    views_7: PairLookup
    views_30: PairLookup
    carts_7: PairLookup
    carts_30: PairLookup
    family_views_30: PairLookup
    last_session: PairLookup


@dataclass(frozen=True)
class PairTables:
    """Item x item tables (rows: the context product or category).

    Attributes:
        cooc: Order co-occurrence shrunk lift (top neighbours, lift > 1).
        cooc_conf: Confidence ``P(b | a)`` on the same pairs.
        sequential: "Bought A, then B in the next order" shrunk lift.
        coview, cocart: Session co-occurrence of views / add-to-carts.
        category_assoc: Category x category lift.
        category_top: Category x product share of the category's recent lines.
        family_assoc: Family x family lift (complements at the family level).
        family_top: Family x product share of the family's recent lines (top 10).
        upsell_pairs: Anchor x version: same family, pricier, within the uplift cap.
        viewed_bought: Anchor x version: "viewed A, bought B" counts within the cap.
    """

    cooc: PairLookup
    cooc_conf: PairLookup
    sequential: PairLookup
    coview: PairLookup
    cocart: PairLookup
    category_assoc: PairLookup
    category_top: PairLookup
    family_assoc: PairLookup
    family_top: PairLookup
    upsell_pairs: PairLookup
    viewed_bought: PairLookup


@dataclass(frozen=True)
class TopLists:
    """Popular-product lists.

    Attributes:
        global_top: Most popular products (longest window), best first.
        trending_top: Products with the most rising share, best first.
        trending_score: Their trend values.
        segment_top: Segment x product share of the segment's recent lines (top per segment).
    """

    global_top: np.ndarray
    trending_top: np.ndarray
    trending_score: np.ndarray
    segment_top: PairLookup


PART_TYPES: dict[str, type] = {
    "latent": LatentFactors,
    "products": ProductStats,
    "customers": CustomerStats,
    "history": CustomerTables,
    "browsing": BrowsingTables,
    "pairs": PairTables,
    "top": TopLists,
}


@dataclass
class FeatureSnapshot:
    """Everything the candidate sources and features read, as of ``as_of``.

    Attributes:
        as_of: The cut-off (float days since 1970-01-01).
        config: The configuration it was built with.
        product_ids, customer_ids: Ids by position (every product and customer of the shop).
        category_levels, family_levels, segment_levels: Names of the codes.
        segment_column: The persona column behind ``segment`` (None: one segment "all").
        persona_levels: Persona column -> levels (None for numeric columns).
        products, customers, history, browsing, pairs, top, latent: The typed parts.
    """

    PARTS: ClassVar[tuple[str, ...]] = tuple(PART_TYPES)

    as_of: float
    config: FeatureConfig
    product_ids: np.ndarray
    customer_ids: np.ndarray
    category_levels: list[str]
    family_levels: list[str]
    segment_levels: list[str]
    segment_column: str | None
    persona_levels: dict[str, list[str] | None]
    products: ProductStats
    customers: CustomerStats
    history: CustomerTables
    browsing: BrowsingTables
    pairs: PairTables
    top: TopLists
    latent: LatentFactors
    product_index: dict[str, int] = field(default_factory=dict)
    customer_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.product_index = {p: i for i, p in enumerate(self.product_ids.tolist())}
        self.customer_index = {c: i for i, c in enumerate(self.customer_ids.tolist())}
        tables = (
            getattr(getattr(self, part), f.name)
            for part in self.PARTS
            for f in dataclasses.fields(getattr(self, part))
        )
        share_keys(t for t in tables if isinstance(t, PairLookup))

    @property
    def n_products(self) -> int:
        """Number of products in the catalog."""
        return len(self.product_ids)

    @property
    def n_customers(self) -> int:
        """Number of known customers."""
        return len(self.customer_ids)

    def last_order(self, customer: int) -> np.ndarray:
        """Product positions of the customer's most recent order before the cut-off (empty for
        an unknown customer or one without orders)."""
        if customer < 0:
            return np.zeros(0, dtype=np.int64)
        return self.history.last_order.row(customer)[0].astype(np.int64)

    def segment_of(self, customer: np.ndarray) -> np.ndarray:
        """Segment code per customer position (-1 for unknown customers)."""
        seg = np.full(len(customer), -1, dtype=np.int64)
        known = customer >= 0
        seg[known] = self.customers.segment[customer[known]]
        return seg

    def segment_popularity(self, customer: np.ndarray, product: np.ndarray) -> np.ndarray:
        """The one definition of segment popularity: the product's share of its customer's
        segment's recent lines (top list per segment), or its global share for unknown
        customers. Used by the source, the feature, the baseline and the cold-start fallback."""
        seg = self.segment_of(customer)
        share = self.top.segment_top.get(seg, product)
        return np.where(seg < 0, self.products.long_popularity[product], share)

    @property
    def as_of_timestamp(self) -> pd.Timestamp:
        """The cut-off as a timestamp."""
        return pd.Timestamp(EPOCH + np.timedelta64(round(self.as_of * 86400e9), "ns"))

    @property
    def persona_columns(self) -> list[str]:
        """Persona attribute columns carried as features."""
        return list(self.persona_levels)

    def save(self, folder: str | Path) -> Path:
        """Write the snapshot to ``folder`` (``parts.npz`` and ``meta.json``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "product_ids": self.product_ids.astype(str),
            "customer_ids": self.customer_ids.astype(str),
        }
        keys: dict[str, dict[str, list[str]]] = {}
        for part in self.PARTS:
            for f in dataclasses.fields(getattr(self, part)):
                value = getattr(getattr(self, part), f.name)
                name = f"{part}.{f.name}"
                if isinstance(value, dict):
                    keys.setdefault(part, {})[f.name] = [str(k) for k in value]
                    for k, v in value.items():
                        arrays[f"{name}.{k}"] = v
                elif isinstance(value, PairLookup):
                    coo = value.matrix.tocoo()
                    arrays[f"{name}.row"] = coo.row.astype(np.int32)
                    arrays[f"{name}.col"] = coo.col.astype(np.int32)
                    arrays[f"{name}.data"] = coo.data
                    arrays[f"{name}.shape"] = np.asarray(value.matrix.shape, dtype=np.int64)
                else:
                    arrays[name] = value
        np.savez(folder / "parts.npz", **arrays)  # type: ignore[arg-type]
        meta = {
            "version": SNAPSHOT_VERSION,
            "as_of": self.as_of,
            "config": self.config.model_dump(mode="json"),
            "category_levels": self.category_levels,
            "family_levels": self.family_levels,
            "segment_levels": self.segment_levels,
            "segment_column": self.segment_column,
            "persona_levels": self.persona_levels,
            "dict_keys": keys,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureSnapshot:
        """Read a snapshot written by :meth:`save`.

        Raises:
            ValueError: The folder is missing files, is corrupt or has another version.
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("version") != SNAPSHOT_VERSION:
                raise ValueError(
                    f"snapshot version {meta.get('version')} != supported {SNAPSHOT_VERSION}"
                )
            with np.load(folder / "parts.npz", allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
            parts = {
                part: _load_part(PART_TYPES[part], part, raw, meta["dict_keys"].get(part, {}))
                for part in cls.PARTS
            }
            return cls(
                as_of=float(meta["as_of"]),
                config=FeatureConfig.model_validate(meta["config"]),
                product_ids=raw["product_ids"].astype(object),
                customer_ids=raw["customer_ids"].astype(object),
                category_levels=meta["category_levels"],
                family_levels=meta["family_levels"],
                segment_levels=meta["segment_levels"],
                segment_column=meta["segment_column"],
                persona_levels=meta["persona_levels"],
                **parts,
            )
        except (OSError, KeyError, TypeError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"cannot load feature snapshot from {folder}: {exc}") from exc


def _load_part(
    kind: type, part: str, raw: dict[str, np.ndarray], dict_keys: dict[str, list[str]]
) -> Any:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        name = f"{part}.{f.name}"
        if f.name in dict_keys:
            convert = int if "int" in str(f.type) else str
            values[f.name] = {convert(k): raw[f"{name}.{k}"] for k in dict_keys[f.name]}
        elif f"{name}.shape" in raw:
            shape = tuple(int(x) for x in raw[f"{name}.shape"])
            matrix = sp.csr_matrix(
                (raw[f"{name}.data"], (raw[f"{name}.row"], raw[f"{name}.col"])), shape=shape
            )
            values[f.name] = PairLookup(matrix)
        else:
            values[f.name] = raw[name]
    return kind(**values)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Catalog:
    """Products and customers in position order, with their category and family codes."""

    products: pd.DataFrame
    customers: pd.DataFrame
    category: np.ndarray
    category_levels: list[str]
    family: np.ndarray
    family_levels: list[str]
    price: np.ndarray

    @property
    def n_products(self) -> int:
        """Number of products."""
        return len(self.products)

    @property
    def n_customers(self) -> int:
        """Number of customers."""
        return len(self.customers)


@dataclass(frozen=True)
class Lines:
    """Purchase lines strictly before the cut-off, as positions: the input of every builder.

    Attributes:
        now: The cut-off in days.
        day, product, customer, order: Per line (order as a code).
        quantity, unit: Quantity (negative: return) and paid unit price.
        positive: Lines with a positive quantity (purchases, not returns).
        history: Positive lines inside ``history_days`` (co-occurrence tables).
        price_pct: Paid-price percentile of the line within its category (NaN for returns).
    """

    now: float
    day: np.ndarray
    product: np.ndarray
    customer: np.ndarray
    order: np.ndarray
    quantity: np.ndarray
    unit: np.ndarray
    positive: np.ndarray
    history: np.ndarray
    price_pct: np.ndarray


# Counts the baskets of a snapshot's history lines with products mapped to items (themselves,
# their category or family): count_baskets reads the lines; the Dask engine counts the same rows
# on its cluster (features/distributed.py).
BasketCounter = Callable[[Lines, np.ndarray, int], BasketCounts]


def count_baskets(lines: Lines, item_of_product: np.ndarray, n_items: int) -> BasketCounts:
    """Basket co-occurrence counts of the history lines (``lines.history``), products mapped to
    items by ``item_of_product``."""
    hist = lines.history
    return basket_counts(lines.order[hist], item_of_product[lines.product[hist]], n_items)


def shop_catalog(shop: Shop) -> Catalog:
    """Products and customers sorted by id, their positions being the snapshot's indices."""
    products = shop.products.sort_values(s.PRODUCT_ID).reset_index(drop=True)
    customers = shop.customers.sort_values(s.CUSTOMER_ID).reset_index(drop=True)
    category, category_levels = pd.factorize(products[s.CATEGORY], sort=True)
    family, family_levels = pd.factorize(products[s.FAMILY], sort=True)
    return Catalog(
        products=products,
        customers=customers,
        category=category.astype(np.int32),
        category_levels=[str(x) for x in category_levels],
        family=family.astype(np.int32),
        family_levels=[str(x) for x in family_levels],
        price=products[s.PRICE].to_numpy(dtype=np.float64),
    )


def purchase_lines(
    shop: Shop, catalog: Catalog, *, as_of: pd.Timestamp, config: FeatureConfig
) -> Lines:
    """The shop's purchase lines with ``ts < as_of`` as positions."""
    before = (shop.purchases[s.TS] < as_of).to_numpy()
    pur = shop.purchases.loc[before]
    codes = shop.purchase_codes
    assert codes.order is not None
    now = to_days(as_of)
    day = np.asarray(to_days(pur[s.TS]), dtype=np.float64)
    product, customer = codes.product[before], codes.customer[before]
    quantity = pur[s.QUANTITY].to_numpy(dtype=np.float64)
    unit = pur[s.UNIT_PRICE].to_numpy(dtype=np.float64)
    positive = quantity > 0
    history = positive
    if config.history_days is not None:
        history = positive & (day >= now - config.history_days)
    n_cat = len(catalog.category_levels)
    line_cat = catalog.category[product]
    price_pct = np.full(len(pur), np.nan)
    if positive.any():
        idx = np.flatnonzero(positive)
        r = rank_within(line_cat[idx], unit[idx], descending=False)
        n_in = np.bincount(line_cat[idx], minlength=n_cat)[line_cat[idx]]
        price_pct[idx] = np.where(n_in > 1, (r - 1) / np.maximum(n_in - 1, 1), 0.5)
    return Lines(
        now=float(now),
        day=day,
        product=product,
        customer=customer,
        order=pd.factorize(codes.order[before])[0].astype(np.int64),  # first appearance
        quantity=quantity,
        unit=unit,
        positive=positive,
        history=history,
        price_pct=price_pct,
    )


def _per_product_orders(lines: Lines) -> pd.DataFrame:
    """Distinct (customer, product, order, day) of positive lines."""
    pos = lines.positive
    frame = pd.DataFrame(
        {
            "c": lines.customer[pos],
            "p": lines.product[pos],
            "o": lines.order[pos],
            "d": lines.day[pos],
        }
    )
    return frame.drop_duplicates(["c", "p", "o"])


def product_stats(
    shop: Shop, catalog: Catalog, lines: Lines, config: FeatureConfig
) -> ProductStats:
    """Per-product statistics (see :class:`ProductStats`)."""
    n_p, n_cat = catalog.n_products, len(catalog.category_levels)
    category, family, price = catalog.category, catalog.family, catalog.price
    pos = lines.positive
    popularity = {}
    for w in config.popularity_windows_days:
        m = pos & (lines.day >= lines.now - w)
        counts = np.bincount(lines.product[m], minlength=n_p).astype(np.float64)
        popularity[w] = counts / max(counts.sum(), 1.0)
    long_pop = popularity[max(popularity)]
    short_pop = popularity[min(popularity)]
    eps = 1.0 / max(int(pos.sum()), 1)
    cat_n = np.bincount(category, minlength=n_cat)[category]
    per_cp = (
        _per_product_orders(lines).groupby(["c", "p"], sort=False)["d"].agg(["size", "min", "max"])
    )
    p_of_cp = per_cp.index.get_level_values("p").to_numpy()
    n_orders = per_cp["size"].to_numpy()
    buyers = np.bincount(p_of_cp, minlength=n_p)
    repeaters = np.bincount(p_of_cp[n_orders > 1], minlength=n_p)
    span = (per_cp["max"] - per_cp["min"]).to_numpy()
    repeat = (n_orders > 1) & (span > 0)
    interval = pd.Series(span[repeat] / (n_orders[repeat] - 1)).groupby(p_of_cp[repeat]).median()
    cycle_days = np.full(n_p, np.nan)
    cycle_days[interval.index.to_numpy()] = interval.to_numpy()
    sums = np.bincount(lines.product[pos], weights=lines.price_pct[pos], minlength=n_p)
    cnt = np.bincount(lines.product[pos], minlength=n_p)
    paid_pct = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    list_r = rank_within(category, price, descending=False)
    list_pct = np.where(cat_n > 1, (list_r - 1) / np.maximum(cat_n - 1, 1), 0.5)
    fam_size = np.bincount(family, minlength=len(catalog.family_levels))[family]
    tier_pos = rank_within(family, price, descending=False) - 1
    estimate = repurchase_rates(
        lines.customer[pos],
        lines.product[pos],
        lines.day[pos],
        category,
        n_products=n_p,
        n_categories=n_cat,
        horizon_days=config.consumable_horizon_days,
        prior_strength=config.consumable_prior,
        as_of_day=lines.now,
    )
    labelled = catalog.products[s.IS_CONSUMABLE].to_numpy(dtype=bool)
    inferred = infer_consumable(estimate, config.consumable_threshold)
    return ProductStats(
        price=price,
        log_price=np.log(price),
        category=category,
        family=family,
        is_consumable=labelled if shop.consumable_labelled else inferred,
        consumable_rate=np.asarray(estimate.rate, dtype=np.float64),
        in_stock=catalog.products[s.IN_STOCK].to_numpy(dtype=bool),
        family_size=fam_size.astype(np.float64),
        tier_rank=np.where(fam_size > 1, tier_pos / np.maximum(fam_size - 1, 1), 0.5),
        popularity=popularity,
        pop_pct_in_category=1.0 - (rank_within(category, long_pop) - 1) / np.maximum(cat_n, 1),
        trend=np.log((short_pop + eps) / (long_pop + eps)),
        repurchase_rate=np.where(buyers > 0, repeaters / np.maximum(buyers, 1), np.nan),
        buyers=buyers.astype(np.float64),
        price_pct_in_category=np.where(np.isnan(paid_pct), list_pct, paid_pct),
        cycle_days=cycle_days,
    )


def _segment_column(shop: Shop, config: FeatureConfig) -> str | None:
    if config.segment_column is not None:
        if config.segment_column not in shop.customers.columns:
            raise ValueError(f"customers has no segment column {config.segment_column!r}")
        return config.segment_column
    for col in s.SEGMENT_COLUMNS:
        if col in shop.customers.columns:
            return col
    return None


def customer_stats(
    shop: Shop, catalog: Catalog, lines: Lines, segment_column: str | None
) -> tuple[CustomerStats, list[str], dict[str, list[str] | None]]:
    """Per-customer statistics, the segment levels and the persona levels."""
    n_c = catalog.n_customers
    customers = catalog.customers
    pos = lines.positive
    first = np.full(n_c, np.nan)
    last = np.full(n_c, np.nan)
    if pos.any():
        cc, dd = lines.customer[pos], lines.day[pos]
        order = np.lexsort((dd, cc))
        cs, ds = cc[order], dd[order]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        ends = np.r_[starts[1:], len(cs)] - 1
        first[cs[starts]] = ds[starts]
        last[cs[ends]] = ds[ends]
    if s.SIGNUP_DATE in customers.columns:
        signup = np.asarray(to_days(customers[s.SIGNUP_DATE]), dtype=np.float64)
        signup_day = np.where(signup < lines.now, signup, np.nan)
    else:
        signup_day = np.full(n_c, np.nan)
    orders_c = pd.DataFrame({"c": lines.customer[pos], "o": lines.order[pos]}).drop_duplicates()
    lvl_sum = np.bincount(
        lines.customer[pos], weights=np.nan_to_num(lines.price_pct[pos]), minlength=n_c
    )
    lvl_n = np.bincount(lines.customer[pos], minlength=n_c)
    if segment_column is not None:
        seg_values = customers[segment_column].astype("str").fillna("unknown")
        seg_codes, seg_levels = pd.factorize(seg_values, sort=True)
        segment_levels = [str(x) for x in seg_levels]
    else:
        seg_codes, segment_levels = np.zeros(n_c, dtype=np.int64), ["all"]
    persona: dict[str, np.ndarray] = {}
    persona_levels: dict[str, list[str] | None] = {}
    for col in shop.persona_columns:
        values = customers[col]
        if pd.api.types.is_numeric_dtype(values):
            persona_levels[col] = None
            persona[col] = values.to_numpy(dtype=np.float64)
        else:
            codes, levels = pd.factorize(values, sort=True)
            persona_levels[col] = [str(x) for x in levels]
            persona[col] = np.where(codes < 0, np.nan, codes).astype(np.float64)
    stats = CustomerStats(
        first_day=first,
        last_day=last,
        signup_day=signup_day,
        n_orders=np.bincount(orders_c["c"], minlength=n_c).astype(np.float64),
        monetary=np.bincount(
            lines.customer[pos], weights=(lines.unit * lines.quantity)[pos], minlength=n_c
        ),
        price_level=np.where(lvl_n > 0, lvl_sum / np.maximum(lvl_n, 1), np.nan),
        segment=np.asarray(seg_codes, dtype=np.int32),
        persona=persona,
    )
    return stats, segment_levels, persona_levels


def _sparse(
    values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> PairLookup:
    m = sp.csr_matrix((values, (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.eliminate_zeros()
    return PairLookup(m)


def customer_tables(catalog: Catalog, lines: Lines, config: FeatureConfig) -> CustomerTables:
    """Customer x product / category / family look-ups (see :class:`CustomerTables`)."""
    n_c, n_p = catalog.n_customers, catalog.n_products
    n_cat, n_fam = len(catalog.category_levels), len(catalog.family_levels)
    pos = lines.positive
    owned = sp.csr_matrix((lines.quantity, (lines.customer, lines.product)), shape=(n_c, n_p))
    owned.sum_duplicates()
    owned.data = np.where(owned.data > 0, owned.data, 0.0)
    owned.eliminate_zeros()
    oc = owned.tocoo()
    per = _per_product_orders(lines)
    grouped = per.groupby(["c", "p"], sort=False)["d"]
    stats = grouped.agg(["size", "min", "max"])
    c_idx = stats.index.get_level_values("c").to_numpy()
    p_idx = stats.index.get_level_values("p").to_numpy()
    count = stats["size"].to_numpy(dtype=np.float64)
    interval = np.where(
        count > 1, (stats["max"] - stats["min"]).to_numpy() / np.maximum(count - 1, 1), 0.0
    )
    weight = 0.5 ** ((lines.now - per["d"].to_numpy()) / config.replenish_half_life_days)
    line_cat = catalog.category[lines.product]
    spend = sp.csr_matrix(
        ((lines.unit * lines.quantity)[pos], (lines.customer[pos], line_cat[pos])),
        shape=(n_c, n_cat),
    )
    spend.sum_duplicates()
    totals = np.asarray(spend.sum(axis=1)).ravel()
    spend = sp.csr_matrix(sp.diags(1.0 / np.maximum(totals, 1e-9)) @ spend)
    last_cat = pd.DataFrame({"c": lines.customer[pos], "k": line_cat[pos], "d": lines.day[pos]})
    last_cat = last_cat.groupby(["c", "k"], sort=False)["d"].max()
    return CustomerTables(
        owned=PairLookup(owned),
        bought=_sparse(count, c_idx, p_idx, (n_c, n_p)),
        frequency=_sparse(weight, per["c"].to_numpy(), per["p"].to_numpy(), (n_c, n_p)),
        last_bought=_sparse(stats["max"].to_numpy(), c_idx, p_idx, (n_c, n_p)),
        interval=_sparse(interval, c_idx, p_idx, (n_c, n_p)),
        owns_family=PairLookup(indicator(oc.row, catalog.family[oc.col], (n_c, n_fam))),
        cat_spend=PairLookup(spend),
        cat_last_day=_sparse(
            last_cat.to_numpy(),
            last_cat.index.get_level_values("c").to_numpy(),
            last_cat.index.get_level_values("k").to_numpy(),
            (n_c, n_cat),
        ),
        last_order=PairLookup(
            _last_orders(
                lines.customer[pos], lines.order[pos], lines.day[pos], lines.product[pos], n_c, n_p
            )
        ),
    )


def pair_tables(
    shop: Shop,
    catalog: Catalog,
    lines: Lines,
    products: ProductStats,
    event_rows: EventLines | None,
    config: FeatureConfig,
    *,
    as_of: pd.Timestamp,
    counter: BasketCounter = count_baskets,
) -> PairTables:
    """Item x item tables from baskets, order sequences and sessions (see :class:`PairTables`)."""
    cfg = config
    n_p, n_cat = catalog.n_products, len(catalog.category_levels)
    hist = lines.history
    cooc, cooc_conf = basket_lift(
        counter(lines, np.arange(n_p), n_p),
        cfg.cooc_prior,
        cfg.cooc_neighbours,
        cfg.min_pair_count,
    )
    orders_df = pd.DataFrame(
        {
            "order": lines.order[hist],
            "customer": lines.customer[hist],
            "day": lines.day[hist],
            "item": lines.product[hist],
        }
    ).drop_duplicates(["order", "item"])
    sequential = sequential_lift(
        orders_df,
        n_p,
        cfg.sequential_window_days,
        cfg.cooc_prior,
        cfg.cooc_neighbours,
        cfg.min_pair_count,
    )
    category_assoc, category_top = _group_tables(
        catalog.category, n_cat, lines, products.long_popularity, cfg, counter, top_n=cfg.per_source
    )
    family_assoc, family_top = _group_tables(
        catalog.family,
        len(catalog.family_levels),
        lines,
        products.long_popularity,
        cfg,
        counter,
        top_n=10,
    )
    long_pop = products.long_popularity
    events = _event_pair_tables(shop, catalog, event_rows, cfg, as_of)
    upsell = _upsell_pairs(catalog.family, catalog.price, long_pop, cfg.upsell_max_uplift)
    vb = events["viewed_bought_raw"]
    if vb.nnz:
        allowed = PairLookup(upsell)
        c = vb.tocoo()
        ok = allowed.get(c.row, c.col) > 0
        vb = sp.csr_matrix((c.data[ok], (c.row[ok], c.col[ok])), shape=vb.shape)
    return PairTables(
        cooc=PairLookup(cooc),
        cooc_conf=PairLookup(cooc_conf),
        sequential=PairLookup(sequential),
        coview=PairLookup(events["coview"]),
        cocart=PairLookup(events["cocart"]),
        category_assoc=PairLookup(category_assoc),
        category_top=PairLookup(category_top),
        family_assoc=PairLookup(family_assoc),
        family_top=PairLookup(family_top),
        upsell_pairs=PairLookup(upsell),
        viewed_bought=PairLookup(vb),
    )


def _group_tables(
    group: np.ndarray,
    n_groups: int,
    lines: Lines,
    popularity: np.ndarray,
    config: FeatureConfig,
    counter: BasketCounter,
    *,
    top_n: int,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Group x group lift mined from orders, and each group's best sellers (share of the
    group's recent lines, top ``top_n``), for a product grouping (category or family)."""
    assoc, _ = basket_lift(
        counter(lines, group, n_groups),
        config.cooc_prior,
        CATEGORY_NEIGHBOURS,
    )
    share = popularity / np.maximum(
        np.bincount(group, weights=popularity, minlength=n_groups)[group], 1e-12
    )
    keep = (rank_within(group, popularity) <= top_n) & (popularity > 0)
    top = sp.csr_matrix(
        (share[keep], (group[keep], np.flatnonzero(keep))), shape=(n_groups, len(group))
    )
    return assoc, top


def top_lists(
    catalog: Catalog,
    lines: Lines,
    products: ProductStats,
    customers: CustomerStats,
    n_segments: int,
    config: FeatureConfig,
) -> TopLists:
    """Global, trending and per-segment popular products (see :class:`TopLists`)."""
    n_p = catalog.n_products
    w_long = max(config.popularity_windows_days)
    long_pop = products.long_popularity
    recent = lines.positive & (lines.day >= lines.now - w_long)
    seg_line = customers.segment[lines.customer[recent]]
    seg_counts = sp.csr_matrix(
        (np.ones(int(recent.sum())), (seg_line, lines.product[recent])), shape=(n_segments, n_p)
    )
    seg_counts.sum_duplicates()
    seg_tot = np.asarray(seg_counts.sum(axis=1)).ravel()
    seg_share = sp.csr_matrix(sp.diags(1.0 / np.maximum(seg_tot, 1)) @ seg_counts)
    order_pop = np.lexsort((np.arange(n_p), -long_pop))[: config.per_source]
    recent_count = long_pop * max(int(recent.sum()), 1)
    trend_key = np.where(recent_count >= TRENDING_MIN_COUNT, products.trend, -np.inf)
    order_tr = np.lexsort((np.arange(n_p), -trend_key))[: config.per_source]
    order_tr = order_tr[np.isfinite(trend_key[order_tr]) & (trend_key[order_tr] > 0)]
    return TopLists(
        global_top=order_pop[long_pop[order_pop] > 0].astype(np.int64),
        trending_top=order_tr.astype(np.int64),
        trending_score=trend_key[order_tr],
        segment_top=PairLookup(prune_rows(seg_share, config.per_source)),
    )


def build_snapshot(
    shop: Shop,
    *,
    as_of: pd.Timestamp,
    config: FeatureConfig | None = None,
    counter: BasketCounter = count_baskets,
) -> FeatureSnapshot:
    """Compute every part from rows of ``shop`` strictly before ``as_of``.

    Args:
        shop: The validated shop.
        as_of: The cut-off; rows with ``ts >= as_of`` are never read.
        config: Windows and sizes (defaults when None).
        counter: Counts the basket co-occurrences of the history lines (product, category and
            family pairs): :func:`count_baskets` here, or the same counts on a Dask cluster.
    """
    cfg = config or FeatureConfig()
    as_of = pd.Timestamp(as_of)
    catalog = shop_catalog(shop)
    lines = purchase_lines(shop, catalog, as_of=as_of, config=cfg)
    products = product_stats(shop, catalog, lines, cfg)
    seg_col = _segment_column(shop, cfg)
    customers, segment_levels, persona_levels = customer_stats(shop, catalog, lines, seg_col)
    events = event_lines(shop, catalog, as_of=as_of, config=cfg)
    history = customer_tables(catalog, lines, cfg)
    return FeatureSnapshot(
        as_of=lines.now,
        config=cfg,
        product_ids=catalog.products[s.PRODUCT_ID].to_numpy(dtype=object),
        customer_ids=catalog.customers[s.CUSTOMER_ID].to_numpy(dtype=object),
        category_levels=catalog.category_levels,
        family_levels=catalog.family_levels,
        segment_levels=segment_levels,
        segment_column=seg_col,
        persona_levels=persona_levels,
        products=products,
        customers=customers,
        history=history,
        browsing=browsing_tables(catalog, events, lines.now),
        pairs=pair_tables(
            shop, catalog, lines, products, events, cfg, as_of=as_of, counter=counter
        ),
        top=top_lists(catalog, lines, products, customers, len(segment_levels), cfg),
        latent=latent_factors(
            history.frequency,
            products.buyers,
            dims=cfg.latent_dims,
            min_buyers=cfg.latent_min_buyers,
            pool_size=cfg.neighbour_pool,
        ),
    )


def _last_orders(
    customer: np.ndarray,
    order: np.ndarray,
    day: np.ndarray,
    product: np.ndarray,
    n_customers: int,
    n_products: int,
) -> sp.csr_matrix:
    """Customer x product indicator of each customer's most recent order (latest day, then order).

    Args:
        customer, order, day, product: Aligned order lines (positive quantities only).
    """
    if len(customer) == 0:
        return sp.csr_matrix((n_customers, n_products))
    idx = np.lexsort((order, day, customer))
    c, o = customer[idx], order[idx]
    is_last = np.r_[c[1:] != c[:-1], True]
    last = np.full(n_customers, -1, dtype=np.int64)
    last[c[is_last]] = o[is_last]
    keep = order == last[customer]
    return indicator(customer[keep], product[keep], (n_customers, n_products))


def _upsell_pairs(
    family: np.ndarray, price: np.ndarray, popularity: np.ndarray, max_uplift: float
) -> sp.csr_matrix:
    """Anchor x candidate matrix of same-family, pricier, within-cap versions.

    The stored value is ``1 + popularity`` share rank-preserving (so never-sold versions are
    kept, after the sold ones); each anchor keeps its ``UPSELL_PAIRS_PER_ANCHOR`` most popular.
    """
    n = len(price)
    order = np.lexsort((price, family))
    fam_sorted = family[order].astype(np.float64)
    price_sorted = price[order]
    scale = float(price.max()) * (1 + max_uplift) * 2 + 1
    key = fam_sorted * scale + price_sorted
    rows_all, cols_all, vals_all = [], [], []
    for lo_a in range(0, n, UPSELL_ANCHOR_CHUNK):
        anchors = np.arange(lo_a, min(lo_a + UPSELL_ANCHOR_CHUNK, n))
        lo = np.searchsorted(key, key[anchors], side="right")
        hi = np.searchsorted(
            key,
            fam_sorted[anchors] * scale + price_sorted[anchors] * (1 + max_uplift),
            side="right",
        )
        counts = np.maximum(hi - lo, 0)
        if counts.sum() == 0:
            continue
        rows = np.repeat(anchors, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = np.repeat(lo, counts) + offsets
        a_idx, b_idx = order[rows], order[cols]
        vals = 1.0 + popularity[b_idx]
        keep = (
            rank_within(a_idx, vals + 1e-12 * (1.0 / (1.0 + price[b_idx])))
            <= UPSELL_PAIRS_PER_ANCHOR
        )
        rows_all.append(a_idx[keep])
        cols_all.append(b_idx[keep])
        vals_all.append(vals[keep])
    if not rows_all:
        return sp.csr_matrix((n, n))
    return sp.csr_matrix(
        (np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))),
        shape=(n, n),
    )


@dataclass(frozen=True)
class EventLines:
    """Browsing events strictly before the cut-off, as positions (None when there are none).

    Attributes:
        frame: The event rows (for the purchase matching of viewed-then-bought).
        day, product, customer: Per event.
        is_view, is_cart: Event type masks.
        session: Session number per event (``session_id``, else time gaps).
        history: Events inside ``history_days``.
    """

    frame: pd.DataFrame
    day: np.ndarray
    product: np.ndarray
    customer: np.ndarray
    is_view: np.ndarray
    is_cart: np.ndarray
    session: np.ndarray
    history: np.ndarray


def event_lines(
    shop: Shop, catalog: Catalog, *, as_of: pd.Timestamp, config: FeatureConfig
) -> EventLines | None:
    """The shop's events with ``ts < as_of`` as positions, or None without events."""
    ev = shop.events
    if ev is None or len(ev) == 0:
        return None
    before = (ev[s.TS] < as_of).to_numpy()
    ev = ev.loc[before]
    if len(ev) == 0:
        return None
    codes = shop.event_codes
    assert codes is not None
    now = to_days(as_of)
    day = np.asarray(to_days(ev[s.TS]), dtype=np.float64)
    etype = ev[s.EVENT_TYPE].to_numpy()
    history = np.ones(len(ev), dtype=bool)
    if config.history_days is not None:
        history = day >= now - config.history_days
    return EventLines(
        frame=ev,
        day=day,
        product=codes.product[before],
        customer=codes.customer[before],
        is_view=etype == s.VIEW,
        is_cart=etype == s.ADD_TO_CART,
        session=sessions(ev, config.session_gap_minutes),
        history=history,
    )


def browsing_tables(catalog: Catalog, events: EventLines | None, now: float) -> BrowsingTables:
    """Customer browsing counts (see :class:`BrowsingTables`); empty tables without events."""
    n_c, n_p, n_fam = catalog.n_customers, catalog.n_products, len(catalog.family_levels)
    if events is None:
        empty = PairLookup(sp.csr_matrix((n_c, n_p)))
        return BrowsingTables(
            empty, empty, empty, empty, PairLookup(sp.csr_matrix((n_c, n_fam))), empty
        )
    ev = events

    def counts(mask: np.ndarray, cols: np.ndarray, n_cols: int) -> PairLookup:
        return _sparse(np.ones(int(mask.sum())), ev.customer[mask], cols[mask], (n_c, n_cols))

    recent = {w: ev.day >= now - w for w in BROWSING_WINDOWS}
    last_sess = pd.Series(ev.session).groupby(ev.customer).max()
    is_last = ev.session == last_sess.reindex(ev.customer).to_numpy()
    return BrowsingTables(
        views_7=counts(ev.is_view & recent[7], ev.product, n_p),
        views_30=counts(ev.is_view & recent[30], ev.product, n_p),
        carts_7=counts(ev.is_cart & recent[7], ev.product, n_p),
        carts_30=counts(ev.is_cart & recent[30], ev.product, n_p),
        family_views_30=counts(ev.is_view & recent[30], catalog.family[ev.product], n_fam),
        last_session=counts(is_last & (ev.is_view | ev.is_cart), ev.product, n_p),
    )


def _event_pair_tables(
    shop: Shop,
    catalog: Catalog,
    events: EventLines | None,
    config: FeatureConfig,
    as_of: pd.Timestamp,
) -> dict[str, sp.csr_matrix]:
    """Co-view / co-cart lift and raw viewed-then-bought counts (empty without events)."""
    n_p = catalog.n_products
    empty = sp.csr_matrix((n_p, n_p))
    if events is None:
        return {"coview": empty, "cocart": empty, "viewed_bought_raw": empty}
    ev, cfg = events, config
    view, cart = ev.history & ev.is_view, ev.history & ev.is_cart
    coview, _ = cooccurrence(
        ev.session[view], ev.product[view], n_p, cfg.cooc_prior, cfg.cooc_neighbours
    )
    cocart, _ = cooccurrence(
        ev.session[cart], ev.product[cart], n_p, cfg.cooc_prior, cfg.cooc_neighbours
    )
    raw = viewed_then_bought(
        shop,
        ev.frame.loc[ev.history],
        ev.session[ev.history],
        ev.product[ev.history],
        as_of=as_of,
        window_days=cfg.upsell_window_days,
        n_products=len(catalog.products),
    )
    return {"coview": coview, "cocart": cocart, "viewed_bought_raw": raw}
