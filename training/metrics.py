"""Offline ranking metrics on ranked candidates: pure, vectorised NumPy functions.

Every function works on aligned arrays, one element per candidate row:

* ``query``: integer query id in ``0..len(n_positives)-1``; rows of one query may be anywhere.
* ``score``: model score, higher is better. Ties are broken by row order (earlier row ranks
  higher); NaN ranks last.
* ``label``: 1 if the candidate is relevant (was bought), else 0.

``n_positives[q]`` is the number of relevant products of query ``q``, including the ones the
candidate generator missed: a missed positive is a miss for recall, MAP and NDCG. A query with
positives but no candidate rows at all scores 0 on every metric. Queries with
``n_positives == 0`` cannot be scored and are left out of every mean.

Ranks are computed once (``features.arrays.rank_within``), the per-query metrics are derived
from them in :func:`per_query_metrics`, and every scalar metric is the mean of one of its
columns. Metric names use ``_at_`` (``ndcg_at_10``) because MLflow rejects ``@``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from features.arrays import rank_within

QUERY = "query"
N_QUERIES = "n_queries"
MRR = "mrr"
RANK_METRICS = ("ndcg", "map", "recall", "hit_rate")
DEFAULT_KS = (1, 3, 5, 10)


def metric_name(metric: str, k: int) -> str:
    """Column / MLflow name of a cut-off metric: ``metric_name("ndcg", 10) == "ndcg_at_10"``.

    MLflow rejects ``@`` in metric names, hence ``_at_``.
    """
    return f"{metric}_at_{k}"


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _aligned(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    """``np.asarray`` every argument and check they all have the same length."""
    out = {name: np.asarray(a) for name, a in arrays.items()}
    lengths = {name: a.shape for name, a in out.items()}
    if any(a.ndim != 1 for a in out.values()) or len({a.shape for a in out.values()}) > 1:
        raise ValueError(f"row arrays must be 1-D and aligned, got shapes {lengths}")
    return out


def _query_ids(query: np.ndarray, n_queries: int | None = None) -> np.ndarray:
    """Validated int64 query ids (non-negative, below ``n_queries`` when given)."""
    if query.size and not np.issubdtype(query.dtype, np.integer):
        raise ValueError(f"query ids must be integers, got dtype {query.dtype}")
    q = query.astype(np.int64, copy=False)
    if q.size and q.min() < 0:
        raise ValueError("query ids must be non-negative")
    if n_queries is not None and q.size and q.max() >= n_queries:
        raise ValueError(f"query id {q.max()} out of range for {n_queries} queries")
    return q


def _top_k(query: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows ranked in the top ``k`` of their query."""
    q = _query_ids(query)
    return rank_within(q, score.astype(np.float64, copy=False)) <= _check_k(k)


