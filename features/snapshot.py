"""The feature snapshot: every statistic a query needs, from data strictly before a cut-off.

Training builds one snapshot per rolling cut-off ``T`` (from rows with ``ts < T``) and scores the
queries whose ``as_of`` falls in ``[T, next cut-off)`` against it; serving loads the snapshot that
training saved at ``--train-until``. Queries never see a row at or after their own ``as_of``
because ``T <= as_of``.

The snapshot is arrays and sparse matrices indexed by product and customer position, so the
single-query path is array indexing and ``searchsorted`` look-ups, not pandas group-bys.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.arrays import PairLookup, indicator, prune_rows, rank_within
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import Shop

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
DAY = np.timedelta64(1, "D")
EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")
LIFECYCLE_LEVELS = ("none", "new", "active", "lapsing")

CATEGORY_NEIGHBOURS = 20
UPSELL_PAIRS_PER_ANCHOR = 200
TRENDING_MIN_COUNT = 5
UPSELL_ANCHOR_CHUNK = 20_000


def to_days(ts: pd.Series | np.ndarray | pd.Timestamp) -> np.ndarray | float:
    """Timestamps as float days since 1970-01-01 (the time unit of every snapshot array)."""
    if isinstance(ts, pd.Timestamp):
        return float((ts.to_datetime64() - EPOCH) / DAY)
    values = np.asarray(ts, dtype="datetime64[ns]")
    return (values - EPOCH) / DAY


def _lift(counts: sp.csr_matrix, n_a: np.ndarray, n_b: np.ndarray, n: float, prior: float):
    """Shrunk lift ``(C + prior) / (E + prior)`` on the stored entries, E = n_a n_b / n."""
    c = counts.tocoo()
    expected = n_a[c.row] * n_b[c.col] / max(n, 1.0)
    lift = (c.data + prior) / (expected + prior)
    return sp.csr_matrix((lift, (c.row, c.col)), shape=counts.shape)


def _cooccurrence(
    group: np.ndarray,
    item: np.ndarray,
    n_items: int,
    prior: float,
    neighbours: int,
    min_count: int = 1,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Item x item shrunk lift and confidence from (group, item) incidences.

    Returns:
        ``(lift, confidence)``, both pruned to the top ``neighbours`` by lift per row, diagonal
        removed, only pairs with lift > 1.
    """
    if len(group) == 0:
        empty = sp.csr_matrix((n_items, n_items))
        return empty, empty
    _, g = np.unique(group, return_inverse=True)
    b = indicator(g, item, (int(g.max()) + 1, n_items))
    counts = (b.T @ b).tocsr()
    counts.setdiag(0)
    counts.data[counts.data < min_count] = 0
    counts.eliminate_zeros()
    n_i = np.asarray(b.sum(axis=0)).ravel()
    lift = _lift(counts, n_i, n_i, b.shape[0], prior)
    lift.data[lift.data <= 1.0] = 0
    lift.eliminate_zeros()
    lift = prune_rows(lift, neighbours)
    lc = lift.tocoo()
    conf = sp.csr_matrix(
        (PairLookup(counts).get(lc.row, lc.col) / np.maximum(n_i[lc.row], 1), (lc.row, lc.col)),
        shape=lift.shape,
    )
    return lift, conf


def _sequential(
    orders: pd.DataFrame,
    n_items: int,
    window_days: float,
    prior: float,
    neighbours: int,
    min_count: int = 1,
) -> sp.csr_matrix:
    """Shrunk lift of "bought A in one order, then B in the customer's next order within N days".

    Args:
        orders: Distinct ``(order, customer, day, item)`` rows.
    """
    heads = orders.drop_duplicates("order").sort_values(["customer", "day", "order"])
    same = heads["customer"].to_numpy()[1:] == heads["customer"].to_numpy()[:-1]
    gap = np.diff(heads["day"].to_numpy())
    ok = same & (gap > 0) & (gap <= window_days)
    prev_o = heads["order"].to_numpy()[:-1][ok]
    next_o = heads["order"].to_numpy()[1:][ok]
    if len(prev_o) == 0:
        return sp.csr_matrix((n_items, n_items))
    codes, o = np.unique(orders["order"].to_numpy(), return_inverse=True)
    b = indicator(o, orders["item"].to_numpy(), (len(codes), n_items))
    pos_prev = np.searchsorted(codes, prev_o)
    pos_next = np.searchsorted(codes, next_o)
    bp, bn = b[pos_prev], b[pos_next]
    counts = (bp.T @ bn).tocsr()
    counts.setdiag(0)
    counts.data[counts.data < min_count] = 0
    counts.eliminate_zeros()
    n_a = np.asarray(bp.sum(axis=0)).ravel()
    n_b = np.asarray(bn.sum(axis=0)).ravel()
    lift = _lift(counts, n_a, n_b, len(prev_o), prior)
    lift.data[lift.data <= 1.0] = 0
    lift.eliminate_zeros()
    return prune_rows(lift, neighbours)


