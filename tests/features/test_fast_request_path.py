"""The request-path shortcuts keep every value: the merge's priority reused as the feature,
the one-block top-``n`` cut, the batch's distinct context."""

from __future__ import annotations

import numpy as np
import pytest
from feature_shop import single_batch

from features import arrays
from features.arrays import _padded_blocks, rank_within, top_within
from features.batch import batch_from_frame
from features.candidates import collect_candidates, merge_priority
from features.queries import LabelledQueries
from features.snapshot import FeatureSnapshot
from features.tasks import task_names


@pytest.mark.parametrize("task", task_names())
def test_merge_priority_kept_by_the_merge_equals_recomputing_it(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries], task: str
) -> None:
    """The feature reads the merge's priorities of the kept rows: bit-identical to computing
    them again from the kept rows' ranks, for a batch and for one query."""
    queries = window_queries[task].queries
    weights = snap.config.merge_weights
    batches = [batch_from_frame(queries, snap, task=task)]
    batches += [single_batch(snap, queries.iloc[i], task) for i in range(0, len(queries), 7)]
    for batch in batches:
        cands = collect_candidates(batch, snap)
        assert cands.priority is not None
        again = merge_priority(cands.ranks, cands.sources, weights)
        np.testing.assert_array_equal(cands.merge_priority(weights), again)
        for q in np.unique(cands.query)[:5]:  # rows of one query alone: the same values
            rows = cands.query == q
            np.testing.assert_array_equal(
                cands.priority[rows], merge_priority(cands.ranks[rows], cands.sources, weights)
            )


@pytest.mark.parametrize("cells", [8, 40, 1 << 22])
def test_padded_blocks_cover_every_group_once(cells: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Contiguous blocks over all groups, each as wide as its widest group (at least ``n``),
    within the cell budget unless one group alone exceeds it; one block when all fit."""
    monkeypatch.setattr(arrays, "TOP_BLOCK_CELLS", cells)
    rng = np.random.default_rng(cells)
    for _ in range(50):
        sizes = rng.integers(1, 30, size=int(rng.integers(1, 20)))
        n = int(rng.integers(1, 10))
        blocks = _padded_blocks(sizes, n)
        assert [lo for lo, _, _ in blocks] == [0, *[hi for _, hi, _ in blocks[:-1]]]
        assert blocks[-1][1] == len(sizes)
        for lo, hi, width in blocks:
            assert width == max(int(sizes[lo:hi].max()), n)
            assert hi - lo == 1 or (hi - lo) * int(sizes[lo:hi].max()) <= cells
        if len(sizes) * int(sizes.max()) <= cells:
            assert len(blocks) == 1


def test_top_within_of_a_request_merge_is_one_block() -> None:
    """Twelve sources of a few hundred candidates each: one block, the same cut as ranking."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(20, 400, size=12)
    groups = np.repeat(np.arange(12), sizes)
    values = np.round(rng.random(len(groups)), 2)  # many ties
    values[rng.random(len(values)) < 0.05] = np.nan
    assert len(_padded_blocks(np.asarray(sizes), 50)) == 1
    index, ranks = top_within(groups, values, 50)
    full = rank_within(groups, values)
    np.testing.assert_array_equal(index, np.flatnonzero(full <= 50))
    np.testing.assert_array_equal(ranks, full[index])


def test_distinct_context_is_np_unique(
    snap: FeatureSnapshot, window_queries: dict[str, LabelledQueries]
) -> None:
    queries = window_queries["cross_sell"].queries
    for i in range(0, len(queries), 11):
        batch = single_batch(snap, queries.iloc[i], "cross_sell")
        np.testing.assert_array_equal(batch.distinct_context, np.unique(batch.context))
