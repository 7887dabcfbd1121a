"""Tests of the feature pipeline on one small synthetic shop.

One shop (800 customers, seed 3) is generated per module, and one snapshot at ``CUTOFF`` serves
most tests. They check that the batch (training) path and the one-query (serving) path agree,
that no feature reads a row at or after the query time, that a saved snapshot reloads
unchanged, that the planted complements and upgrades show up in the candidates, the candidate
eligibility rules, candidate recall bookkeeping, unknown ids and shops without events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.batch import (
    ANCHOR,
    AS_OF,
    CART,
    PLACEMENT,
    QUERY_ID,
    TASK,
    QueryBatch,
    batch_from_frame,
    single_query,
)
from features.candidates import (
    candidate_sets,
    check_point_in_time,
    collect_candidates,
)
from features.config import FeatureConfig
from features.data import schema as s
from features.data.io import Shop, load_shop
from features.data.synthetic import TRUTH_COMPLEMENTS, TRUTH_DIR, generate_shop
from features.matrix import FeatureMatrix, build_features, feature_columns
from features.pipeline import build_task_set
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot, to_days
from features.sources import candidates_from_cooc, source_names
from features.tasks import get_task, task_names

N_CUSTOMERS = 800
SEED = 3
CUTOFF = pd.Timestamp("2025-09-01")
WINDOW = pd.Timedelta(days=14)
CONFIG = FeatureConfig()
SAMPLE_QUERIES = 30
UNKNOWN_CUSTOMER = "C-never-seen"
LEAK = "LEAK"


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated shop folder (tables plus ``truth/``)."""
    folder = tmp_path_factory.mktemp("synthetic")
    generate_shop(folder, n_customers=N_CUSTOMERS, seed=SEED)
    return folder


@pytest.fixture(scope="module")
def shop(shop_dir: Path) -> Shop:
    """The generated shop, loaded and validated."""
    return load_shop(shop_dir)


@pytest.fixture(scope="module")
def complements(shop_dir: Path) -> pd.DataFrame:
    """Planted complement relations: ``category, complement_category, strength, ...``."""
    return pd.read_parquet(shop_dir / TRUTH_DIR / f"{TRUTH_COMPLEMENTS}.parquet")


@pytest.fixture(scope="module")
def snap(shop: Shop) -> FeatureSnapshot:
    """The snapshot at ``CUTOFF``."""
    return build_snapshot(shop, as_of=CUTOFF, config=CONFIG)


@pytest.fixture(scope="module")
def window_queries(shop: Shop) -> dict[str, LabelledQueries]:
    """Labelled queries of each task with ``as_of`` in ``[CUTOFF, CUTOFF + WINDOW)``."""
    return {
        task: get_task(task).training_queries(
            shop, start=CUTOFF, end=CUTOFF + WINDOW, config=CONFIG
        )
        for task in task_names()
    }


def _single(snapshot: FeatureSnapshot, row: pd.Series, task: str) -> QueryBatch:
    """The serving-path batch of one query-frame row (``as_of`` as float days)."""
    anchor = row[ANCHOR]
    return single_query(
        snapshot,
        task=task,
        customer_id=row[s.CUSTOMER_ID],
        placement=row[PLACEMENT],
        anchor_product_id=anchor if isinstance(anchor, str) else None,
        cart_product_ids=list(row[CART]),
        as_of=float(to_days(pd.Timestamp(row[AS_OF]))),
        query_id=row[QUERY_ID],
    )


def _rows_of(fm: FeatureMatrix, query: int) -> dict[str, np.ndarray]:
    """The rows of one query of a feature matrix (products, features, reasons)."""
    m = fm.query == query
    return {
        "product": fm.product[m],
        "X": fm.X[m],
        "best_source": fm.best_source[m],
        "reason_product": fm.reason_product[m],
    }


def _assert_same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same products in the same order and bit-identical features (NaN equal to NaN)."""
    np.testing.assert_array_equal(a["product"], b["product"])
    for key in ("X", "best_source", "reason_product"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _col(fm: FeatureMatrix, name: str) -> np.ndarray:
    return fm.X[:, fm.columns.index(name)]


def _product_category(snapshot: FeatureSnapshot) -> np.ndarray:
    """Category name per product position."""
    return np.asarray(snapshot.category_levels, dtype=object)[snapshot.products.category]


def _most_popular_in(snapshot: FeatureSnapshot, category: str) -> str:
    """Id of the category's best-selling product over the longest popularity window."""
    pop = snapshot.products.long_popularity
    members = np.flatnonzero(_product_category(snapshot) == category)
    return str(snapshot.product_ids[members[np.argmax(pop[members])]])


