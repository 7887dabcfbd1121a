"""Evaluation of a model and the baselines on the same holdout queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.arrays import rank_within
from features.batch import QUERY_ID
from features.data import schema as s
from features.data.io import Shop
from features.pipeline import TaskSet, build_task_set
from features.snapshot import FeatureSnapshot
from training import metrics as m
from training.model import XsellModel

KS = (1, 3, 5, 10)
# Baselines: a feature column whose value alone ranks the candidates (higher first).
# ``SEGMENT_POPULARITY`` is computed from the snapshot by :func:`segment_popularity`.
SEGMENT_POPULARITY = "<segment popularity>"
BASELINES = {
    s.CROSS_SELL: {
        "popular": "prod_pop_90",
        "segment_popular": SEGMENT_POPULARITY,
        "cooc_lift": "ctx_lift_max",
    },
    s.UPSELL: {
        "popular": "prod_pop_90",
        "segment_popular": SEGMENT_POPULARITY,
        "popular_pricier": "src_family_popular_score",
    },
}


@dataclass(frozen=True)
class TaskEvaluation:
    """Metrics of one task on a holdout.

    Attributes:
        metrics: Flat ``{name: value}`` (``ndcg_at_10``, ``baseline_popular.ndcg_at_10``, ...).
        per_segment: Model metrics sliced by customer type and persona segment.
        candidate_recall: Source -> share of positives reached.
        best_baseline: Name of the baseline with the highest primary metric.
    """

    metrics: dict[str, float]
    per_segment: pd.DataFrame
    candidate_recall: dict[str, float]
    best_baseline: str


def _scores_from_column(ts: TaskSet, column: str) -> np.ndarray:
    values = ts.X[:, ts.columns.index(column)].astype(np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def ranking_metrics(ts: TaskSet, score: np.ndarray) -> pd.DataFrame:
    """Per-query metrics of ``score`` on a task set (missed positives count as misses)."""
    qindex = pd.Index(ts.queries[QUERY_ID])
    q = qindex.get_indexer(ts.query_id)
    n_pos = ts.queries["n_positives"].to_numpy()
    label = ts.label.astype(np.int64)
    return m.per_query_metrics(q, score, label, n_pos, ks=KS)


def segment_popularity(ts: TaskSet, snapshot: FeatureSnapshot, product: np.ndarray) -> np.ndarray:
    """Share of the candidate in its query's persona segment's recent purchases (the segment's
    top list; global popularity for customers without a segment)."""
    levels = {name: i for i, name in enumerate(snapshot.segment_levels)}
    q_seg = ts.queries["segment"].map(levels).fillna(-1).astype(np.int64).to_numpy()
    seg = q_seg[pd.Index(ts.queries[QUERY_ID]).get_indexer(ts.query_id)]
    safe = np.maximum(product, 0)
    share = snapshot.lookups["segment_top"].get(seg, safe)
    pop = snapshot.arrays[f"pop_{max(snapshot.config.popularity_windows_days)}"][safe]
    return np.where(product < 0, -np.inf, np.where(seg < 0, pop, share))


def baseline_scores(
    ts: TaskSet, snapshot: FeatureSnapshot, product: np.ndarray
) -> dict[str, np.ndarray]:
    """Every baseline's scores: those of :data:`BASELINES` and each source alone.

    Args:
        ts: The task set.
        snapshot: The snapshot its features came from.
        product: Product position per row (-1 unknown).
    """
    out = {
        name: segment_popularity(ts, snapshot, product)
        if col == SEGMENT_POPULARITY
        else _scores_from_column(ts, col)
        for name, col in BASELINES[ts.task].items()
    }
    for src in ts.sources:
        rank = ts.X[:, ts.columns.index(f"src_{src}_rank")].astype(np.float64)
        out[f"source_{src}"] = np.where(np.isnan(rank), -np.inf, -rank)
    return out


def evaluate_task(
    ts: TaskSet, score: np.ndarray, snapshot: FeatureSnapshot, *, primary: str = "ndcg_at_10"
) -> TaskEvaluation:
    """Model and baseline metrics, business proxies, slices and candidate recall."""
    per_q = ranking_metrics(ts, score)
    out = {k: float(v) for k, v in m.summarize(per_q).items()}
    qindex = pd.Index(ts.queries[QUERY_ID])
    q = qindex.get_indexer(ts.query_id)
    pidx = np.fromiter(
        (snapshot.product_index.get(p, -1) for p in ts.product_id), dtype=np.int64, count=len(ts)
    )
    price = np.where(pidx >= 0, snapshot.arrays["price"][np.maximum(pidx, 0)], np.nan)
    for k in (3, 10):
        out[f"catalog_coverage_at_{k}"] = m.catalog_coverage(
            q, score, ts.product_id, k, snapshot.n_products
        )
        out[f"expected_revenue_at_{k}"] = m.expected_revenue_at_k(
            q, score, ts.label, price, k, n_queries=len(qindex)
        )
    ratio_col = "price_ratio_anchor" if ts.task == s.UPSELL else "price_ratio_cart"
    ratio = ts.X[:, ts.columns.index(ratio_col)].astype(np.float64)
    cfg = snapshot.config
    if ts.task == s.UPSELL:
        out["mean_price_uplift_at_3"] = m.mean_price_uplift(q, score, ratio, np.ones_like(ratio), 3)
        inside = (ratio > 1) & (ratio <= 1 + cfg.upsell_max_uplift + 1e-9)
    else:
        inside = np.isnan(ratio) | (ratio <= cfg.cross_sell_price_cap + 1e-9)
    in_stock = np.where(pidx >= 0, snapshot.arrays["in_stock"][np.maximum(pidx, 0)], False)
    top = _top_rows(q, score, 3)
    out["guardrail_share_at_3"] = float(np.mean((inside & in_stock)[top])) if top.any() else np.nan
    n_pos = ts.queries["n_positives"].to_numpy()
    out["candidate_recall"] = m.candidate_recall(ts.queries["n_found"].to_numpy(), n_pos)
    out["n_queries"] = float(len(ts.queries))
    best_name, best_value = "", -np.inf
    for name, bscore in baseline_scores(ts, snapshot, pidx).items():
        bq = m.summarize(ranking_metrics(ts, bscore))
        for key, value in bq.items():
            out[f"baseline_{name}.{key}"] = float(value)
        if bq[primary] > best_value:
            best_name, best_value = name, bq[primary]
    meta = ts.queries.set_index(pd.RangeIndex(len(ts.queries)))
    customer_type = pd.Series(
        np.where(meta["is_new_customer"], "new", "repeat"), index=meta.index, name="customer_type"
    )
    segment = meta["segment"].rename("segment")
    per_segment = pd.concat(
        [
            m.sliced(per_q, customer_type.loc[per_q.index]).assign(slice="customer_type"),
            m.sliced(per_q, segment.loc[per_q.index]).assign(slice="segment"),
        ]
    )
    return TaskEvaluation(out, per_segment, ts.candidate_recall(), best_name)


def _top_rows(q: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    return rank_within(q, score.astype(np.float64)) <= k


def holdout_sets(
    model: XsellModel, shop: Shop, *, start: pd.Timestamp, end: pd.Timestamp, seed: int
) -> dict[str, TaskSet]:
    """The holdout task sets of a model: queries in ``[start, end)`` against its snapshot.

    Raises:
        ValueError: The model's snapshot is later than ``start`` (it would see the holdout).
    """
    if model.snapshot.as_of_timestamp > pd.Timestamp(start):
        raise ValueError(
            f"the model's data ends {model.snapshot.as_of_timestamp}, after the holdout start {start}"
        )
    sets = {}
    for task in model.boosters:
        sets[task] = build_task_set(
            shop,
            task=task,
            start=pd.Timestamp(start),
            end=pd.Timestamp(end),
            config=model.snapshot.config,
            step_days=max(int((pd.Timestamp(end) - pd.Timestamp(start)).days) + 1, 1),
            max_queries_per_cutoff=None,
            seed=seed,
            snapshots={pd.Timestamp(start): model.snapshot},
        )
    return sets


def evaluate_model(
    model: XsellModel, sets: dict[str, TaskSet], *, primary: str = "ndcg_at_10"
) -> dict[str, TaskEvaluation]:
    """Score each holdout task set with the model's rankers and evaluate."""
    out = {}
    for task, ts in sets.items():
        score = model.boosters[task].predict(ts.X, num_threads=2) if len(ts) else np.zeros(0)
        out[task] = evaluate_task(ts, score, model.snapshot, primary=primary)
    return out