def _sessions(events: pd.DataFrame, gap_minutes: int) -> np.ndarray:
    """A session number per event row: ``session_id`` when present, else gaps per customer."""
    if s.SESSION_ID in events.columns and events[s.SESSION_ID].notna().all():
        key = events[s.CUSTOMER_ID] + "\x1f" + events[s.SESSION_ID]
        return pd.factorize(key)[0]
    order = np.lexsort((events[s.TS].to_numpy(), events[s.CUSTOMER_ID].to_numpy()))
    cust = events[s.CUSTOMER_ID].to_numpy()[order]
    ts = events[s.TS].to_numpy()[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (cust[1:] != cust[:-1]) | ((ts[1:] - ts[:-1]) > np.timedelta64(gap_minutes, "m"))
    sess = np.empty(len(order), dtype=np.int64)
    sess[order] = np.cumsum(new) - 1
    return sess


@dataclass
class FeatureSnapshot:
    """Everything the candidate sources and features read, as of ``as_of``.

    Product arrays are indexed by product position (``product_index``), customer arrays by
    customer position (``customer_index``). Days are float days since 1970-01-01.
    """

    as_of: float
    config: FeatureConfig
    product_ids: np.ndarray
    customer_ids: np.ndarray
    category_levels: list[str]
    family_levels: list[str]
    segment_levels: list[str]
    segment_column: str | None
    persona_levels: dict[str, list[str] | None]
    arrays: dict[str, np.ndarray]
    matrices: dict[str, sp.csr_matrix]
    product_index: dict[str, int] = field(default_factory=dict)
    customer_index: dict[str, int] = field(default_factory=dict)
    lookups: dict[str, PairLookup] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.product_index = {p: i for i, p in enumerate(self.product_ids.tolist())}
        self.customer_index = {c: i for i, c in enumerate(self.customer_ids.tolist())}
        self.lookups = {name: PairLookup(m) for name, m in self.matrices.items()}

    @property
    def n_products(self) -> int:
        """Number of products in the catalog."""
        return len(self.product_ids)

    @property
    def n_customers(self) -> int:
        """Number of known customers."""
        return len(self.customer_ids)

    def last_order(self, customer: int) -> np.ndarray:
        """Product positions of the customer's most recent order before the cut-off.

        Empty for an unknown customer (``customer < 0``), a customer without orders, or a snapshot
        saved before the ``last_order`` table existed.
        """
        table = self.lookups.get("last_order")
        if table is None or customer < 0:
            return np.zeros(0, dtype=np.int64)
        return table.row(customer)[0].astype(np.int64)

    @property
    def as_of_timestamp(self) -> pd.Timestamp:
        """The cut-off as a timestamp."""
        return pd.Timestamp(EPOCH + np.timedelta64(round(self.as_of * 86400e9), "ns"))

    @property
    def persona_columns(self) -> list[str]:
        """Persona attribute columns carried as features."""
        return list(self.persona_levels)

    def save(self, folder: str | Path) -> Path:
        """Write the snapshot to ``folder`` (``arrays.npz``, ``matrices.npz``, ``meta.json``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "product_ids": self.product_ids.astype(str),
            "customer_ids": self.customer_ids.astype(str),
            **{f"a_{k}": v for k, v in self.arrays.items()},
        }
        np.savez(folder / "arrays.npz", **arrays)
        mats = {}
        for name, m in self.matrices.items():
            coo = m.tocoo()
            mats[f"{name}__row"] = coo.row.astype(np.int32)
            mats[f"{name}__col"] = coo.col.astype(np.int32)
            mats[f"{name}__data"] = coo.data
            mats[f"{name}__shape"] = np.asarray(m.shape, dtype=np.int64)
        np.savez(folder / "matrices.npz", **mats)
        meta = {
            "version": SNAPSHOT_VERSION,
            "as_of": self.as_of,
            "config": self.config.model_dump(mode="json"),
            "category_levels": self.category_levels,
            "family_levels": self.family_levels,
            "segment_levels": self.segment_levels,
            "segment_column": self.segment_column,
            "persona_levels": self.persona_levels,
            "matrices": sorted(self.matrices),
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
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
            with np.load(folder / "matrices.npz", allow_pickle=False) as npz:
                mraw = {k: npz[k] for k in npz.files}
        except (OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"cannot load feature snapshot from {folder}: {exc}") from exc
        matrices = {}
        for name in meta["matrices"]:
            shape = tuple(int(x) for x in mraw[f"{name}__shape"])
            matrices[name] = sp.csr_matrix(
                (mraw[f"{name}__data"], (mraw[f"{name}__row"], mraw[f"{name}__col"])), shape=shape
            )
        return cls(
            as_of=float(meta["as_of"]),
            config=FeatureConfig.model_validate(meta["config"]),
            product_ids=raw.pop("product_ids").astype(object),
            customer_ids=raw.pop("customer_ids").astype(object),
            category_levels=meta["category_levels"],
            family_levels=meta["family_levels"],
            segment_levels=meta["segment_levels"],
            segment_column=meta["segment_column"],
            persona_levels=meta["persona_levels"],
            arrays={k[2:]: v for k, v in raw.items()},
            matrices=matrices,
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


def build_snapshot(
    shop: Shop, *, as_of: pd.Timestamp, config: FeatureConfig | None = None
) -> FeatureSnapshot:
    """Compute every statistic from rows of ``shop`` strictly before ``as_of``.

    Args:
        shop: The validated shop.
        as_of: The cut-off; rows with ``ts >= as_of`` are never read.
        config: Windows and sizes (defaults when None).

    Returns:
        The snapshot. Arrays (per product): ``price``, ``log_price``, ``category``,
        ``family``, ``is_consumable``, ``in_stock``, ``tier_rank``, ``family_size``,
        ``pop_<w>`` (share of order lines in the last w days), ``pop_pct_in_category``,
        ``trend``, ``repurchase_rate``, ``price_pct_in_category``. Per customer: ``first_day``,
        ``last_day``, ``signup_day``, ``n_orders``, ``monetary``, ``price_level``,
        ``segment``, ``persona_<col>``. Lists: ``global_top``, ``trending_top``,
        ``trending_score``. Matrices: ``owned``, ``owned_consumable``, ``cat_spend``, ``cat_last_day``,
        ``owns_family``, ``last_order``, ``views_7``, ``views_30``, ``carts_7``, ``carts_30``,
        ``family_views_30``, ``last_session``, ``cooc``, ``cooc_conf``, ``sequential``,
        ``coview``, ``cocart``, ``category_assoc``, ``category_top``, ``segment_top``,
        ``upsell_pairs``, ``viewed_bought``.
    """
    cfg = config or FeatureConfig()
    as_of = pd.Timestamp(as_of)
    now = to_days(as_of)
    products = shop.products.sort_values(s.PRODUCT_ID).reset_index(drop=True)
    customers = shop.customers.sort_values(s.CUSTOMER_ID).reset_index(drop=True)
    n_p, n_c = len(products), len(customers)
    pidx = pd.Index(products[s.PRODUCT_ID])
    cidx = pd.Index(customers[s.CUSTOMER_ID])

    # ---- products (static attributes) -------------------------------------------------
    category, category_levels = pd.factorize(products[s.CATEGORY], sort=True)
    family, family_levels = pd.factorize(products[s.FAMILY], sort=True)
    price = products[s.PRICE].to_numpy(dtype=np.float64)
    a: dict[str, np.ndarray] = {
        "price": price,
        "log_price": np.log(price),
        "category": category.astype(np.int32),
        "family": family.astype(np.int32),
        "is_consumable": products[s.IS_CONSUMABLE].to_numpy(dtype=bool),
        "in_stock": products[s.IN_STOCK].to_numpy(dtype=bool),
    }
    fam_size = np.bincount(family, minlength=len(family_levels))[family]
    tier_pos = rank_within(family, price, descending=False) - 1
    a["family_size"] = fam_size.astype(np.float64)
    a["tier_rank"] = np.where(fam_size > 1, tier_pos / np.maximum(fam_size - 1, 1), 0.5)

    # ---- purchases before the cut-off ---------------------------------------------------
    pur = shop.purchases
    pur = pur.loc[pur[s.TS] < as_of]
    days = to_days(pur[s.TS])
    p_of = pidx.get_indexer(pur[s.PRODUCT_ID])
    c_of = cidx.get_indexer(pur[s.CUSTOMER_ID])
    qty = pur[s.QUANTITY].to_numpy(dtype=np.float64)
    unit = pur[s.UNIT_PRICE].to_numpy(dtype=np.float64)
    pos = qty > 0
    hist = pos if cfg.history_days is None else pos & (days >= now - cfg.history_days)
    order_codes = pd.factorize(pur[s.ORDER_ID])[0]

    for w in cfg.popularity_windows_days:
        m = pos & (days >= now - w)
        counts = np.bincount(p_of[m], minlength=n_p).astype(np.float64)
        a[f"pop_{w}"] = counts / max(counts.sum(), 1.0)
    w_long = max(cfg.popularity_windows_days)
    w_short = min(cfg.popularity_windows_days)
    long_counts = a[f"pop_{w_long}"]
    a["pop_pct_in_category"] = 1.0 - (rank_within(category, long_counts) - 1) / np.maximum(
        np.bincount(category, minlength=len(category_levels))[category], 1
    )
    eps = 1.0 / max(int(pos.sum()), 1)
    a["trend"] = np.log((a[f"pop_{w_short}"] + eps) / (long_counts + eps))
    # repurchase rate: share of the product's buyers who bought it in 2+ orders
    pairs = pd.DataFrame({"c": c_of[pos], "p": p_of[pos], "o": order_codes[pos]})
    per_cp = pairs.drop_duplicates().groupby(["c", "p"], sort=False).size()
    buyers = np.bincount(per_cp.index.get_level_values("p"), minlength=n_p)
    repeaters = np.bincount(
        per_cp.index.get_level_values("p")[per_cp.to_numpy() > 1], minlength=n_p
    )
    a["repurchase_rate"] = np.where(buyers > 0, repeaters / np.maximum(buyers, 1), np.nan)
    a["buyers"] = buyers.astype(np.float64)
    # paid-price percentile of each line within its category -> product and customer level
    line_cat = category[p_of]
    line_pct = np.full(len(pur), np.nan)
    if pos.any():
        idx = np.flatnonzero(pos)
        r = rank_within(line_cat[idx], unit[idx], descending=False)
        n_in = np.bincount(line_cat[idx], minlength=len(category_levels))[line_cat[idx]]
        line_pct[idx] = np.where(n_in > 1, (r - 1) / np.maximum(n_in - 1, 1), 0.5)
    price_pct = np.full(n_p, np.nan)
    if pos.any():
        sums = np.bincount(p_of[pos], weights=line_pct[pos], minlength=n_p)
        cnt = np.bincount(p_of[pos], minlength=n_p)
        price_pct = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    # products never sold: list-price percentile within category
    list_r = rank_within(category, price, descending=False)
    cat_n = np.bincount(category, minlength=len(category_levels))[category]
    list_pct = np.where(cat_n > 1, (list_r - 1) / np.maximum(cat_n - 1, 1), 0.5)
    a["price_pct_in_category"] = np.where(np.isnan(price_pct), list_pct, price_pct)

    # ---- customers -----------------------------------------------------------------------
    first = np.full(n_c, np.nan)
    last = np.full(n_c, np.nan)
    if pos.any():
        cc, dd = c_of[pos], days[pos]
        order = np.lexsort((dd, cc))
        cs, ds = cc[order], dd[order]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        ends = np.r_[starts[1:], len(cs)] - 1
        first[cs[starts]] = ds[starts]
        last[cs[ends]] = ds[ends]
    a["first_day"], a["last_day"] = first, last
    if s.SIGNUP_DATE in customers.columns:
        signup = to_days(customers[s.SIGNUP_DATE])
        a["signup_day"] = np.where(signup < now, signup, np.nan)
    else:
        a["signup_day"] = np.full(n_c, np.nan)
    orders_c = pd.DataFrame({"c": c_of[pos], "o": order_codes[pos]}).drop_duplicates()
    a["n_orders"] = np.bincount(orders_c["c"], minlength=n_c).astype(np.float64)
    a["monetary"] = np.bincount(c_of[pos], weights=(unit * qty)[pos], minlength=n_c)
    lvl_sum = np.bincount(c_of[pos], weights=np.nan_to_num(line_pct[pos]), minlength=n_c)
    lvl_n = np.bincount(c_of[pos], minlength=n_c)
    a["price_level"] = np.where(lvl_n > 0, lvl_sum / np.maximum(lvl_n, 1), np.nan)

    seg_col = _segment_column(shop, cfg)
    if seg_col is not None:
        seg_values = customers[seg_col].astype("str").fillna("unknown")
        seg_codes, seg_levels = pd.factorize(seg_values, sort=True)
        segment_levels = [str(x) for x in seg_levels]
    else:
        seg_codes, segment_levels = np.zeros(n_c, dtype=np.int64), ["all"]
    a["segment"] = seg_codes.astype(np.int32)
    persona_levels: dict[str, list[str] | None] = {}
    for col in shop.persona_columns:
        values = customers[col]
        if pd.api.types.is_numeric_dtype(values):
            persona_levels[col] = None
            a[f"persona_{col}"] = values.to_numpy(dtype=np.float64)
        else:
            codes, levels = pd.factorize(values, sort=True)
            persona_levels[col] = [str(x) for x in levels]
            a[f"persona_{col}"] = np.where(codes < 0, np.nan, codes).astype(np.float64)

    mats: dict[str, sp.csr_matrix] = {}
    # ownership: net quantity per customer x product (returns subtract)
    owned = sp.csr_matrix((qty, (c_of, p_of)), shape=(n_c, n_p))
    owned.sum_duplicates()
    owned.data = np.where(owned.data > 0, owned.data, 0.0)
    owned.eliminate_zeros()
    mats["owned"] = owned
    consumable_cols = sp.diags(a["is_consumable"].astype(np.float64))
    mats["owned_consumable"] = sp.csr_matrix(owned @ consumable_cols)
    mats["owns_family"] = indicator(
        owned.tocoo().row, family[owned.tocoo().col], (n_c, len(family_levels))
    )
    spend = sp.csr_matrix(
        ((unit * qty)[pos], (c_of[pos], line_cat[pos])), shape=(n_c, len(category_levels))
    )
    spend.sum_duplicates()
    totals = np.asarray(spend.sum(axis=1)).ravel()
    spend = sp.diags(1.0 / np.maximum(totals, 1e-9)) @ spend
    mats["cat_spend"] = sp.csr_matrix(spend)
    last_cat = pd.DataFrame({"c": c_of[pos], "k": line_cat[pos], "d": days[pos]})
    last_cat = last_cat.groupby(["c", "k"], sort=False)["d"].max()
    mats["cat_last_day"] = sp.csr_matrix(
        (
            last_cat.to_numpy(),
            (last_cat.index.get_level_values("c"), last_cat.index.get_level_values("k")),
        ),
        shape=(n_c, len(category_levels)),
    )
    mats["last_order"] = _last_orders(c_of[pos], order_codes[pos], days[pos], p_of[pos], n_c, n_p)

    # ---- co-occurrence tables ------------------------------------------------------------
    mats["cooc"], mats["cooc_conf"] = _cooccurrence(
        order_codes[hist], p_of[hist], n_p, cfg.cooc_prior, cfg.cooc_neighbours, cfg.min_pair_count
    )
    orders_df = pd.DataFrame(
        {"order": order_codes[hist], "customer": c_of[hist], "day": days[hist], "item": p_of[hist]}
    ).drop_duplicates(["order", "item"])
    mats["sequential"] = _sequential(
        orders_df,
        n_p,
        cfg.sequential_window_days,
        cfg.cooc_prior,
        cfg.cooc_neighbours,
        cfg.min_pair_count,
    )
    cat_lift, _ = _cooccurrence(
        order_codes[hist], line_cat[hist], len(category_levels), cfg.cooc_prior, CATEGORY_NEIGHBOURS
    )
    mats["category_assoc"] = cat_lift
    # top products per category (share of the category's recent lines)
    cat_share = long_counts / np.maximum(
        np.bincount(category, weights=long_counts, minlength=len(category_levels))[category], 1e-12
    )
    top_in_cat = rank_within(category, long_counts) <= cfg.per_source
    sold = long_counts > 0
    keep = top_in_cat & sold
    mats["category_top"] = sp.csr_matrix(
        (cat_share[keep], (category[keep], np.flatnonzero(keep))), shape=(len(category_levels), n_p)
    )
    # segment popularity over the longest window
    recent = pos & (days >= now - w_long)
    seg_line = a["segment"][c_of[recent]]
    seg_counts = sp.csr_matrix(
        (np.ones(int(recent.sum())), (seg_line, p_of[recent])), shape=(len(segment_levels), n_p)
    )
    seg_counts.sum_duplicates()
    seg_tot = np.asarray(seg_counts.sum(axis=1)).ravel()
    seg_share = sp.csr_matrix(sp.diags(1.0 / np.maximum(seg_tot, 1)) @ seg_counts)
    mats["segment_top"] = prune_rows(seg_share, cfg.per_source)
    order_pop = np.lexsort((np.arange(n_p), -long_counts))
    a["global_top"] = order_pop[: cfg.per_source][long_counts[order_pop[: cfg.per_source]] > 0]
    recent_count = long_counts * max(int(recent.sum()), 1)
    trend_ok = recent_count >= TRENDING_MIN_COUNT
    trend_key = np.where(trend_ok, a["trend"], -np.inf)
    order_tr = np.lexsort((np.arange(n_p), -trend_key))[: cfg.per_source]
    order_tr = order_tr[np.isfinite(trend_key[order_tr]) & (trend_key[order_tr] > 0)]
    a["trending_top"] = order_tr.astype(np.int64)
    a["trending_score"] = trend_key[order_tr]

    # ---- browsing events -----------------------------------------------------------------
    event_mats = _event_tables(
        shop, cfg, as_of=as_of, pidx=pidx, cidx=cidx, family=family, n_fam=len(family_levels)
    )
    mats.update(event_mats)

    # ---- upsell pairs: same family, pricier, within the uplift cap ------------------------
    mats["upsell_pairs"] = _upsell_pairs(family, price, long_counts, cfg.upsell_max_uplift)
    vb = mats.pop("viewed_bought_raw")
    if vb.nnz:
        allowed = PairLookup(mats["upsell_pairs"])
        c = vb.tocoo()
        ok = allowed.get(c.row, c.col) > 0
        mats["viewed_bought"] = sp.csr_matrix((c.data[ok], (c.row[ok], c.col[ok])), shape=vb.shape)
    else:
        mats["viewed_bought"] = vb

    return FeatureSnapshot(
        as_of=float(now),
        config=cfg,
        product_ids=products[s.PRODUCT_ID].to_numpy(dtype=object),
        customer_ids=customers[s.CUSTOMER_ID].to_numpy(dtype=object),
        category_levels=[str(x) for x in category_levels],
        family_levels=[str(x) for x in family_levels],
        segment_levels=segment_levels,
        segment_column=seg_col,
        persona_levels=persona_levels,
        arrays=a,
        matrices={k: sp.csr_matrix(v) for k, v in mats.items()},
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


def _event_tables(
    shop: Shop,
    cfg: FeatureConfig,
    *,
    as_of: pd.Timestamp,
    pidx: pd.Index,
    cidx: pd.Index,
    family: np.ndarray,
    n_fam: int,
) -> dict[str, sp.csr_matrix]:
    """Customer browsing counts, co-view/co-cart lift and viewed-then-bought counts."""
    n_c, n_p = len(cidx), len(pidx)
    empty_cp = sp.csr_matrix((n_c, n_p))
    names = ("views_7", "views_30", "carts_7", "carts_30", "last_session")
    out = {name: empty_cp for name in names}
    out["family_views_30"] = sp.csr_matrix((n_c, n_fam))
    out["coview"] = out["cocart"] = out["viewed_bought_raw"] = sp.csr_matrix((n_p, n_p))
    ev = shop.events
    if ev is None or len(ev) == 0:
        return out
    ev = ev.loc[ev[s.TS] < as_of]
    if len(ev) == 0:
        return out
    now = to_days(as_of)
    days = to_days(ev[s.TS])
    p_of = pidx.get_indexer(ev[s.PRODUCT_ID])
    c_of = cidx.get_indexer(ev[s.CUSTOMER_ID])
    etype = ev[s.EVENT_TYPE].to_numpy()
    is_view = etype == s.VIEW
    is_cart = etype == s.ADD_TO_CART

    def counts(mask: np.ndarray, cols: np.ndarray, n_cols: int) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum())), (c_of[mask], cols[mask])), shape=(n_c, n_cols))
        m.sum_duplicates()
        return m

    for w in (7, 30):
        recent = days >= now - w
        out[f"views_{w}"] = counts(is_view & recent, p_of, n_p)
        out[f"carts_{w}"] = counts(is_cart & recent, p_of, n_p)
    out["family_views_30"] = counts(is_view & (days >= now - 30), family[p_of], n_fam)
    sess = _sessions(ev, cfg.session_gap_minutes)
    # the customer's last session before the cut-off
    last_sess = pd.Series(sess).groupby(c_of).max()
    is_last = sess == last_sess.reindex(c_of).to_numpy()
    out["last_session"] = counts(is_last & (is_view | is_cart), p_of, n_p)
    hist = np.ones(len(ev), dtype=bool)
    if cfg.history_days is not None:
        hist = days >= now - cfg.history_days
    out["coview"], _ = _cooccurrence(
        sess[hist & is_view], p_of[hist & is_view], n_p, cfg.cooc_prior, cfg.cooc_neighbours
    )
    out["cocart"], _ = _cooccurrence(
        sess[hist & is_cart], p_of[hist & is_cart], n_p, cfg.cooc_prior, cfg.cooc_neighbours
    )
    out["viewed_bought_raw"] = _viewed_then_bought(
        shop,
        ev.loc[hist],
        sess[hist],
        p_of[hist],
        as_of=as_of,
        window_days=cfg.upsell_window_days,
        pidx=pidx,
    )
    return out


def _viewed_then_bought(
    shop: Shop,
    ev: pd.DataFrame,
    sess: np.ndarray,
    p_of: np.ndarray,
    *,
    as_of: pd.Timestamp,
    window_days: int,
    pidx: pd.Index,
) -> sp.csr_matrix:
    """Counts of "viewed A in a session, bought B in the customer's next order within N days"."""
    n_p = len(pidx)
    pur = shop.purchases
    pur = pur.loc[(pur[s.TS] < as_of) & (pur[s.QUANTITY] > 0)]
    views = ev[s.EVENT_TYPE].to_numpy() != s.REMOVE_FROM_CART
    if not views.any() or len(pur) == 0:
        return sp.csr_matrix((n_p, n_p))
    starts = (
        pd.DataFrame(
            {"sess": sess, s.CUSTOMER_ID: ev[s.CUSTOMER_ID].to_numpy(), s.TS: ev[s.TS].to_numpy()}
        )
        .groupby("sess", sort=True)
        .agg(**{s.CUSTOMER_ID: (s.CUSTOMER_ID, "first"), s.TS: (s.TS, "min")})
        .reset_index()
        .sort_values(s.TS)
    )
    heads = pur.drop_duplicates(s.ORDER_ID)[[s.ORDER_ID, s.CUSTOMER_ID, s.TS]].sort_values(s.TS)
    matched = pd.merge_asof(
        starts,
        heads.rename(columns={s.TS: "order_ts"}),
        left_on=s.TS,
        right_on="order_ts",
        by=s.CUSTOMER_ID,
        direction="forward",
        allow_exact_matches=False,
        tolerance=pd.Timedelta(days=window_days),
    ).dropna(subset=[s.ORDER_ID])
    if len(matched) == 0:
        return sp.csr_matrix((n_p, n_p))
    order_codes, order_of_line = np.unique(pur[s.ORDER_ID].to_numpy(), return_inverse=True)
    b = indicator(order_of_line, pidx.get_indexer(pur[s.PRODUCT_ID]), (len(order_codes), n_p))
    n_sess = int(sess.max()) + 1
    v = indicator(sess[views], p_of[views], (n_sess, n_p))
    sess_rows = matched["sess"].to_numpy()
    order_rows = np.searchsorted(order_codes, matched[s.ORDER_ID].to_numpy())
    vb = (v[sess_rows].T @ b[order_rows]).tocsr()
    vb.setdiag(0)
    vb.eliminate_zeros()
    return vb