def _anonymous_query(snapshot: FeatureSnapshot, task: str, anchor: str) -> QueryBatch:
    """A product-page query of an unknown customer at the snapshot's cut-off."""
    return single_query(
        snapshot,
        task=task,
        customer_id=UNKNOWN_CUSTOMER,
        placement="product_page",
        anchor_product_id=anchor,
        cart_product_ids=[],
        as_of=snapshot.as_of,
    )


def _owned_before(shop: Shop, as_of: pd.Timestamp) -> set[tuple[str, str]]:
    """(customer, product) pairs with positive net quantity from purchases before ``as_of``."""
    pur = shop.purchases.loc[shop.purchases[s.TS] < as_of]
    net = pur.groupby([s.CUSTOMER_ID, s.PRODUCT_ID])[s.QUANTITY].sum()
    return set(net.index[net.to_numpy() > 0])


def _context_sets(batch: QueryBatch) -> list[set[int]]:
    return [
        set(batch.context[batch.context_ptr[i] : batch.context_ptr[i + 1]].tolist())
        for i in range(len(batch))
    ]


# ------------------------------------------------------------------------------------------
# 1. The batch path and the one-query path are the same computation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", task_names())
def test_batch_features_equal_one_query_features(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], task: str
) -> None:
    queries = window_queries[task].queries
    assert len(queries) >= SAMPLE_QUERIES
    batch = batch_from_frame(queries, snap, task=task)
    fm = build_features(batch, snap)
    assert fm.columns == feature_columns(snap, task)
    assert np.all(np.diff(fm.query) >= 0), "rows must be grouped by query"

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(queries), SAMPLE_QUERIES, replace=False))
    n_rows = 0
    for i in sample:
        one = build_features(_single(snap, queries.iloc[i], task), snap)
        assert np.all(one.query == 0)
        _assert_same_rows(_rows_of(fm, int(i)), _rows_of(one, 0))
        n_rows += len(one)
    assert n_rows > 0


# ------------------------------------------------------------------------------------------
# 2. Point in time: rows at or after as_of never reach a query's features
# ------------------------------------------------------------------------------------------


def _leak_query(snap: FeatureSnapshot, queries: pd.DataFrame, task: str) -> pd.Series:
    """A query of a customer with history whose candidate list is not empty."""
    batch = batch_from_frame(queries, snap, task=task)
    cands = collect_candidates(batch, snap)
    has = np.bincount(cands.query, minlength=len(batch)) > 0
    history = np.where(batch.customer >= 0, snap.customers.n_orders[batch.customer], 0) > 0
    i = int(np.flatnonzero(has & history)[0])
    return queries.iloc[i]


def _injected(
    shop: Shop, query: pd.Series, products: list[str], times: Iterable[pd.Timestamp]
) -> Shop:
    """``shop`` plus, at each time: an order of the query's customer holding ``products``, the
    same order by another customer, and the customer's views and add-to-carts of them.

    Tables are re-sorted as ``load_shop`` sorts them (stable, so original rows keep their order).
    """
    customer = query[s.CUSTOMER_ID]
    other = next(c for c in shop.customers[s.CUSTOMER_ID] if c != customer)
    price = shop.products.set_index(s.PRODUCT_ID)[s.PRICE]
    lines, events = [], []
    for k, ts in enumerate(times):
        for who in (customer, other):
            order = f"{LEAK}-{k}-{who}"
            for pid in products:
                lines.append((order, who, pid, ts, float(price[pid]), 1.0))
        for pid in products:
            for event_type in (s.VIEW, s.ADD_TO_CART):
                events.append((customer, pid, ts, event_type, f"{LEAK}-S{k}"))
    purchases = pd.concat(
        [
            shop.purchases,
            pd.DataFrame(
                lines,
                columns=[s.ORDER_ID, s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.UNIT_PRICE, s.QUANTITY],
            ).astype(shop.purchases.dtypes.to_dict()),
        ],
        ignore_index=True,
    ).sort_values([s.TS, s.ORDER_ID, s.PRODUCT_ID], kind="stable", ignore_index=True)
    assert shop.events is not None
    new_events = pd.DataFrame(
        events, columns=[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.EVENT_TYPE, s.SESSION_ID]
    ).astype(shop.events.dtypes.to_dict())
    all_events = pd.concat([shop.events, new_events], ignore_index=True).sort_values(
        [s.TS, s.CUSTOMER_ID], kind="stable", ignore_index=True
    )
    return dataclasses.replace(shop, purchases=purchases, events=all_events)