def per_query_metrics(
    query: np.ndarray,
    score: np.ndarray,
    label: np.ndarray,
    n_positives: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> pd.DataFrame:
    r"""Ranking metrics of every query that has at least one positive.

    With ``rank(i)`` the 1-based rank of row ``i`` in its query (score descending, ties by row
    order), ``rel(i)`` its 0/1 label, ``P = n_positives[q]`` and
    ``hits(i) = sum of rel(j) over rows j of the query with rank(j) <= rank(i)``:

    * ``ndcg_at_k = DCG@k / IDCG@k`` with ``DCG@k = sum_{rank(i) <= k} rel(i) / log2(rank(i) + 1)``
      and ``IDCG@k = sum_{r=1}^{min(P, k)} 1 / log2(r + 1)``;
    * ``map_at_k = sum_{rank(i) <= k} rel(i) * hits(i) / rank(i) / min(P, k)``
      (precision at each hit, normalised by the most hits the top k could hold);
    * ``recall_at_k = sum_{rank(i) <= k} rel(i) / P``;
    * ``hit_rate_at_k = 1`` if any ``rel(i) = 1`` with ``rank(i) <= k``, else 0;
    * ``mrr = 1 / min{rank(i) : rel(i) = 1}`` over all the query's candidates, 0 without a hit.

    Positives missing from the candidates count as misses through ``P``. A ``k`` larger than
    the list simply takes the whole list.

    Args:
        query: Query id per row, integers in ``0..len(n_positives)-1``, any order.
        score: Model score per row; higher is better, NaN ranks last.
        label: 0/1 relevance per row.
        n_positives: Number of positives per query id (found or not); at least the number of
            positive labels of that query.
        ks: Cut-offs.

    Returns:
        One row per query id ``q`` with ``n_positives[q] > 0`` (including queries without any
        candidate row), indexed by ``query`` in increasing order, with float columns
        ``ndcg_at_{k}`` for every k, then ``map_at_{k}``, ``recall_at_{k}``,
        ``hit_rate_at_{k}``, then ``mrr``.

    Raises:
        ValueError: On misaligned arrays, out-of-range query ids, non-binary labels, negative
            ``n_positives``, more positive labels than ``n_positives``, or a bad ``k``.
    """
    rows = _aligned(query=query, score=score, label=label)
    n_pos = np.asarray(n_positives)
    if n_pos.ndim != 1 or (n_pos.size and not np.issubdtype(n_pos.dtype, np.integer)):
        raise ValueError("n_positives must be a 1-D integer array indexed by query id")
    n_pos = n_pos.astype(np.int64, copy=False)
    if (n_pos < 0).any():
        raise ValueError("n_positives must be non-negative")
    n_queries = len(n_pos)
    q = _query_ids(rows["query"], n_queries)
    if not np.isin(rows["label"], (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    rel = rows["label"].astype(np.float64)
    ks = tuple(_check_k(k) for k in ks)

    # Rank within query, then each row's position in the (query, rank) order without a second
    # sort: the query's start offset plus rank - 1. A cumulative sum in that order gives hits(i).
    rank = rank_within(q, rows["score"].astype(np.float64, copy=False)).astype(np.int64)
    size = np.bincount(q, minlength=n_queries)
    start = np.cumsum(size) - size
    pos = start[q] + rank - 1
    rel_sorted = np.empty_like(rel)
    rel_sorted[pos] = rel
    cum = np.concatenate(([0.0], np.cumsum(rel_sorted)))
    hits = cum[pos + 1] - cum[start[q]]

    def per_query(weights: np.ndarray) -> np.ndarray:
        return np.bincount(q, weights=weights, minlength=n_queries)

    found = per_query(rel)
    if (found > n_pos).any():
        bad = int(np.flatnonzero(found > n_pos)[0])
        raise ValueError(
            f"query {bad} has {int(found[bad])} positive labels but n_positives={n_pos[bad]}"
        )

    scored = n_pos > 0
    p = np.where(scored, n_pos, 1).astype(np.float64)  # denominators, safe for unscored queries
    k_max = max(ks, default=1)
    ideal = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, k_max + 2)))))
    gain = rel / np.log2(rank + 1)
    precision_at_hit = rel * hits / rank

    columns: dict[str, dict[int, np.ndarray]] = {m: {} for m in RANK_METRICS}
    for k in ks:  # loop over cut-offs, not queries
        top = rank <= k
        n_ideal = np.minimum(p, k).astype(np.int64)
        hits_k = per_query(rel * top)
        columns["ndcg"][k] = per_query(gain * top) / ideal[n_ideal]
        columns["map"][k] = per_query(precision_at_hit * top) / n_ideal
        columns["recall"][k] = hits_k / p
        columns["hit_rate"][k] = (hits_k > 0).astype(np.float64)
    first_hit = (rel > 0) & (hits == 1)
    reciprocal_rank = per_query(first_hit / rank)

    data = {metric_name(m, k): v[scored] for m in RANK_METRICS for k, v in columns[m].items()}
    data[MRR] = reciprocal_rank[scored]
    index = pd.Index(np.flatnonzero(scored), name=QUERY)
    return pd.DataFrame(data, index=index, dtype=np.float64)


