"""Feature matrices (``features/matrix.py``, ``features/batch.py``): the batch (training) path and
the one-query (serving) path are the same computation, and no feature reads a row at or after
the query time."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
from feature_shop import (
    CONFIG,
    LEAK,
    SAMPLE_QUERIES,
    assert_same_rows,
    col,
    rows_of,
    single_batch,
)

from features.batch import (
    ANCHOR,
    AS_OF,
    CART,
    batch_from_frame,
)
from features.candidates import (
    check_point_in_time,
    collect_candidates,
)
from features.data import schema as s
from features.data.io import Shop
from features.matrix import FeatureMatrix, build_features, feature_columns
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot
from features.tasks import task_names

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
        one = build_features(single_batch(snap, queries.iloc[i], task), snap)
        assert np.all(one.query == 0)
        assert_same_rows(rows_of(fm, int(i)), rows_of(one, 0))
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
    batch = single_batch(snapshot, query, task)
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
    assert_same_rows(rows_of(base, 0), rows_of(after, 0))

    # The guard catches a snapshot that has seen those rows: one cut a day later.
    late_snap = build_snapshot(later, as_of=t + pd.Timedelta(days=1), config=CONFIG)
    customer = late_snap.customer_index[query[s.CUSTOMER_ID]]
    assert (
        late_snap.history.owned.get(np.array([customer]), np.array([sibling]))[0]
        > (base_snap.history.owned.get(np.array([customer]), np.array([sibling]))[0])
    ), "the late snapshot must see the injected purchases"
    late_batch = single_batch(late_snap, query, task)
    with pytest.raises(ValueError, match="before the snapshot cut-off"):
        check_point_in_time(late_batch, late_snap)
    with pytest.raises(ValueError, match="before the snapshot cut-off"):
        build_features(late_batch, late_snap)

    # Sanity: the same rows just before as_of do change the features.
    earlier = _injected(shop, query, injected, [t - pd.Timedelta(hours=2)])
    _, before = _features_at(earlier, query, task, cutoff=t)
    freq_base = col(base, "cust_frequency")[0]
    assert np.all(col(before, "cust_frequency") == freq_base + 1)
    changed = len(before) != len(base) or not (
        np.array_equal(before.product, base.product)
        and np.array_equal(before.X, base.X, equal_nan=True)
    )
    assert changed