def _features_at(
    shop: Shop, query: pd.Series, task: str, cutoff: pd.Timestamp
) -> tuple[FeatureSnapshot, FeatureMatrix]:
    """A fresh snapshot of ``shop`` at ``cutoff`` and the one query's features against it."""
    snapshot = build_snapshot(shop, as_of=cutoff, config=CONFIG)
    batch = _single(snapshot, query, task)
    return snapshot, build_features(batch, snapshot)


@pytest.mark.parametrize("task", task_names())
def test_rows_at_or_after_as_of_never_change_features(
    shop: Shop, snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], task: str
) -> None:
    query = _leak_query(snap, window_queries[task].queries, task)
    t = pd.Timestamp(query[AS_OF])
    base_snap, base = _features_at(shop, query, task, cutoff=t)
    assert len(base) > 0
    # Products that move features: the top candidate, another version of its family, the
    # context (a new order "context + candidate" changes co-occurrence and ownership).
    top = int(base.product[0])
    family = base_snap.products.family
    sibling = next(j for j in np.flatnonzero(family == family[top]) if j != top)
    context = [p for p in [query[ANCHOR], *query[CART]] if isinstance(p, str)]
    injected = [*context, str(base_snap.product_ids[top]), str(base_snap.product_ids[sibling])]
    injected = list(dict.fromkeys(injected))

    # At exactly as_of and later: nothing changes, candidates included.
    later = _injected(
        shop, query, injected, [t, t + pd.Timedelta(hours=1), t + pd.Timedelta(days=3)]
    )
    _, after = _features_at(later, query, task, cutoff=t)
    _assert_same_rows(_rows_of(base, 0), _rows_of(after, 0))

    # The guard catches a snapshot that has seen those rows: one cut a day later.
    late_snap = build_snapshot(later, as_of=t + pd.Timedelta(days=1), config=CONFIG)
    customer = late_snap.customer_index[query[s.CUSTOMER_ID]]
    assert (
        late_snap.history.owned.get(np.array([customer]), np.array([sibling]))[0]
        > (base_snap.history.owned.get(np.array([customer]), np.array([sibling]))[0])
    ), "the late snapshot must see the injected purchases"
    late_batch = _single(late_snap, query, task)
    with pytest.raises(ValueError, match="before the snapshot cut-off"):
        check_point_in_time(late_batch, late_snap)
    with pytest.raises(ValueError, match="before the snapshot cut-off"):
        build_features(late_batch, late_snap)

    # Sanity: the same rows just before as_of do change the features.
    earlier = _injected(shop, query, injected, [t - pd.Timedelta(hours=2)])
    _, before = _features_at(earlier, query, task, cutoff=t)
    freq_base = _col(base, "cust_frequency")[0]
    assert np.all(_col(before, "cust_frequency") == freq_base + 1)
    changed = len(before) != len(base) or not (
        np.array_equal(before.product, base.product)
        and np.array_equal(before.X, base.X, equal_nan=True)
    )
    assert changed


# ------------------------------------------------------------------------------------------
# 3. Snapshot save -> load
# ------------------------------------------------------------------------------------------


def test_snapshot_save_load_gives_identical_features(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], tmp_path: Path
) -> None:
    loaded = FeatureSnapshot.load(snap.save(tmp_path / "snapshot"))
    assert loaded.as_of == snap.as_of
    assert loaded.config == snap.config
    assert loaded.category_levels == snap.category_levels
    assert loaded.persona_levels == snap.persona_levels
    for part in FeatureSnapshot.PARTS:
        assert type(getattr(loaded, part)) is type(getattr(snap, part))
    for w, share in snap.products.popularity.items():
        np.testing.assert_array_equal(loaded.products.popularity[w], share)
    assert (loaded.pairs.cooc.matrix != snap.pairs.cooc.matrix).nnz == 0
    for task in task_names():
        queries = window_queries[task].queries
        fm = build_features(batch_from_frame(queries, snap, task=task), snap)
        fm2 = build_features(batch_from_frame(queries, loaded, task=task), loaded)
        assert len(fm) > 0
        assert fm2.columns == fm.columns
        np.testing.assert_array_equal(fm2.query, fm.query)
        np.testing.assert_array_equal(fm2.product, fm.product)
        np.testing.assert_array_equal(fm2.X, fm.X)
        np.testing.assert_array_equal(fm2.best_source, fm.best_source)
        np.testing.assert_array_equal(fm2.reason_product, fm.reason_product)


def test_snapshot_load_rejects_another_version(snap: FeatureSnapshot, tmp_path: Path) -> None:
    folder = snap.save(tmp_path / "snapshot")
    meta = (folder / "meta.json").read_text().replace('"version": 2', '"version": 99')
    (folder / "meta.json").write_text(meta)
    with pytest.raises(ValueError, match="version"):
        FeatureSnapshot.load(folder)


