"""Point-in-time features per (query, candidate): the model's input matrix.

``build_features(batch, snapshot)`` runs the candidate collector and returns a
:class:`FeatureMatrix` whose columns are :func:`feature_columns` in that order. Training calls it
on thousands of queries per snapshot; serving calls it on a one-query batch. Every value comes
from the snapshot (data before its cut-off, which is at or before every query's ``as_of``) and
from the query's own context.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.arrays import lookup_many, rank_within_many
from features.batch import QueryBatch
from features.candidates import Candidates, collect_candidates
from features.columns import popularity_column, source_columns
from features.data import schema as s
from features.snapshot import LIFECYCLE_LEVELS, FeatureSnapshot
from features.sources import source_names

CUSTOMER_FEATURES = (
    "cust_known",
    "cust_recency_days",
    "cust_frequency",
    "cust_monetary_log",
    "cust_aov_log",
    "cust_tenure_days",
    "cust_lifecycle",
    "cust_price_level",
)
PRODUCT_FEATURES = (
    "prod_tier_rank",
    "prod_family_size",
    "prod_pop_pct_in_category",
    "prod_trend",
    "prod_repurchase_rate",
    "prod_is_consumable",
    "prod_price_pct_in_category",
    "prod_consumable_rate",
    "prod_cycle_days",
    "seg_pop_share",
)
CONTEXT_FEATURES = (
    "n_sources",
    "best_source_rank",
    "merge_priority",
    "ctx_size",
    "ctx_lift_max",
    "ctx_lift_mean",
    "ctx_conf_max",
    "ctx_conf_sum",
    "ctx_cat_assoc",
    "ctx_same_category",
    "price_ratio_anchor",
    "price_ratio_cart",
    "price_pct_vs_level",
    "tier_step",
    "cust_views_7",
    "cust_views_30",
    "cust_carts_7",
    "cust_carts_30",
    "cust_family_views_30",
    "cust_last_session",
    "cust_owns_family",
    "cust_product_quantity",
    "cust_product_orders",
    "cust_product_frequency",
    "cust_product_last_day",
    "days_since_product_purchase",
    "cust_product_interval",
    "due_ratio",
    "days_since_category_purchase",
    "cust_category_affinity",
    "placement",
    "pop_rank_in_query",
    "price_rank_in_query",
    "lift_rank_in_query",
    "trend_rank_in_query",
    "conf_rank_in_query",
    "seg_pop_rank_in_query",
    "affinity_rank_in_query",
    "n_sources_rank_in_query",
    "frequency_rank_in_query",
)
FIXED_CATEGORICAL = ("cust_lifecycle", "placement")
# Up to this many rows (serving, small batches) X is filled by one conversion of all columns;
# larger matrices column by column, without a transient copy.
ONE_COPY_ROWS = 4096


def feature_columns(snapshot: FeatureSnapshot, task: str) -> list[str]:
    """The ordered feature columns of ``task`` for this shop (persona columns vary by shop)."""
    return list(
        _feature_columns(
            tuple(snapshot.persona_columns),
            tuple(snapshot.config.popularity_windows_days),
            source_names(task),
        )
    )


@functools.lru_cache(maxsize=64)
def _feature_columns(
    persona_columns: tuple[str, ...], windows: tuple[int, ...], sources: tuple[str, ...]
) -> tuple[str, ...]:
    """:func:`feature_columns` from what it depends on (built once per shop and task, not per
    request)."""
    persona = [f"persona_{c}" for c in persona_columns]
    pops = [popularity_column(w) for w in windows]
    src = [col for name in sources for col in source_columns(name)]
    return (*CUSTOMER_FEATURES, *persona, *PRODUCT_FEATURES, *pops, *src, *CONTEXT_FEATURES)


def categorical_features(snapshot: FeatureSnapshot) -> dict[str, list[str]]:
    """Categorical feature -> its levels (the integer code is the position in the list)."""
    out: dict[str, list[str]] = {
        "cust_lifecycle": list(LIFECYCLE_LEVELS),
        "placement": list(s.PLACEMENTS),
    }
    for col, levels in snapshot.persona_levels.items():
        if levels is not None:
            out[f"persona_{col}"] = levels
    return out


@dataclass(frozen=True)
class FeatureMatrix:
    """Candidates of a batch with their features.

    Attributes:
        query: Query position per row (rows grouped by query).
        product: Product position per row.
        X: ``(rows, len(columns))`` float32 features; categorical codes as floats, NaN missing.
        columns: Feature names, in model order.
        best_source: Index into ``sources`` of the source that ranked the row best.
        reason_product: Context product position behind the strongest co-occurrence, or -1.
        sources: Source names of the task.
    """

    query: np.ndarray
    product: np.ndarray
    X: np.ndarray
    columns: list[str]
    best_source: np.ndarray
    reason_product: np.ndarray
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.query)

    def frame(self, batch: QueryBatch, snapshot: FeatureSnapshot) -> pd.DataFrame:
        """The matrix as a DataFrame with ``query_id`` and ``product_id`` in front."""
        out = pd.DataFrame(self.X, columns=self.columns)
        out.insert(0, "product_id", snapshot.product_ids[self.product])
        out.insert(0, "query_id", batch.query_ids[self.query])
        return out


def _customer_block(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray
) -> dict[str, np.ndarray]:
    a = snapshot.customers
    cfg = snapshot.config
    n = len(batch)
    known = batch.customer >= 0
    c = np.where(known, batch.customer, 0)

    def per_customer(values: np.ndarray) -> np.ndarray:
        return np.where(known, values[c], np.nan)

    now = batch.as_of
    n_orders = np.where(known, a.n_orders[c], 0.0)
    last = per_customer(a.last_day)
    first = np.fmin(per_customer(a.first_day), per_customer(a.signup_day))
    recency = now - last
    tenure = now - first
    monetary = per_customer(a.monetary)
    spent = np.nan_to_num(monetary)
    lifecycle = np.zeros(n)
    has = n_orders > 0
    lifecycle[has & (tenure < cfg.new_customer_days)] = 1
    lifecycle[has & (tenure >= cfg.new_customer_days) & (recency <= cfg.lapsing_days)] = 2
    lifecycle[has & (tenure >= cfg.new_customer_days) & (recency > cfg.lapsing_days)] = 3
    per_query = {
        "cust_known": known.astype(np.float64),
        "cust_recency_days": recency,
        "cust_frequency": n_orders,
        "cust_monetary_log": np.log1p(spent),
        "cust_aov_log": np.log1p(spent / np.maximum(n_orders, 1)),
        "cust_tenure_days": tenure,
        "cust_lifecycle": lifecycle,
        "cust_price_level": per_customer(a.price_level),
    }
    for col in snapshot.persona_columns:
        per_query[f"persona_{col}"] = per_customer(a.persona[col])
    values = list(per_query.values())
    if all(v.dtype == np.float64 for v in values):  # one gather for every column
        return dict(zip(per_query, np.array(values)[:, q], strict=True))
    return {k: v[q] for k, v in per_query.items()}


def _context_pairs(batch: QueryBatch, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand candidate rows x their query's context items: (row index, context product)."""
    sizes = np.diff(batch.context_ptr)[q]
    rows = np.repeat(np.arange(len(q), dtype=np.int64), sizes)
    starts = np.repeat(batch.context_ptr[q], sizes)
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return rows, batch.context[starts + offsets]