def _mean_metric(
    column: str,
    query: np.ndarray,
    score: np.ndarray,
    label: np.ndarray,
    n_positives: np.ndarray,
    ks: Sequence[int],
) -> float:
    frame = per_query_metrics(query, score, label, n_positives, ks=ks)
    return float(frame[column].mean()) if len(frame) else float("nan")


def ndcg_at_k(
    query: np.ndarray, score: np.ndarray, label: np.ndarray, n_positives: np.ndarray, k: int
) -> float:
    """Mean NDCG@k over queries with ``n_positives > 0`` (binary gains, log2 discount).

    ``NDCG@k = DCG@k / IDCG@k``, ``DCG@k = sum_{rank(i) <= k} rel(i) / log2(rank(i) + 1)``,
    ``IDCG@k = sum_{r=1}^{min(n_positives, k)} 1 / log2(r + 1)``. See :func:`per_query_metrics`.

    Returns:
        The mean, or NaN when no query has a positive.
    """
    return _mean_metric(metric_name("ndcg", k), query, score, label, n_positives, (k,))


def map_at_k(
    query: np.ndarray, score: np.ndarray, label: np.ndarray, n_positives: np.ndarray, k: int
) -> float:
    """Mean average precision at k over queries with ``n_positives > 0``.

    ``AP@k = sum_{rank(i) <= k, rel(i) = 1} precision@rank(i) / min(n_positives, k)`` with
    ``precision@r`` = hits in the top r / r. See :func:`per_query_metrics`.

    Returns:
        The mean, or NaN when no query has a positive.
    """
    return _mean_metric(metric_name("map", k), query, score, label, n_positives, (k,))


def recall_at_k(
    query: np.ndarray, score: np.ndarray, label: np.ndarray, n_positives: np.ndarray, k: int
) -> float:
    """Mean recall@k = hits in the top k / ``n_positives``, over queries with positives.

    Returns:
        The mean, or NaN when no query has a positive.
    """
    return _mean_metric(metric_name("recall", k), query, score, label, n_positives, (k,))


def hit_rate_at_k(
    query: np.ndarray, score: np.ndarray, label: np.ndarray, n_positives: np.ndarray, k: int
) -> float:
    """Share of queries with positives that have at least one hit in the top k.

    Returns:
        The mean of ``1[hits in the top k > 0]``, or NaN when no query has a positive.
    """
    return _mean_metric(metric_name("hit_rate", k), query, score, label, n_positives, (k,))


def mrr(query: np.ndarray, score: np.ndarray, label: np.ndarray, n_positives: np.ndarray) -> float:
    """Mean reciprocal rank over queries with positives.

    ``RR = 1 / rank of the first hit`` among all the query's candidates (no cut-off), 0 when
    no candidate is a hit (including queries without candidate rows).

    Returns:
        The mean, or NaN when no query has a positive.
    """
    return _mean_metric(MRR, query, score, label, n_positives, ())


def summarize(per_query_df: pd.DataFrame) -> dict[str, float]:
    """Mean of every metric column of a :func:`per_query_metrics` frame.

    Returns:
        ``{column: mean}`` (NaN for an empty frame), ready for ``mlflow.log_metrics``.
    """
    return {str(c): float(v) for c, v in per_query_df.mean(axis=0).items()}


def sliced(per_query_df: pd.DataFrame, by: pd.Series) -> pd.DataFrame:
    """Metric means per segment (e.g. new vs repeat customer, persona, placement).

    Args:
        per_query_df: Output of :func:`per_query_metrics` (indexed by query id).
        by: Segment per query id (indexed by query id; extra ids are ignored). Queries whose
            segment is missing form their own NaN slice rather than being dropped.

    Returns:
        One row per segment value (sorted, index named after ``by``) with ``n_queries`` (the
        number of queries in the slice) followed by the mean of every metric column.
    """
    segment = by.reindex(per_query_df.index)
    grouped = per_query_df.groupby(segment.to_numpy(), dropna=False, sort=True)
    out = grouped.mean()
    out.insert(0, N_QUERIES, grouped.size().astype(np.int64))
    out.index.name = by.name
    return out


