"""Candidate generation (``features/candidates.py``, ``features/sources.py``): planted complements
and upgrades show up, cross-sell eligibility, candidate recall bookkeeping, unknown ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from feature_shop import (
    CONFIG,
    CUTOFF,
    UNKNOWN_CUSTOMER,
    WINDOW,
    anonymous_query,
    col,
    context_sets,
    most_popular_in,
    owned_before,
    product_category,
)

from features import candidates
from features.batch import (
    ANCHOR,
    AS_OF,
    CART,
    PLACEMENT,
    QUERY_ID,
    batch_from_frame,
    single_query,
)
from features.candidates import (
    candidate_sets,
    collect_candidates,
    merge_candidates,
)
from features.data import schema as s
from features.data.io import Shop
from features.matrix import build_features
from features.pipeline import build_task_set, build_task_sets
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot
from features.sources import candidates_from_cooc, source_names
from features.tasks import task_names

# ------------------------------------------------------------------------------------------
# 4. Planted truth: complements and upgrades
# ------------------------------------------------------------------------------------------


def test_cross_sell_candidates_contain_planted_complements(
    snap: FeatureSnapshot, complements: pd.DataFrame
) -> None:
    category = product_category(snap)
    strong = complements.loc[complements["strength"] >= 0.3]
    for source, rel in strong.groupby(s.CATEGORY):
        batch = anonymous_query(snap, s.CROSS_SELL, most_popular_in(snap, source))
        found = set(category[collect_candidates(batch, snap).product])
        missing = set(rel["complement_category"]) - found
        assert not missing, f"{source}: no candidate of complement(s) {missing}"


def test_complement_categories_are_overrepresented_in_candidates(
    snap: FeatureSnapshot, complements: pd.DataFrame, window_queries: dict[str, LabelledQueries]
) -> None:
    category = product_category(snap)
    comp_of = complements.groupby(s.CATEGORY)["complement_category"].agg(set).to_dict()
    batch = batch_from_frame(window_queries[s.CROSS_SELL].queries, snap, task=s.CROSS_SELL)
    cands = collect_candidates(batch, snap)
    hits = expected = total = 0.0
    for i, ctx in enumerate(context_sets(batch)):
        ctx_cats = set(category[list(ctx)])
        targets = set().union(*(comp_of.get(c, set()) for c in ctx_cats)) - ctx_cats
        if not targets:
            continue
        mine = category[cands.product[cands.query == i]]
        hits += np.isin(mine, list(targets)).sum()
        expected += np.isin(category, list(targets)).mean() * len(mine)
        total += len(mine)
    assert total > 1000
    assert hits / total > 2 * expected / total, (hits / total, expected / total)


def test_cooc_ranks_complements_first(snap: FeatureSnapshot, complements: pd.DataFrame) -> None:
    category = product_category(snap)
    for source, rel in complements.loc[complements["strength"] >= 0.4].groupby(s.CATEGORY):
        cooc = candidates_from_cooc(
            anonymous_query(snap, s.CROSS_SELL, most_popular_in(snap, source)), snap
        )
        top10 = category[cooc.product[np.argsort(-cooc.score, kind="stable")[:10]]]
        assert set(top10) & set(rel["complement_category"]), (source, list(top10))
        if source == "phone":
            assert "phone_case" in set(top10)


@pytest.mark.parametrize("uplift", [0.1, CONFIG.upsell_max_uplift])
def test_upsell_candidates_are_pricier_versions_within_the_cap(
    shop: Shop, snap: FeatureSnapshot, uplift: float
) -> None:
    cfg = CONFIG.model_copy(update={"upsell_max_uplift": uplift})
    snapshot = (
        snap
        if uplift == CONFIG.upsell_max_uplift
        else build_snapshot(shop, as_of=CUTOFF, config=cfg)
    )
    # Every product as the anchor of an anonymous query (nobody owns anything).
    anchors = pd.DataFrame(
        {
            QUERY_ID: [f"a{i}" for i in range(snapshot.n_products)],
            s.CUSTOMER_ID: UNKNOWN_CUSTOMER,
            PLACEMENT: "product_page",
            ANCHOR: snapshot.product_ids,
            CART: [[] for _ in range(snapshot.n_products)],
            AS_OF: CUTOFF,
        }
    )
    batch = batch_from_frame(anchors, snapshot, task=s.UPSELL)
    cands = collect_candidates(batch, snapshot)
    assert len(cands) > 0
    price, family = snapshot.products.price, snapshot.products.family
    a = batch.anchor[cands.query]
    p = cands.product
    assert np.all(family[p] == family[a])
    assert np.all(price[p] > price[a])
    assert np.all(price[p] <= (1 + uplift) * price[a])
    # ... and every such version is a candidate (families are far below the candidate limit).
    expected = {
        (i, j)
        for i in range(snapshot.n_products)
        for j in np.flatnonzero(
            (family == family[i]) & (price > price[i]) & (price <= (1 + uplift) * price[i])
        ).tolist()
    }
    assert set(zip(cands.query.tolist(), p.tolist(), strict=True)) == expected


# ------------------------------------------------------------------------------------------
# 5. Cross-sell eligibility
# ------------------------------------------------------------------------------------------


def test_cross_sell_candidates_respect_eligibility(
    shop: Shop, snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries]
) -> None:
    queries = window_queries[s.CROSS_SELL].queries
    batch = batch_from_frame(queries, snap, task=s.CROSS_SELL)
    cands = collect_candidates(batch, snap)
    owned = owned_before(shop, CUTOFF)
    family = snap.products.family
    consumable = snap.products.is_consumable
    contexts = context_sets(batch)
    customers = queries[s.CUSTOMER_ID].to_numpy()

    def owns(q: int, p: int) -> bool:
        return (customers[q], snap.product_ids[p]) in owned

    for q, p in zip(cands.query.tolist(), cands.product.tolist(), strict=True):
        assert p not in contexts[q]
        assert family[p] not in {family[c] for c in contexts[q]}
        assert not owns(q, p), f"{snap.product_ids[p]} was bought before by {customers[q]}"

    # The raw sources do propose ineligible products, so the filter is exercised.
    raw = [
        (int(q), int(p))
        for cs in candidate_sets(batch, snap)
        for q, p in zip(cs.query, cs.product, strict=True)
    ]
    assert any(family[p] in {family[c] for c in contexts[q]} for q, p in raw)
    assert any(owns(q, p) for q, p in raw)
    assert consumable.any()


@pytest.mark.parametrize("task", task_names())
def test_eligibility_on_the_reach_first_gives_the_whole_merge(
    snap: FeatureSnapshot,
    window_queries: dict[str, LabelledQueries],
    task: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking the rules on each source's top ``REACH * per_source`` first (and on the rest
    of a group only where too few pass) merges exactly what checking every row does; a reach
    of one candidate makes most groups fall back, a huge one cuts nothing."""
    batch = batch_from_frame(window_queries[task].queries, snap, task=task)
    sets = candidate_sets(batch, snap)

    def merged(reach: int, per_source: int) -> tuple[np.ndarray, ...]:
        monkeypatch.setattr(candidates, "REACH", reach)
        c = merge_candidates(batch, snap, sets, per_source=per_source, budget=40)
        return c.query, c.product, c.scores, c.ranks

    for per_source in (1, 3, 20):
        whole = merged(10**9, per_source)
        assert len(whole[0]) > 0
        for reach in (1, 2):
            for got, want in zip(merged(reach, per_source), whole, strict=True):
                np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------