def _max_per_row(n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    np.maximum.at(out, rows, values)
    return out


def build_features(batch: QueryBatch, snapshot: FeatureSnapshot) -> FeatureMatrix:
    """Collect candidates for ``batch`` and compute every feature column.

    Returns:
        A :class:`FeatureMatrix` with the columns of :func:`feature_columns` for the task.
    """
    cands = collect_candidates(batch, snapshot)
    return features_for_candidates(batch, snapshot, cands)


def _live_family_views(
    batch: QueryBatch, snapshot: FeatureSnapshot, q: np.ndarray, fam: np.ndarray
) -> np.ndarray:
    """Live views of each row's family (0 without live activity)."""
    out = np.zeros(len(q))
    family = snapshot.products.family
    for i, activity in enumerate(batch.live):
        if activity and len(activity.viewed):
            at = np.flatnonzero(q == i)
            views = np.bincount(family[activity.viewed], minlength=len(snapshot.family_levels))
            out[at] = views[fam[at]]
    return out


def features_for_candidates(
    batch: QueryBatch, snapshot: FeatureSnapshot, cands: Candidates
) -> FeatureMatrix:
    """Compute the feature matrix for already collected candidates."""
    a = snapshot.products
    hist, browse, pairs = snapshot.history, snapshot.browsing, snapshot.pairs
    q, p = cands.query, cands.product
    n = len(q)
    cust = batch.customer[q]
    cat = a.category[p]
    fam = a.family[p]
    price = a.price[p]
    f: dict[str, np.ndarray] = _customer_block(batch, snapshot, q)
    f.update(
        {
            "prod_tier_rank": a.tier_rank[p],
            "prod_family_size": a.family_size[p],
            "prod_pop_pct_in_category": a.pop_pct_in_category[p],
            "prod_trend": a.trend[p],
            "prod_repurchase_rate": a.repurchase_rate[p],
            "prod_is_consumable": a.is_consumable[p].astype(np.float64),
            "prod_price_pct_in_category": a.price_pct_in_category[p],
            "prod_consumable_rate": a.consumable_rate[p],
            "prod_cycle_days": a.cycle_days[p],
            "seg_pop_share": snapshot.segment_popularity(cust, p),
        }
    )
    for w, share in a.popularity.items():
        f[popularity_column(w)] = share[p]
    for j, name in enumerate(cands.sources):
        score_col, rank_col = source_columns(name)
        f[score_col] = cands.scores[:, j]
        f[rank_col] = cands.ranks[:, j]
    present = ~np.isnan(cands.ranks)
    f["n_sources"] = present.sum(axis=1).astype(np.float64)
    best_rank = np.where(present, cands.ranks, np.inf)
    f["best_source_rank"] = best_rank.min(axis=1) if n and present.shape[1] else np.full(n, np.nan)
    best_source = (
        best_rank.argmin(axis=1) if n and present.shape[1] else np.zeros(n, dtype=np.int64)
    )
    f["merge_priority"] = cands.merge_priority(snapshot.config.merge_weights)

    # context: lift / confidence / category association with each context product
    ctx_size = np.diff(batch.context_ptr)[q].astype(np.float64)
    rows, ctx = _context_pairs(batch, q)
    lift, conf = lookup_many((pairs.cooc, pairs.cooc_conf), ctx, p[rows])
    assoc = pairs.category_assoc.get(a.category[ctx], cat[rows])
    f["ctx_size"] = ctx_size
    f["ctx_lift_max"] = _max_per_row(n, rows, lift)
    f["ctx_lift_mean"] = np.bincount(rows, weights=lift, minlength=n) / np.maximum(ctx_size, 1)
    f["ctx_conf_max"] = _max_per_row(n, rows, conf)
    f["ctx_conf_sum"] = np.bincount(rows, weights=conf, minlength=n)
    f["ctx_cat_assoc"] = _max_per_row(n, rows, assoc)
    f["ctx_same_category"] = _max_per_row(n, rows, (a.category[ctx] == cat[rows]).astype(float))
    reason_product = np.full(n, -1, dtype=np.int64)
    if len(rows):
        order = np.lexsort((-ctx, lift, rows))
        sorted_rows = rows[order]
        last = np.empty(len(order), dtype=bool)  # the last (best) entry of each row
        np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=last[:-1])
        last[-1] = True
        best = order[last]
        positive = lift[best] > 0
        reason_product[rows[best[positive]]] = ctx[best[positive]]

    anchor = batch.anchor[q]
    has_anchor = anchor >= 0
    safe_anchor = np.where(has_anchor, anchor, 0)
    f["price_ratio_anchor"] = np.where(has_anchor, price / a.price[safe_anchor], np.nan)
    cv = batch.context_value(a.price)[q]
    f["price_ratio_cart"] = np.where(cv > 0, price / np.maximum(cv, 1e-9), np.nan)
    f["price_pct_vs_level"] = a.price_pct_in_category[p] - f["cust_price_level"]
    f["tier_step"] = np.where(
        has_anchor & (a.family[safe_anchor] == fam),
        a.tier_rank[p] - a.tier_rank[safe_anchor],
        np.nan,
    )
    # customer x product, x family and x category tables: one pair-key computation each
    (
        views_7,
        views_30,
        carts_7,
        carts_30,
        last_session,
        owned,
        orders,
        last_bought,
        own_interval,
        frequency,
    ) = lookup_many(
        (
            browse.views_7,
            browse.views_30,
            browse.carts_7,
            browse.carts_30,
            browse.last_session,
            hist.owned,
            hist.bought,
            hist.last_bought,
            hist.interval,
            hist.frequency,
        ),
        cust,
        p,
    )
    family_views, owns_family = lookup_many((browse.family_views_30, hist.owns_family), cust, fam)
    last_cat, cat_spend = lookup_many((hist.cat_last_day, hist.cat_spend), cust, cat)
    # live views and adds (after the snapshot, online only) count as of the cut-off
    if batch.live:
        live_views, live_carts = batch.live_count("viewed", q, p), batch.live_count("carted", q, p)
        views_7, views_30 = views_7 + live_views, views_30 + live_views
        carts_7, carts_30 = carts_7 + live_carts, carts_30 + live_carts
        family_views = family_views + _live_family_views(batch, snapshot, q, fam)
    f["cust_views_7"] = views_7
    f["cust_views_30"] = views_30
    f["cust_carts_7"] = carts_7
    f["cust_carts_30"] = carts_30
    f["cust_family_views_30"] = family_views
    f["cust_last_session"] = last_session
    f["cust_owns_family"] = owns_family
    f["cust_product_quantity"] = owned
    now = batch.as_of[q]
    last_day = np.where(orders > 0, last_bought, np.nan)
    interval = np.where(own_interval > 0, own_interval, a.cycle_days[p])
    f["cust_product_orders"] = orders
    f["cust_product_frequency"] = frequency
    f["cust_product_last_day"] = last_day - snapshot.as_of
    f["days_since_product_purchase"] = now - last_day
    f["cust_product_interval"] = np.where(orders > 1, own_interval, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f["due_ratio"] = f["days_since_product_purchase"] / interval
    f["days_since_category_purchase"] = np.where(last_cat > 0, now - last_cat, np.nan)
    f["cust_category_affinity"] = cat_spend
    f["placement"] = batch.placement[q].astype(np.float64)
    size_q = np.bincount(q, minlength=len(batch))[q].astype(np.float64)
    in_query = {
        "pop_rank_in_query": a.long_popularity[p],
        "price_rank_in_query": price,
        "lift_rank_in_query": f["ctx_lift_max"],
        "trend_rank_in_query": a.trend[p],
        "conf_rank_in_query": f["ctx_conf_sum"],
        "seg_pop_rank_in_query": f["seg_pop_share"],
        "affinity_rank_in_query": f["cust_category_affinity"],
        "n_sources_rank_in_query": f["n_sources"],
        "frequency_rank_in_query": f["cust_product_frequency"],
    }
    ranks = rank_within_many(q, list(in_query.values()))
    for col, r in zip(in_query, ranks, strict=True):
        f[col] = r / size_q

    columns = feature_columns(snapshot, batch.task)
    X = np.empty((n, len(columns)), dtype=np.float32)
    if n <= ONE_COPY_ROWS:  # one conversion of all columns, then one transposing copy
        X[:] = np.array([f[col] for col in columns], dtype=np.float32).T
    else:  # column by column: no second copy of a large matrix (the same float32 values)
        for j, col in enumerate(columns):
            X[:, j] = f[col]
    return FeatureMatrix(q, p, X, columns, best_source, reason_product, cands.sources)
