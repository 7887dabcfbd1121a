"""The feature snapshot (``features/snapshot.py``): save -> load gives identical features, another
format version is refused, a shop without events."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from feature_shop import (
    CONFIG,
    CUTOFF,
    WINDOW,
    col,
)

from features.batch import (
    ANCHOR,
    AS_OF,
    TASK,
    batch_from_frame,
)
from features.data import schema as s
from features.data.io import Shop
from features.matrix import build_features, feature_columns
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot
from features.tasks import get_task, task_names

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
            assert np.all(np.isnan(col(fm, f"src_{name}_rank"))), name
        for name in ("cust_views_7", "cust_views_30", "cust_carts_30", "cust_last_session"):
            assert np.all(col(fm, name) == 0), name

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
