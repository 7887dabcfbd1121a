"""Tests of the ranking metrics: hand-computed fixtures, edge cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    N_QUERIES,
    candidate_recall,
    catalog_coverage,
    expected_revenue_at_k,
    hit_rate_at_k,
    map_at_k,
    mean_price_uplift,
    mrr,
    ndcg_at_k,
    per_query_metrics,
    recall_at_k,
    sliced,
    summarize,
)

LOG2_3 = math.log2(3)  # 1.58496...
KS = (1, 3, 5)

# Four queries:
# * q0: 4 rows, positives at ranks 1 and 3, n_positives = 2.
# * q1: 3 rows, its only candidate positive ranked 2nd (scores .2/.5/.1), n_positives = 3:
#   two positives were missed by the candidate generator.
# * q2: no candidate rows at all, n_positives = 1: scores 0 everywhere.
# * q3: 2 rows, no positive (n_positives = 0): excluded from the metrics.
QUERY = np.array([0, 0, 0, 0, 1, 1, 1, 3, 3])
SCORE = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.5, 0.1, 0.3, 0.4])
LABEL = np.array([1, 0, 1, 0, 1, 0, 0, 0, 0])
N_POSITIVES = np.array([2, 3, 1, 0])
PRODUCT = np.array(["a", "b", "c", "d", "b", "e", "f", "a", "g"])

# q0: DCG@1 = 1, IDCG@1 = 1                                      -> NDCG@1 = 1
#     DCG@3 = 1 + 1/log2(4) = 1.5, IDCG@3 = 1 + 1/log2(3) = 1.63093 -> NDCG@3 = 0.919721
#     k = 5 exceeds the list: same as k = 3.
#     AP@1 = (1/1) / min(2, 1) = 1; AP@3 = (1/1 + 2/3) / min(2, 3) = 0.833333
#     recall@1 = 1/2, recall@3 = 2/2; hit@1 = hit@3 = 1; RR = 1/1
Q0 = {
    "ndcg_at_1": 1.0,
    "ndcg_at_3": 1.5 / (1 + 1 / LOG2_3),
    "ndcg_at_5": 1.5 / (1 + 1 / LOG2_3),
    "map_at_1": 1.0,
    "map_at_3": (1 + 2 / 3) / 2,
    "map_at_5": (1 + 2 / 3) / 2,
    "recall_at_1": 0.5,
    "recall_at_3": 1.0,
    "recall_at_5": 1.0,
    "hit_rate_at_1": 1.0,
    "hit_rate_at_3": 1.0,
    "hit_rate_at_5": 1.0,
    "mrr": 1.0,
}
# q1: ranks by score: row .5 (miss) 1st, row .2 (hit) 2nd, row .1 (miss) 3rd.
#     DCG@1 = 0; DCG@3 = 1/log2(3) = 0.63093
#     IDCG@3 = IDCG@5 = 1 + 1/log2(3) + 1/log2(4) = 2.13093 (min(3, k) = 3 ideal gains)
#     NDCG@3 = NDCG@5 = 0.63093 / 2.13093 = 0.296082
#     AP@3 = AP@5 = (1/2) / min(3, k) = 0.166667
#     recall@3 = 1/3; hit@1 = 0, hit@3 = 1; RR = 1/2
IDCG_3 = 1 + 1 / LOG2_3 + 0.5
Q1 = {
    "ndcg_at_1": 0.0,
    "ndcg_at_3": (1 / LOG2_3) / IDCG_3,
    "ndcg_at_5": (1 / LOG2_3) / IDCG_3,
    "map_at_1": 0.0,
    "map_at_3": 0.5 / 3,
    "map_at_5": 0.5 / 3,
    "recall_at_1": 0.0,
    "recall_at_3": 1 / 3,
    "recall_at_5": 1 / 3,
    "hit_rate_at_1": 0.0,
    "hit_rate_at_3": 1.0,
    "hit_rate_at_5": 1.0,
    "mrr": 0.5,
}
Q2 = dict.fromkeys(Q0, 0.0)


def _frame() -> pd.DataFrame:
    return per_query_metrics(QUERY, SCORE, LABEL, N_POSITIVES, ks=KS)


def test_hand_computed_values_per_query() -> None:
    frame = _frame()
    assert list(frame.index) == [0, 1, 2]  # q3 (n_positives = 0) excluded, q2 (no rows) kept
    assert frame.index.name == "query"
    assert list(frame.columns) == list(Q0)
    assert frame.loc[0, "ndcg_at_3"] == pytest.approx(0.919721, abs=1e-6)
    assert frame.loc[1, "ndcg_at_3"] == pytest.approx(0.296082, abs=1e-6)
    for q, expected in enumerate((Q0, Q1, Q2)):
        assert frame.loc[q].to_dict() == pytest.approx(expected)


def test_scalar_metrics_are_means_over_queries_with_positives() -> None:
    # Means over q0, q1, q2 (q3 has no positives): e.g. NDCG@3 = (0.919721 + 0.296082 + 0) / 3
    args = (QUERY, SCORE, LABEL, N_POSITIVES)
    assert ndcg_at_k(*args, 3) == pytest.approx((0.919721 + 0.296082) / 3, abs=1e-6)
    assert map_at_k(*args, 3) == pytest.approx((5 / 6 + 1 / 6) / 3)
    assert recall_at_k(*args, 1) == pytest.approx(0.5 / 3)
    assert recall_at_k(*args, 3) == pytest.approx((1 + 1 / 3) / 3)
    assert hit_rate_at_k(*args, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(*args, 3) == pytest.approx(2 / 3)
    assert mrr(*args) == pytest.approx((1 + 0.5 + 0) / 3)


def test_summarize_gives_column_means_with_mlflow_safe_names() -> None:
    summary = summarize(_frame())
    expected = {name: (Q0[name] + Q1[name] + Q2[name]) / 3 for name in Q0}
    assert summary == pytest.approx(expected)
    assert all("@" not in name for name in summary)
    assert all(isinstance(v, float) for v in summary.values())


def test_shuffled_rows_give_the_same_result() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(QUERY))
        shuffled = per_query_metrics(QUERY[perm], SCORE[perm], LABEL[perm], N_POSITIVES, ks=KS)
        pd.testing.assert_frame_equal(shuffled, _frame())


def test_missed_positive_lowers_recall_ndcg_and_map() -> None:
    # q0 alone with one more positive the candidates missed: n_positives 2 -> 3.
    # recall@3 = 2/3; IDCG@3 = 1 + 1/log2(3) + 1/log2(4) = 2.13093 -> NDCG@3 = 1.5 / 2.13093
    # = 0.703918; AP@3 = (1 + 2/3) / min(3, 3) = 0.555556
    q, s, y = QUERY[:4], SCORE[:4], LABEL[:4]
    found_all = per_query_metrics(q, s, y, np.array([2]), ks=(3,)).loc[0]
    missed_one = per_query_metrics(q, s, y, np.array([3]), ks=(3,)).loc[0]
    assert missed_one["recall_at_3"] == pytest.approx(2 / 3)
    assert missed_one["ndcg_at_3"] == pytest.approx(1.5 / IDCG_3)
    assert missed_one["ndcg_at_3"] == pytest.approx(0.703918, abs=1e-6)
    assert missed_one["map_at_3"] == pytest.approx(5 / 9)
    assert missed_one["recall_at_3"] < found_all["recall_at_3"]
    assert missed_one["ndcg_at_3"] < found_all["ndcg_at_3"]
    # Nothing that depends on the ranking alone changes.
    assert missed_one["hit_rate_at_3"] == found_all["hit_rate_at_3"] == 1.0
    assert missed_one["mrr"] == found_all["mrr"] == 1.0


def test_query_without_candidate_rows_counts_as_zero() -> None:
    # Only q1 has rows; q0 (2 positives) and q2 (1 positive) got no candidates at all.
    q, s, y = np.array([1, 1]), np.array([0.3, 0.1]), np.array([1, 0])
    frame = per_query_metrics(q, s, y, np.array([2, 1, 1]), ks=(1,))
    assert list(frame.index) == [0, 1, 2]
    assert frame.loc[[0, 2]].to_numpy() == pytest.approx(0.0)
    assert frame.loc[1].to_dict() == pytest.approx(dict.fromkeys(frame.columns, 1.0))
    assert ndcg_at_k(q, s, y, np.array([2, 1, 1]), 1) == pytest.approx(1 / 3)


def test_no_rows_at_all() -> None:
    empty = np.array([], dtype=np.int64)
    frame = per_query_metrics(empty, empty.astype(float), empty, np.array([1, 0]), ks=(3,))
    assert list(frame.index) == [0]
    assert frame.to_numpy() == pytest.approx(0.0)
    assert math.isnan(ndcg_at_k(empty, empty.astype(float), empty, np.array([0]), 3))


def test_ties_are_broken_by_row_order() -> None:
    # Three rows tied at 0.5, n_positives = 1: the earlier row ranks higher.
    q, s = np.zeros(3, dtype=int), np.full(3, 0.5)
    first = per_query_metrics(q, s, np.array([1, 0, 0]), np.array([1]), ks=(1, 3)).loc[0]
    last = per_query_metrics(q, s, np.array([0, 0, 1]), np.array([1]), ks=(1, 3)).loc[0]
    # First row is rank 1: NDCG@1 = 1, RR = 1.
    assert first["ndcg_at_1"] == 1.0
    assert first["mrr"] == 1.0
    # Last row is rank 3: NDCG@1 = 0, NDCG@3 = (1/log2(4)) / 1 = 0.5, AP@3 = (1/3)/1, RR = 1/3.
    assert last["ndcg_at_1"] == 0.0
    assert last["ndcg_at_3"] == pytest.approx(0.5)
    assert last["map_at_3"] == pytest.approx(1 / 3)
    assert last["mrr"] == pytest.approx(1 / 3)


def test_nan_scores_rank_last() -> None:
    # Positive row has a NaN score: it ranks 2nd behind the 0.1 row. RR = 1/2.
    q, s, y = np.array([0, 0]), np.array([np.nan, 0.1]), np.array([1, 0])
    assert mrr(q, s, y, np.array([1])) == pytest.approx(0.5)


def test_k_larger_than_the_list() -> None:
    args = (QUERY[:4], SCORE[:4], LABEL[:4], np.array([2]))
    # q0 has 4 rows: every cut-off from 4 on sees the same list.
    assert ndcg_at_k(*args, 100) == pytest.approx(ndcg_at_k(*args, 4))
    assert ndcg_at_k(*args, 100) == pytest.approx(1.5 / (1 + 1 / LOG2_3))
    assert map_at_k(*args, 100) == pytest.approx(5 / 6)  # (1 + 2/3) / min(2, 100)
    assert recall_at_k(*args, 100) == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="positive labels"):
        per_query_metrics(QUERY, SCORE, LABEL, np.array([1, 3, 1, 0]))  # q0 has 2 positives
    with pytest.raises(ValueError, match="out of range"):
        per_query_metrics(QUERY, SCORE, LABEL, np.array([2, 3, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        per_query_metrics(QUERY, SCORE, LABEL * 2, N_POSITIVES * 2)
    with pytest.raises(ValueError, match="aligned"):
        per_query_metrics(QUERY, SCORE[:-1], LABEL, N_POSITIVES)
    with pytest.raises(ValueError, match="positive integer"):
        ndcg_at_k(QUERY, SCORE, LABEL, N_POSITIVES, 0)


def test_catalog_coverage() -> None:
    # Top 1: q0 -> a, q1 -> e (score .5), q3 -> g (score .4): {a, e, g} = 3 of 10.
    # Top 2: adds b (q0), b (q1), a (q3): {a, b, e, g} = 4 of 10.
    assert catalog_coverage(QUERY, SCORE, PRODUCT, 1, 10) == pytest.approx(0.3)
    assert catalog_coverage(QUERY, SCORE, PRODUCT, 2, 10) == pytest.approx(0.4)
    # k beyond every list: all 7 distinct products.
    assert catalog_coverage(QUERY, SCORE, PRODUCT, 50, 10) == pytest.approx(0.7)


def test_candidate_recall() -> None:
    # (2 + 1 + 0) / (2 + 3 + 1) = 0.5
    assert candidate_recall(np.array([2, 1, 0]), np.array([2, 3, 1])) == pytest.approx(0.5)
    assert math.isnan(candidate_recall(np.array([0]), np.array([0])))


def test_expected_revenue_at_k() -> None:
    q, s, y = QUERY[:7], SCORE[:7], LABEL[:7]
    price = np.array([10.0, 20.0, 30.0, 40.0, 5.0, 7.0, 9.0])
    # k = 1: q0 rank 1 is a hit at 10; q1 rank 1 (price 7) is a miss -> (10 + 0) / 2 = 5
    assert expected_revenue_at_k(q, s, y, price, 1) == pytest.approx(5.0)
    # k = 3: q0 hits at 10 and 30; q1 hit at 5 (rank 2) -> (40 + 5) / 2 = 22.5
    assert expected_revenue_at_k(q, s, y, price, 3) == pytest.approx(22.5)
    # Averaged over 4 query ids (q2, q3 have no rows): 45 / 4 = 11.25
    assert expected_revenue_at_k(q, s, y, price, 3, n_queries=4) == pytest.approx(11.25)
    # A NaN price on a non-hit row is ignored; on a hit it counts as 0: (30 + 5) / 2 = 17.5
    price[[0, 1]] = np.nan
    assert expected_revenue_at_k(q, s, y, price, 3) == pytest.approx(17.5)


def test_mean_price_uplift() -> None:
    q, s = QUERY[:7], SCORE[:7]
    price = np.array([10.0, 20.0, 30.0, 40.0, 5.0, 7.0, 9.0])
    anchor = np.array([20.0] * 4 + [10.0] * 3)
    # Top 2: q0 10/20 - 1 = -0.5, 20/20 - 1 = 0; q1 7/10 - 1 = -0.3, 5/10 - 1 = -0.5
    # mean over the 4 rows = -1.3 / 4 = -0.325
    assert mean_price_uplift(q, s, price, anchor, 2) == pytest.approx(-0.325)
    # NaN price (q0 rank 1) and zero anchor (q1 rank 1) are skipped: (0 - 0.5) / 2 = -0.25
    price[0] = np.nan
    anchor[5] = 0.0
    assert mean_price_uplift(q, s, price, anchor, 2) == pytest.approx(-0.25)
    assert math.isnan(mean_price_uplift(q, s, np.full(7, np.nan), anchor, 2))


def test_sliced() -> None:
    segment = pd.Series(["new", "repeat", "new", "repeat"], index=[0, 1, 2, 3], name="customer")
    out = sliced(_frame(), segment)
    assert out.index.name == "customer"
    assert list(out.index) == ["new", "repeat"]
    assert list(out.columns) == [N_QUERIES, *Q0]
    # new = {q0, q2}: NDCG@3 = (0.919721 + 0) / 2; repeat = {q1}: 0.296082 (q3 not scored)
    assert out[N_QUERIES].tolist() == [2, 1]
    assert out.loc["new", "ndcg_at_3"] == pytest.approx(0.919721 / 2, abs=1e-6)
    assert out.loc["repeat", "ndcg_at_3"] == pytest.approx(0.296082, abs=1e-6)
    assert out.loc["new", "mrr"] == pytest.approx(0.5)
    assert out.loc["repeat"].drop(N_QUERIES).to_dict() == pytest.approx(Q1)


def test_sliced_keeps_queries_without_segment() -> None:
    segment = pd.Series(["new"], index=[0], name="customer")  # q1, q2 have no segment
    out = sliced(_frame(), segment)
    assert out[N_QUERIES].sum() == 3
    assert out.loc["new", N_QUERIES] == 1


# --- properties -----------------------------------------------------------------------------


def _reference(
    rows: list[list[tuple[float, int]]], n_positives: list[int], k: int
) -> dict[int, dict[str, float]]:
    """Straightforward per-query loop, the definition the vectorised code must match."""
    out = {}
    for qid, (cands, n_pos) in enumerate(zip(rows, n_positives, strict=True)):
        if n_pos == 0:
            continue
        ranked = [y for _, y in sorted(cands, key=lambda c: -c[0])]  # stable: ties by row order
        top = ranked[:k]
        dcg = sum(y / math.log2(r + 2) for r, y in enumerate(top))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(n_pos, k)))
        ap = sum(sum(top[: r + 1]) / (r + 1) for r, y in enumerate(top) if y) / min(n_pos, k)
        first = next((r + 1 for r, y in enumerate(ranked) if y), None)
        out[qid] = {
            f"ndcg_at_{k}": dcg / idcg,
            f"map_at_{k}": ap,
            f"recall_at_{k}": sum(top) / n_pos,
            f"hit_rate_at_{k}": float(any(top)),
            "mrr": 1 / first if first else 0.0,
        }
    return out


_candidates = st.lists(
    st.tuples(st.integers(0, 3).map(float), st.integers(0, 1)),  # few score values: many ties
    max_size=8,
)
_shops = st.lists(st.tuples(_candidates, st.integers(0, 2)), min_size=1, max_size=6)


def _flatten(
    shop: list[tuple[list[tuple[float, int]], int]], *, perfect: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    query = np.array([q for q, (c, _) in enumerate(shop) for _ in c], dtype=np.int64)
    score = np.array([s for c, _ in shop for s, _ in c], dtype=np.float64)
    label = np.array([y for c, _ in shop for _, y in c], dtype=np.int64)
    n_found = np.array([sum(y for _, y in c) for c, _ in shop], dtype=np.int64)
    missed = np.array([m for _, m in shop], dtype=np.int64)
    if perfect:
        score = label.astype(np.float64)
        missed = np.zeros_like(missed)
    return query, score, label, n_found + missed


@settings(database=None, deadline=None, max_examples=150)
@given(shop=_shops, k=st.integers(1, 10), data=st.data())
def test_matches_reference_and_is_bounded(
    shop: list[tuple[list[tuple[float, int]], int]], k: int, data: st.DataObject
) -> None:
    query, score, label, n_positives = _flatten(shop)
    frame = per_query_metrics(query, score, label, n_positives, ks=(k,))
    values = frame.to_numpy()
    assert ((values >= 0) & (values <= 1 + 1e-12)).all()
    expected = _reference([c for c, _ in shop], n_positives.tolist(), k)
    assert list(frame.index) == list(expected)
    for qid, metrics in expected.items():
        assert frame.loc[qid].to_dict() == pytest.approx(metrics)
    # Any interleaving of the queries' rows that keeps each query's own row order (hence its
    # tie-breaking) gives the same frame.
    slots_of = np.array(data.draw(st.permutations(query.tolist())), dtype=np.int64)
    source = np.empty(len(query), dtype=np.int64)
    source[np.argsort(slots_of, kind="stable")] = np.argsort(query, kind="stable")
    shuffled = per_query_metrics(query[source], score[source], label[source], n_positives, ks=(k,))
    pd.testing.assert_frame_equal(shuffled, frame)


@settings(database=None, deadline=None)
@given(shop=_shops, k=st.integers(1, 10))
def test_perfect_ranking_scores_one(
    shop: list[tuple[list[tuple[float, int]], int]], k: int
) -> None:
    query, score, label, n_positives = _flatten(shop, perfect=True)
    frame = per_query_metrics(query, score, label, n_positives, ks=(k,))
    assert frame[f"ndcg_at_{k}"].to_numpy() == pytest.approx(1.0)
    assert frame[f"map_at_{k}"].to_numpy() == pytest.approx(1.0)
    assert frame["mrr"].to_numpy() == pytest.approx(1.0)
    if not frame.empty:
        assert ndcg_at_k(query, score, label, n_positives, k) == pytest.approx(1.0)