# 6. Candidate recall
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", task_names())
def test_candidate_recall_bookkeeping(
    shop: Shop, snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], task: str
) -> None:
    ts = build_task_set(
        shop,
        task=task,
        start=CUTOFF,
        end=CUTOFF + WINDOW,
        config=CONFIG,
        step_days=WINDOW.days,
        snapshots={CUTOFF: snap},
    )
    recall = ts.candidate_recall()
    assert set(recall) == {"merged", *source_names(task)}
    assert 0 < recall["merged"] <= 1
    for name in source_names(task):
        assert 0 <= recall[name] <= recall["merged"], name
    assert int(ts.label.sum()) == int(ts.queries["n_found"].sum())
    assert np.all(ts.queries["n_found"] <= ts.queries["n_positives"])
    labels = window_queries[task].labels
    assert int(ts.queries["n_positives"].sum()) == len(labels)
    assert set(ts.queries[QUERY_ID]) == set(window_queries[task].queries[QUERY_ID])
    assert set(ts.query_id) <= set(ts.queries[QUERY_ID])


def test_parallel_cutoffs_build_the_same_sets(shop: Shop) -> None:
    """Cut-offs built in two worker processes give exactly the sets of one process (each
    cut-off samples its queries with its own seed, whichever process runs it)."""
    kwargs = dict(
        tasks=task_names(),
        start=CUTOFF - WINDOW,
        end=CUTOFF + WINDOW,
        config=CONFIG,
        step_days=WINDOW.days,
        max_queries_per_cutoff=40,
        seed=3,
    )
    one = build_task_sets(shop, workers=1, **kwargs)  # type: ignore[arg-type]
    two = build_task_sets(shop, workers=2, **kwargs)  # type: ignore[arg-type]
    assert set(one) == set(two) == set(task_names())
    for task, ts in one.items():
        other = two[task]
        assert len(ts.queries) > 40  # two cut-offs, each sampled to 40 queries
        np.testing.assert_array_equal(ts.X, other.X)
        np.testing.assert_array_equal(ts.query_id, other.query_id)
        np.testing.assert_array_equal(ts.product_id, other.product_id)
        np.testing.assert_array_equal(ts.label, other.label)
        pd.testing.assert_frame_equal(ts.queries, other.queries)