def catalog_coverage(
    query: np.ndarray, score: np.ndarray, product: np.ndarray, k: int, n_catalog: int
) -> float:
    """Share of the catalog recommended at least once.

    ``coverage = |{product(i) : rank(i) <= k}| / n_catalog``.

    Args:
        query: Query id per row.
        score: Model score per row.
        product: Product id per row (any hashable type).
        k: Cut-off.
        n_catalog: Number of products in the catalog.

    Returns:
        The share in ``[0, 1]`` when ``product`` only holds catalog products.
    """
    rows = _aligned(query=query, score=score, product=product)
    if n_catalog < 1:
        raise ValueError(f"n_catalog must be positive, got {n_catalog}")
    top = _top_k(rows["query"], rows["score"], k)
    return len(pd.unique(rows["product"][top])) / n_catalog


def candidate_recall(n_found: np.ndarray, n_positives: np.ndarray) -> float:
    """Micro-averaged recall of the candidate generator.

    ``candidate_recall = sum_q n_found[q] / sum_q n_positives[q]``.

    Returns:
        The ratio, or NaN when there are no positives at all.
    """
    total = float(np.sum(n_positives))
    return float(np.sum(n_found)) / total if total > 0 else float("nan")


def expected_revenue_at_k(
    query: np.ndarray,
    score: np.ndarray,
    label: np.ndarray,
    price: np.ndarray,
    k: int,
    *,
    n_queries: int | None = None,
) -> float:
    """Mean revenue of the bought products shown in the top k.

    ``revenue@k = mean_q sum_{rank(i) <= k} price(i) * rel(i)``; a NaN price counts as 0.

    Args:
        query: Query id per row.
        score: Model score per row.
        label: 0/1 relevance per row.
        price: Price per row.
        k: Cut-off.
        n_queries: Average over query ids ``0..n_queries-1``, so queries without candidate
            rows count as 0. Default: the distinct ids present in ``query``.

    Returns:
        The mean, or NaN when there is no query.
    """
    rows = _aligned(query=query, score=score, label=label, price=price)
    q = _query_ids(rows["query"], n_queries)
    top = _top_k(q, rows["score"], k)
    revenue = np.where(top & (rows["label"] > 0), rows["price"].astype(np.float64), 0.0)
    total = float(np.nansum(revenue))
    count = n_queries if n_queries is not None else len(np.unique(q))
    return total / count if count else float("nan")


def mean_price_uplift(
    query: np.ndarray, score: np.ndarray, price: np.ndarray, anchor_price: np.ndarray, k: int
) -> float:
    """Mean relative price step of the top-k recommendations over their anchor (upsell).

    ``uplift = mean_{rank(i) <= k} (price(i) / anchor_price(i) - 1)`` over the top-k rows whose
    ratio is finite: rows with a NaN price, a NaN anchor price or a non-positive anchor price
    are skipped.

    Args:
        query: Query id per row.
        score: Model score per row.
        price: Candidate price per row.
        anchor_price: Price of the query's anchor product, repeated on each row.
        k: Cut-off.

    Returns:
        The mean, or NaN when no top-k row has a usable ratio.
    """
    rows = _aligned(query=query, score=score, price=price, anchor_price=anchor_price)
    top = _top_k(rows["query"], rows["score"], k)
    p = rows["price"][top].astype(np.float64)
    a = rows["anchor_price"][top].astype(np.float64)
    ok = np.isfinite(p) & np.isfinite(a) & (a > 0)
    return float(np.mean(p[ok] / a[ok] - 1.0)) if ok.any() else float("nan")