# ------------------------------------------------------------------------------------------
# 4. Planted truth: complements and upgrades
# ------------------------------------------------------------------------------------------


def test_cross_sell_candidates_contain_planted_complements(
    snap: FeatureSnapshot, complements: pd.DataFrame
) -> None:
    category = _product_category(snap)
    strong = complements.loc[complements["strength"] >= 0.3]
    for source, rel in strong.groupby(s.CATEGORY):
        batch = _anonymous_query(snap, s.CROSS_SELL, _most_popular_in(snap, source))
        found = set(category[collect_candidates(batch, snap).product])
        missing = set(rel["complement_category"]) - found
        assert not missing, f"{source}: no candidate of complement(s) {missing}"


def test_complement_categories_are_overrepresented_in_candidates(
    snap: FeatureSnapshot, complements: pd.DataFrame, window_queries: dict[str, LabelledQueries]
) -> None:
    category = _product_category(snap)
    comp_of = complements.groupby(s.CATEGORY)["complement_category"].agg(set).to_dict()
    batch = batch_from_frame(window_queries[s.CROSS_SELL].queries, snap, task=s.CROSS_SELL)
    cands = collect_candidates(batch, snap)
    hits = expected = total = 0.0
    for i, ctx in enumerate(_context_sets(batch)):
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
    category = _product_category(snap)
    for source, rel in complements.loc[complements["strength"] >= 0.4].groupby(s.CATEGORY):
        cooc = candidates_from_cooc(
            _anonymous_query(snap, s.CROSS_SELL, _most_popular_in(snap, source)), snap
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
    owned = _owned_before(shop, CUTOFF)
    family = snap.products.family
    consumable = snap.products.is_consumable
    contexts = _context_sets(batch)
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
        anchor_product_id=_most_popular_in(snap, "phone") if anchor else None,
        cart_product_ids=[],
        as_of=snap.as_of + 0.5,
    )
    assert batch.customer[0] == -1
    fm = build_features(batch, snap)
    assert len(fm) > 0
    assert np.all(_col(fm, "cust_known") == 0)
    popular = ~np.isnan(_col(fm, "src_segment_popular_rank"))
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
    assert _context_sets(batch) == [{snap.product_index[known]}, set(), set()]
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


# ------------------------------------------------------------------------------------------
# 8. A shop without events
# ------------------------------------------------------------------------------------------


def test_shop_without_events(shop: Shop) -> None:
    no_events = dataclasses.replace(shop, events=None)
    snapshot = build_snapshot(no_events, as_of=CUTOFF, config=CONFIG)
    browse = snapshot.browsing
    for table in (browse.views_7, browse.views_30, browse.carts_7, browse.carts_30):
        assert table.matrix.nnz == 0
    assert browse.last_session.matrix.nnz == browse.family_views_30.matrix.nnz == 0
    for table in (snapshot.pairs.coview, snapshot.pairs.cocart, snapshot.pairs.viewed_bought):
        assert table.matrix.nnz == 0

    event_sources = {
        s.CROSS_SELL: ("coview", "cocart"),
        s.UPSELL: ("viewed_version", "viewed_then_bought"),
    }
    for task in task_names():
        lq = get_task(task).training_queries(
            no_events, start=CUTOFF, end=CUTOFF + WINDOW, config=CONFIG
        )
        assert len(lq.queries) > 0
        assert set(lq.queries[TASK]) == {task}
        fm = build_features(batch_from_frame(lq.queries, snapshot, task=task), snapshot)
        assert len(fm) > 0
        assert fm.columns == feature_columns(snapshot, task)
        for name in event_sources.get(task, ()):
            assert np.all(np.isnan(_col(fm, f"src_{name}_rank"))), name
        for name in ("cust_views_7", "cust_views_30", "cust_carts_30", "cust_last_session"):
            assert np.all(_col(fm, name) == 0), name

    # Upsell queries come from purchases: each anchor was bought by the customer at as_of.
    up = get_task(s.UPSELL).training_queries(
        no_events, start=CUTOFF, end=CUTOFF + WINDOW, config=CONFIG
    )
    bought = shop.purchases.loc[shop.purchases[s.QUANTITY] > 0]
    matched = up.queries.merge(
        bought[[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS]].drop_duplicates(),
        left_on=[s.CUSTOMER_ID, ANCHOR, AS_OF],
        right_on=[s.CUSTOMER_ID, s.PRODUCT_ID, s.TS],
        how="left",
    )
    assert matched[s.TS].notna().all()