# ------------------------------------------------------------------------------------------
# 7. Unknown customers and unknown products
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", [True, False])
def test_unknown_customer_gets_popular_candidates(snap: FeatureSnapshot, anchor: bool) -> None:
    batch = single_query(
        snap,
        task=s.CROSS_SELL,
        customer_id=UNKNOWN_CUSTOMER,
        placement="product_page" if anchor else "cart",
        anchor_product_id=most_popular_in(snap, "phone") if anchor else None,
        cart_product_ids=[],
        as_of=snap.as_of + 0.5,
    )
    assert batch.customer[0] == -1
    fm = build_features(batch, snap)
    assert len(fm) > 0
    assert np.all(col(fm, "cust_known") == 0)
    popular = ~np.isnan(col(fm, "src_segment_popular_rank"))
    assert popular.any()
    global_top = set(snap.top.global_top.tolist())
    assert set(fm.product[popular].tolist()) <= global_top


def test_unknown_product_ids_are_reported(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries]
) -> None:
    rows = window_queries[s.CROSS_SELL].queries.head(3).copy()
    known = rows[CART].iloc[0][0]
    rows[CART] = [[known, "P-nope"], [], ["P-gone", "P-nope"]]
    rows[ANCHOR] = [None, "P-anchor-gone", None]
    batch = batch_from_frame(rows, snap, task=s.CROSS_SELL)
    assert batch.unknown_products == [["P-nope"], ["P-anchor-gone"], ["P-gone", "P-nope"]]
    assert context_sets(batch) == [{snap.product_index[known]}, set(), set()]
    assert batch.anchor[1] == -1
    fm = build_features(batch, snap)
    assert set(fm.query.tolist()) == {0, 1, 2}

    one = single_query(
        snap,
        task=s.UPSELL,
        customer_id=rows[s.CUSTOMER_ID].iloc[0],
        placement="product_page",
        anchor_product_id="P-anchor-gone",
        cart_product_ids=[known, "P-nope"],
        as_of=snap.as_of,
    )
    assert one.unknown_products == [["P-anchor-gone", "P-nope"]]
    assert one.anchor[0] == -1
    assert len(build_features(one, snap)) == 0  # no anchor, no upsell
