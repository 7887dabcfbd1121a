"""The array helpers against plain references: the fast paths of the one-query case (a single
group, a single row, tiny member sets) must give exactly what the general code gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features import arrays
from features.arrays import (
    PairLookup,
    gather_rows,
    is_in,
    is_member,
    lookup_many,
    rank_within,
    rank_within_many,
    runs_as_lists,
    share_keys,
    top_within,
    unique_inverse,
    within_reach,
)

VALUES = np.asarray([0.0, -0.0, 1.0, 2.5, np.nan, np.inf, -np.inf, 1.0])


def reference_ranks(groups: np.ndarray, values: np.ndarray, descending: bool) -> np.ndarray:
    """Rank by value inside each group, NaN last, ties by position (plain Python)."""
    out = np.zeros(len(values), dtype=np.int32)
    fill = -np.inf if descending else np.inf
    for g in set(groups.tolist()):
        members = [i for i in range(len(values)) if groups[i] == g]

        def key(i: int) -> tuple[float, int]:
            v = fill if np.isnan(values[i]) else float(values[i])
            return (-v if descending else v, i)

        for rank, i in enumerate(sorted(members, key=key), start=1):
            out[i] = rank
    return out


@pytest.mark.parametrize("n_groups", [1, 3])
@pytest.mark.parametrize("descending", [True, False])
def test_rank_within_matches_the_reference(n_groups: int, descending: bool) -> None:
    rng = np.random.default_rng(n_groups)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        groups = rng.integers(0, n_groups, n)
        values = rng.choice(VALUES, n)
        got = rank_within(groups, values, descending=descending)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, reference_ranks(groups, values, descending))


@pytest.mark.parametrize("n_groups", [1, 2])
def test_rank_within_many_is_rank_within_per_column(n_groups: int) -> None:
    rng = np.random.default_rng(7)
    for _ in range(100):
        n = int(rng.integers(0, 25))
        groups = rng.integers(0, n_groups, n)
        columns = [rng.choice(VALUES, n) for _ in range(4)]
        got = rank_within_many(groups, columns)
        assert got.shape == (4, n)
        for row, column in zip(got, columns, strict=True):
            np.testing.assert_array_equal(row, rank_within(groups, column))


@pytest.mark.parametrize("block_cells", [1, 7, 1 << 22])
def test_top_within_is_rank_within_cut_at_n(
    block_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same elements and ranks as ranking everything, with ties (many equal values), NaN
    and infinities, groups in any order, and padded blocks of any size."""
    monkeypatch.setattr(arrays, "TOP_BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(block_cells)
    for _ in range(200):
        size = int(rng.integers(0, 120))
        groups = rng.integers(0, int(rng.integers(1, 8)), size) * 3
        values = rng.choice([*VALUES, 3.0, 3.0, 4.0], size)
        n = int(rng.integers(0, 12))
        index, ranks = top_within(groups, values, n)
        full = rank_within(groups, values)
        np.testing.assert_array_equal(index, np.flatnonzero(full <= n))
        np.testing.assert_array_equal(ranks, full[index])


def test_within_reach_keeps_every_tie_of_the_top_n() -> None:
    """Every element at or above its group's n-th largest value (NaN lowest), positions in
    order, and the groups that lost elements: checked against sorting, groups in any order."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        size = int(rng.integers(0, 80))
        groups = rng.integers(0, int(rng.integers(1, 6)), size) * 2
        if rng.random() < 0.5:
            groups = np.sort(groups)
        values = rng.choice([*VALUES, 3.0, 3.0, 4.0], size)
        n = int(rng.integers(1, 10))
        index, cut = within_reach(groups, values, n)
        key = np.where(np.isnan(values), -np.inf, values)
        want, lost = [], set()
        for i in range(size):
            members = np.sort(key[groups == groups[i]])[::-1]
            if len(members) <= n or key[i] >= members[n - 1]:
                want.append(i)
            else:
                lost.add(int(groups[i]))
        np.testing.assert_array_equal(index, want)
        assert sorted(cut.tolist()) == sorted(lost)


def test_unique_inverse_is_numpys() -> None:
    rng = np.random.default_rng(1)
    for n in (0, 1, 5, 300):
        keys = rng.integers(0, 40, n)
        want_u, want_inv = np.unique(keys, return_inverse=True)
        got_u, got_inv = unique_inverse(keys)
        np.testing.assert_array_equal(got_u, want_u)
        np.testing.assert_array_equal(got_inv, want_inv)


def test_is_member_is_isin_for_small_and_large_sets() -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 100, 200)
    for size in (0, 1, 6, 40):
        members = rng.integers(0, 100, size)
        np.testing.assert_array_equal(is_member(values, members), np.isin(values, members))


def _tables(seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    m = sp.random(12, 9, density=0.3, random_state=seed, format="csr")
    m.data[::4] = 0.0  # stored zeros are values too
    return m, m * 2.0


def test_lookup_many_matches_dense_look_ups_one_row_or_many() -> None:
    rng = np.random.default_rng(3)
    for seed in range(30):
        a, b = _tables(seed)
        ta, tb = PairLookup(a), PairLookup(b)
        share_keys([ta, tb])
        assert ta.keys is tb.keys  # the same stored pairs: one key array
        dense_a, dense_b = a.toarray(), b.toarray()
        n = int(rng.integers(1, 20))
        one_row = np.full(n, int(rng.integers(-1, 12)))
        for rows in (one_row, rng.integers(-1, 12, n)):
            cols = rng.integers(-1, 9, n)
            got_a, got_b = lookup_many((ta, tb), rows, cols)
            ok = (rows >= 0) & (cols >= 0)
            want_a = np.where(ok, dense_a[np.maximum(rows, 0), np.maximum(cols, 0)], 0.0)
            want_b = np.where(ok, dense_b[np.maximum(rows, 0), np.maximum(cols, 0)], 0.0)
            np.testing.assert_array_equal(got_a, want_a)
            np.testing.assert_array_equal(got_b, want_b)
            np.testing.assert_array_equal(ta.get(rows, cols), want_a)


def test_lookup_many_refuses_tables_of_different_widths() -> None:
    wide, narrow = PairLookup(sp.eye(4, 5, format="csr")), PairLookup(sp.eye(4, 3, format="csr"))
    with pytest.raises(ValueError, match="numbers of columns"):
        lookup_many((wide, narrow), np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64))


def test_gather_rows_one_row_is_the_general_case() -> None:
    m, _ = _tables(5)
    for r in range(m.shape[0]):
        one = gather_rows(m, np.asarray([r]), np.asarray([7]))
        many = gather_rows(m, np.asarray([r, r]), np.asarray([7, 8]))
        k = len(one[0])
        for got, want in zip(one, many, strict=True):
            np.testing.assert_array_equal(got, want[:k])
            assert got.dtype == want.dtype


def test_is_in_matches_pandas_isin_on_arrow_strings() -> None:
    values = pd.Series(["a", "b", "zz", "c", "a", ""], dtype="str")
    universe = pd.Series(["c", "a", "q"], dtype="str")
    assert is_in(values, universe).tolist() == values.isin(universe).tolist()
    assert is_in(values, universe[:0]).tolist() == [False] * len(values)


def test_runs_as_lists_matches_groupby_agg_list() -> None:
    frame = pd.DataFrame(
        {"o": ["o2", "o2", "o1", "o3", "o3", "o3"], "p": ["b", "a", "c", "a", "d", "b"]}
    ).astype("str")
    expected = frame.groupby("o", sort=False)["p"].agg(list)
    got = runs_as_lists(frame, "o", "p")
    assert got.index.tolist() == expected.index.tolist()
    assert got.tolist() == expected.tolist()
    assert runs_as_lists(frame.iloc[:0], "o", "p").tolist() == []
