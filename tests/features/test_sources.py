"""Every candidate source honours the one contract, on the session's synthetic shop.

Contract: ``(query_id, product_id, source, source_score)`` as aligned arrays, grouped by query,
each (query, product) at most once, positive finite scores, known queries and products. The
sources of another kind than item co-occurrence (latent factors, customer neighbours, family
associations) must propose something, with a cut-off at or before every query.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.batch import batch_from_frame
from features.candidates import CANDIDATE_COLUMNS, candidate_sets
from features.data import schema as s
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot, build_snapshot
from features.sources import SOURCES, source_names
from features.tasks import task_names

NEW_KINDS = ("latent_context", "latent_customer", "neighbours", "family_assoc")


@pytest.mark.parametrize("task", task_names())
def test_every_source_honours_the_contract(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], task: str
) -> None:
    queries = window_queries[task].queries
    batch = batch_from_frame(queries, snap, task=task)
    sets = candidate_sets(batch, snap)
    assert [cs.source for cs in sets] == list(source_names(task))
    for cs in sets:
        n = len(cs.query)
        assert len(cs.product) == n and len(cs.score) == n, cs.source
        assert np.all(np.diff(cs.query) >= 0), f"{cs.source}: rows not grouped by query"
        assert np.all((cs.query >= 0) & (cs.query < len(batch))), cs.source
        assert np.all((cs.product >= 0) & (cs.product < snap.n_products)), cs.source
        assert np.all(np.isfinite(cs.score) & (cs.score > 0)), cs.source
        key = cs.query * snap.n_products + cs.product
        assert len(np.unique(key)) == n, f"{cs.source}: a (query, product) pair twice"
        frame = cs.to_frame(batch, snap)
        assert tuple(frame.columns) == CANDIDATE_COLUMNS
        assert set(frame["source"]) <= {cs.source}


def test_sources_of_other_kinds_propose_candidates(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries]
) -> None:
    queries = window_queries[s.CROSS_SELL].queries
    batch = batch_from_frame(queries, snap, task=s.CROSS_SELL)
    sets = {cs.source: cs for cs in candidate_sets(batch, snap)}
    for name in NEW_KINDS:
        cs = sets[name]
        assert len(cs.query) > 0, name
        assert len(np.unique(cs.query)) > len(batch) // 2, f"{name} proposes for few queries"
        assert SOURCES[name].reason.strip()
    # the latent vectors are unit vectors; neighbours never include the customer itself
    norms = np.linalg.norm(snap.latent.item[snap.latent.active], axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    assert snap.latent.item.shape[1] >= 2


def test_latent_factors_change_only_with_earlier_data(shop: object, snap: FeatureSnapshot) -> None:
    """The vectors come from purchases before the cut-off: a later purchase changes nothing."""

    late = shop.purchases.iloc[:50].assign(  # type: ignore[attr-defined]
        **{s.TS: snap.as_of_timestamp + pd.Timedelta(hours=1), s.ORDER_ID: "LATE"}
    )
    leaky = dataclasses.replace(
        shop,  # type: ignore[type-var]
        purchases=pd.concat([shop.purchases, late], ignore_index=True),  # type: ignore[attr-defined]
    )
    again = build_snapshot(leaky, as_of=snap.as_of_timestamp, config=snap.config)
    np.testing.assert_array_equal(again.latent.item, snap.latent.item)
    np.testing.assert_array_equal(again.latent.customer, snap.latent.customer)
    np.testing.assert_array_equal(again.latent.pool, snap.latent.pool)
